//! `agent.toml`: which role, where the agent listens, and the local proxy ports it calls.
//! Unknown keys are refused so a misspelt upstream cannot silently be missing.
//!
//! ```toml
//! role = "executor"
//! listen = "127.0.0.1:8081"          # plain HTTP, reached only through the inbound proxy
//! model = "agentmesh-default"        # the model asked of the gateway
//!
//! [[upstream]]
//! name = "gateway"                   # the service
//! role = "gateway"                   # what it is to this agent (see Role::needs)
//! url = "http://127.0.0.1:9002"      # the local proxy's outbound port for it
//!
//! [search]                           # researchers only
//! kind = "offline"                   # offline | tavily
//! api_key_env = "TAVILY_API_KEY"
//! ```
//!
//! With `[mtls]` the agent has no sidecar (as in research-team): it takes its SVID from the node, serves
//! `listen` over mTLS itself, admits each request only if an intention allows it, and calls
//! each upstream over mTLS, pinning the upstream's SPIFFE ID:
//!
//! ```toml
//! role = "writer"
//! listen = "127.0.0.1:7001"          # the mTLS listener callers reach
//!
//! [mtls]
//! workload_api = "unix:///run/agentmesh/workload.sock"
//! admin = "127.0.0.1:7002"           # plain, loopback: /healthz, /decisions, /probe/NAME/PATH
//!
//! [[upstream]]
//! name = "gateway"
//! role = "gateway"
//! url = "https://127.0.0.1:9443"     # the upstream's mTLS listener (its sidecar's or its own)
//! spiffe_id = "spiffe://agentmesh.local/gateway"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentmesh_sdk::LocalAddr;
use serde::{Deserialize, Serialize};

use crate::role::Role;

/// Why an agent config is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Malformed TOML, an unknown key or a wrongly typed value.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A value is out of range or inconsistent.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

impl From<agentmesh_proto::config::LoadError> for ConfigError {
    fn from(e: agentmesh_proto::config::LoadError) -> Self {
        match e {
            agentmesh_proto::config::LoadError::Read { path, source } => Self::Read(path, source),
            agentmesh_proto::config::LoadError::Parse { path, message } => {
                Self::Parse(path, message)
            }
            // LoadError is non_exhaustive; a new kind still names its file.
            other => Self::Parse(PathBuf::new(), other.to_string()),
        }
    }
}

/// Where a researcher searches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchKind {
    /// The corpus embedded in the binary (the project's own docs); no network.
    #[default]
    Offline,
    /// Tavily's search API, with a key from the environment.
    Tavily,
}

/// `[search]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Which search tool.
    #[serde(default)]
    pub kind: SearchKind,
    /// The environment variable holding the Tavily key (default `TAVILY_API_KEY`).
    pub api_key_env: Option<String>,
    /// Tavily's base URL (default `https://api.tavily.com`).
    pub url: Option<String>,
}

/// One `[[upstream]]`: a service this agent calls through its local proxy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The service's name (for messages and the `agents` list).
    pub name: String,
    /// What the service is to this agent: an agent role, or `gateway`.
    pub role: String,
    /// The local proxy's outbound listener for it, as `unix:///path` (only this uid may use
    /// it) or `http://127.0.0.1:PORT`; with `[mtls]`, the upstream's own mTLS listener as
    /// `https://IP:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// With `[mtls]`: the SPIFFE ID the upstream must present (the call is refused
    /// otherwise). Behind a sidecar (which pins the upstream itself) it is optional and only
    /// names the next hop in this agent's delegation links; the default is the service-name
    /// convention, `spiffe://<own trust domain>/ns/default/sa/<name>`.
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

impl UpstreamConfig {
    /// The sidecar's Unix socket, when `url` is `unix:///path`.
    pub fn unix_socket(&self) -> Option<LocalAddr> {
        if !self.url.starts_with("unix:") {
            return None;
        }
        self.url.parse().ok().filter(LocalAddr::is_unix)
    }

    /// The base URL requests are built on: `http://localhost` for a Unix socket (the
    /// connector dials the socket), the configured URL otherwise.
    pub fn base_url(&self) -> &str {
        if self.unix_socket().is_some() {
            "http://localhost"
        } else {
            self.url.trim_end_matches('/')
        }
    }

    /// `url` must be `SCHEME://IP:PORT`, or with `names` also `SCHEME://HOST:PORT` (a DNS
    /// name, as Compose and Kubernetes name services); `why` completes the message when the
    /// scheme is wrong.
    fn check_url(&self, scheme: &str, why: &str, names: bool) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| {
                format!(
                    "upstream {:?}: url {:?} must be {scheme}://{why}",
                    self.name, self.url
                )
            })?;
        let authority = rest.trim_end_matches('/');
        if authority.parse::<SocketAddr>().is_ok() || (names && is_host_port(authority)) {
            return Ok(());
        }
        let or_names = if names {
            format!(" or {scheme}://HOST:PORT")
        } else {
            String::new()
        };
        Err(format!(
            "upstream {:?}: url {:?} is not {scheme}://IP:PORT{or_names}",
            self.name, self.url
        ))
    }
}

/// `name:port` with a DNS name (letters, digits, `-` and `.`, no empty label) and a port
/// other than 0.
fn is_host_port(authority: &str) -> bool {
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// `[mtls]`: the agent does mTLS and intentions in-process, with no sidecar.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// The node's Workload API, `unix:///path`.
    pub workload_api: String,
    /// A plain listener for operators and `agentmesh up`: `/healthz`, `/decisions` (the
    /// live feed a sidecar's admin serves) and `/probe/NAME/PATH` (POST the body to upstream
    /// NAME over mTLS with this agent's identity, answer what it answered). `/probe` lends
    /// the agent's identity, so it is served only on a `unix:///path` socket (this uid
    /// only); on a loopback `ip:port` the admin has no `/probe`.
    #[serde(default)]
    pub admin: Option<LocalAddr>,
    /// The address registered in the service catalog; default `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
}

impl MtlsConfig {
    /// The socket path of `workload_api`.
    pub fn socket(&self) -> Option<&Path> {
        self.workload_api
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .map(Path::new)
    }
}

/// `[a2a]`: the A2A agent card. The card is signed with the agent's SVID, taken from
/// `[mtls]` or `[delegation]` when the agent has one, else from `workload_api` here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct A2aConfig {
    /// The Workload API (`unix:///path`) to take the signing SVID from, for an agent with
    /// neither `[mtls]` nor `[delegation]`.
    #[serde(default)]
    pub workload_api: Option<String>,
    /// The JSON-RPC URL the card advertises; default `http://<the Host the card was asked
    /// for>/a2a`, which is the caller's own sidecar listener when it asks through one.
    #[serde(default)]
    pub url: Option<String>,
}

/// The whole agent.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Which built-in agent.
    pub role: Role,
    /// This service's name (default: the role).
    pub name: Option<String>,
    /// The plain HTTP listener, reached only through the inbound proxy: `unix:///path`
    /// (peers of another uid are refused, and `x-forwarded-client-cert` is trusted because
    /// only the sidecar's uid gets in) or a loopback `ip:port` (any local user can connect,
    /// so the header is never trusted and delegation has no verified caller). With
    /// `[mtls]`: the mTLS listener callers reach, `ip:port`.
    pub listen: LocalAddr,
    /// The model asked of the gateway.
    #[serde(default = "default_model")]
    pub model: String,
    /// The services it calls.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The search tool (researchers).
    #[serde(default, skip_serializing_if = "is_default")]
    pub search: SearchConfig,
    /// The delegation chain: verify the user and the hops before answering, and add this
    /// agent's link to every call it makes.
    #[serde(default)]
    pub delegation: Option<agentmesh_sdk::delegation::service::DelegationConfig>,
    /// In-process mTLS and intentions instead of a sidecar.
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
    /// `[a2a]`: where the agent card's signing SVID comes from, and the URL it advertises.
    #[serde(default)]
    pub a2a: Option<A2aConfig>,
    /// `[limits]`: head deadline, body idle timeout, head sizes and connection counts, for
    /// each of the agent's listeners (plain or mTLS, and admin).
    #[serde(
        default,
        skip_serializing_if = "agentmesh_proto::limits::ListenerLimits::is_default"
    )]
    pub limits: agentmesh_proto::limits::ListenerLimits,
}

/// The model name agents ask for unless configured otherwise; `agentmesh up` maps it to the
/// provider chosen with `--llm`.
pub const DEFAULT_MODEL: &str = "agentmesh-default";

/// Whether `v` is its type's default, so a written config leaves the key to the component's
/// own default instead of pinning today's.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_model() -> String {
    DEFAULT_MODEL.into()
}

impl AgentConfig {
    /// Reads and checks an agent.toml.
    ///
    /// # Errors
    /// Unreadable, malformed or inconsistent.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = agentmesh_proto::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and checks agent.toml text; `path` only names the file in errors.
    ///
    /// # Errors
    /// Malformed or inconsistent.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = agentmesh_proto::config::parse_toml(text, path)?;
        cfg.validate()
            .map_err(|e| ConfigError::Invalid(path.to_owned(), e))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.limits.check().map_err(|e| e.to_string())?;
        if let Some(m) = &self.mtls {
            return self.validate_mtls(m);
        }
        if !self.listen.is_host_local() {
            return Err(format!(
                "listen = {} is not a unix:///path or a loopback address; an agent is reached \
                 only through its inbound proxy",
                self.listen
            ));
        }
        for u in &self.upstreams {
            if let Some(id) = &u.spiffe_id {
                id.parse::<agentmesh_sdk::SpiffeId>()
                    .map_err(|e| format!("upstream {:?}: spiffe_id {id:?}: {e}", u.name))?;
            }
            if u.url.starts_with("unix:") {
                u.url
                    .parse::<LocalAddr>()
                    .map_err(|e| format!("upstream {:?}: url {:?}: {e}", u.name, u.url))?;
                continue;
            }
            u.check_url(
                "http",
                "HOST:PORT or unix:///path (the local proxy's plain listener; the proxy does \
                 the TLS)",
                false,
            )?;
        }
        self.validate_common()
    }

    fn validate_mtls(&self, m: &MtlsConfig) -> Result<(), String> {
        if m.socket().is_none() {
            return Err(format!(
                "[mtls] workload_api = {:?} must be unix:///absolute/path",
                m.workload_api
            ));
        }
        if self.listen.tcp_socket_addr().is_none() {
            return Err(format!(
                "listen = {} must be ip:port with [mtls] (the agent's own mTLS listener)",
                self.listen
            ));
        }
        if let Some(admin) = &m.admin
            && !admin.is_host_local()
        {
            return Err(format!(
                "[mtls] admin = {admin} is not a loopback address; it answers anyone who connects"
            ));
        }
        for u in &self.upstreams {
            u.check_url(
                "https",
                "IP:PORT or HOST:PORT (with [mtls] the agent does the TLS itself)",
                true,
            )?;
            let id = u.spiffe_id.as_deref().ok_or_else(|| {
                format!(
                    "upstream {:?}: with [mtls] it needs spiffe_id, the identity it must present",
                    u.name
                )
            })?;
            id.parse::<agentmesh_sdk::SpiffeId>()
                .map_err(|e| format!("upstream {:?}: spiffe_id {id:?}: {e}", u.name))?;
        }
        self.validate_common()
    }

    fn validate_common(&self) -> Result<(), String> {
        if let Some(a) = &self.a2a {
            if let Some(w) = &a.workload_api
                && !w
                    .strip_prefix("unix://")
                    .is_some_and(|p| p.starts_with('/'))
            {
                return Err(format!(
                    "[a2a] workload_api = {w:?} must be unix:///absolute/path"
                ));
            }
            if let Some(u) = &a.url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(format!(
                    "[a2a] url = {u:?} must be an http:// or https:// URL"
                ));
            }
        }
        if self.model.trim().is_empty() {
            return Err("model is empty".into());
        }
        for need in self.role.needs() {
            if !self.upstreams.iter().any(|u| u.role == *need) {
                return Err(format!(
                    "the {} needs an [[upstream]] with role = {need:?}",
                    self.role
                ));
            }
        }
        Ok(())
    }

    /// Whether `x-forwarded-client-cert` names a caller the sidecar verified: only when the
    /// agent listens on a Unix socket, which nobody but the sidecar's uid can reach. On TCP
    /// any local process could have written the header.
    pub fn trusts_forwarded_identity(&self) -> bool {
        self.mtls.is_none() && self.listen.is_unix()
    }

    /// The service name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.role.as_str())
    }

    /// The first upstream playing `role`.
    pub fn upstream(&self, role: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(text, Path::new("agent.toml")).map_err(|e| e.to_string())
    }

    const EXECUTOR: &str = r#"
role = "executor"
listen = "127.0.0.1:8081"
[[upstream]]
name = "gateway"
role = "gateway"
url = "http://127.0.0.1:9002"
"#;

    const MTLS: &str = r#"
role = "executor"
listen = "0.0.0.0:8443"
[[upstream]]
name = "gateway"
role = "gateway"
url = "https://127.0.0.1:9443"
spiffe_id = "spiffe://td/gateway"
[mtls]
workload_api = "unix:///run/w.sock"
"#;

    #[test]
    fn an_mtls_agent_may_listen_anywhere_and_pins_its_upstreams() {
        let c = parse(MTLS).unwrap();
        let m = c.mtls.as_ref().unwrap();
        assert_eq!(m.socket(), Some(Path::new("/run/w.sock")));
        assert_eq!(
            c.upstream("gateway").unwrap().spiffe_id.as_deref(),
            Some("spiffe://td/gateway")
        );
        // Compose and Kubernetes name their services: the pinned ID, not the name, is checked.
        let named = parse(&MTLS.replace("127.0.0.1:9443", "gateway.agents:8443")).unwrap();
        assert_eq!(
            named.upstream("gateway").unwrap().url,
            "https://gateway.agents:8443"
        );
        for bad in [
            "gate way:8443",
            "gateway:0",
            "gateway",
            "gateway..x:8443",
            ":8443",
        ] {
            let e = parse(&MTLS.replace("127.0.0.1:9443", bad)).unwrap_err();
            assert!(
                e.contains("is not https://IP:PORT or https://HOST:PORT"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(EXECUTOR).unwrap();
        assert_eq!(c.role, Role::Executor);
        assert_eq!(c.name(), "executor");
        assert_eq!(c.model, DEFAULT_MODEL);
        assert_eq!(c.upstream("gateway").unwrap().url, "http://127.0.0.1:9002");
        assert_eq!(c.search.kind, SearchKind::Offline);
    }

    #[test]
    fn bad_configs_get_one_clear_error() {
        let cases = [
            (
                "role = \"boss\"\nlisten = \"127.0.0.1:1\"",
                "unknown role \"boss\"",
            ),
            (
                "role = \"planner\"\nlisten = \"127.0.0.1:1\"",
                "the planner needs an [[upstream]] with role = \"executor\"",
            ),
            (
                &EXECUTOR.replace("127.0.0.1:8081", "0.0.0.0:8081"),
                "is not a unix:///path or a loopback address",
            ),
            (
                &EXECUTOR.replace("http://127.0.0.1:9002", "unix://relative/gw.sock"),
                "neither unix:///absolute/path nor host:port",
            ),
            (
                &EXECUTOR.replace("http://127.0.0.1:9002", "https://127.0.0.1:9002"),
                "must be http://HOST:PORT",
            ),
            (
                &EXECUTOR.replace("http://127.0.0.1:9002", "http://gateway:9002"),
                "is not http://IP:PORT",
            ),
            (&format!("{EXECUTOR}\ncolour = 1"), "unknown field `colour`"),
            (
                &EXECUTOR.replace("url = ", "spiffe_id = \"gateway\"\nurl = "),
                "upstream \"gateway\": spiffe_id \"gateway\"",
            ),
            (
                &format!("{EXECUTOR}\n[mtls]\nworkload_api = \"unix:///s\""),
                "must be https://IP:PORT",
            ),
            (
                &format!(
                    "{}\n[mtls]\nworkload_api = \"unix:///s\"",
                    EXECUTOR.replace("http://", "https://")
                ),
                "it needs spiffe_id",
            ),
            (
                &format!(
                    "{}\n[mtls]\nworkload_api = \"unix:///s\"",
                    EXECUTOR.replace(
                        "url = \"http://",
                        "spiffe_id = \"gateway\"\nurl = \"https://"
                    )
                ),
                "spiffe_id \"gateway\"",
            ),
            (
                &MTLS.replace("unix:///run/w.sock", "/run/w.sock"),
                "must be unix:///absolute/path",
            ),
            (
                &format!("{MTLS}admin = \"0.0.0.0:9\"\n"),
                "[mtls] admin = 0.0.0.0:9 is not a loopback address",
            ),
            ("role = \"executor\"\nlisten = ", "agent.toml"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
