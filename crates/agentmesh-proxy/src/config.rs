//! `proxy.toml`: the sidecar's first config format, only ever extended (no key renamed, so
//! old files keep working). Unknown keys are refused, so a misspelt key cannot silently leave a listener unprotected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentmesh_sdk::LocalAddr;
use serde::{Deserialize, Serialize};

/// Why a proxy config is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed, has an unknown key or a wrongly typed value.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A value is out of range or inconsistent.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    /// No Workload API socket in the file or the environment.
    #[error(
        "{0}: no Workload API socket: set workload_api = \"unix:///path\" or $SPIFFE_ENDPOINT_SOCKET"
    )]
    NoWorkloadApi(PathBuf),
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

/// What the inbound listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw TCP under L4 intentions (Consul's default too).
    #[default]
    Tcp,
    /// HTTP/1.1 or HTTP/2 (by ALPN), with L7 intentions per request.
    Http,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The service this proxy fronts; a name (`executor`, `team/executor`) or a SPIFFE ID.
    pub service: String,
    /// `unix:///path` of the Workload API; default `$SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub workload_api: Option<String>,
    /// `unix:///path` of the agentmesh node that relays intentions and the service catalog
    /// (its proxy API); default: the `workload_api` socket, which an agentmesh node serves
    /// both on. Set it when identities come from another Workload API, such as a SPIRE
    /// agent's, and an agentmesh node runs beside it with `--no-workload-api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_api: Option<String>,
    /// The public mTLS listener and the app behind it; a client-only proxy has none.
    #[serde(default)]
    pub inbound: Option<Inbound>,
    /// Plain local listeners for the app, each to one destination service.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// `/metrics` and `/healthz`.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// `[limits]`: timeouts, head sizes and connection counts, applied to each listener
    /// (inbound, every upstream, admin) separately.
    #[serde(
        default,
        skip_serializing_if = "agentmesh_proto::limits::ListenerLimits::is_default"
    )]
    pub limits: agentmesh_proto::limits::ListenerLimits,
}

/// `[inbound]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// The public mTLS listener.
    pub listen: SocketAddr,
    /// The local app: `unix:///path` (only this uid may connect; the app should check its
    /// peers too) or `host:port` (any local user can reach the app past the proxy).
    pub app: String,
    /// `http` or `tcp` (default).
    #[serde(default)]
    pub protocol: Protocol,
    /// The address other proxies should dial, registered in the service catalog; default
    /// the bound listener address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// HTTP only: what to do with a request header whose name has an underscore:
    /// `reject_request` (default, 400), `drop_header` or `allow` (Envoy's
    /// `headers_with_underscores_action`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub headers_with_underscores_action: agentmesh_policy::HeadersWithUnderscoresAction,
    /// HTTP only: what to do with `%2F`, `%5C` or `\` in a path: `reject_request` (default,
    /// 400), `unescape_and_forward` or `keep_unchanged` (Envoy's
    /// `path_with_escaped_slashes_action`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub path_with_escaped_slashes_action: agentmesh_policy::EscapedSlashesAction,
    /// HTTP only: the largest MCP message (POST body) read on a pair whose intention has MCP
    /// permissions; a larger one is refused with 413 and nothing reaches the app. Default
    /// 4 MiB (`DEFAULT_MCP_MAX_BODY_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_max_body_bytes: Option<usize>,
    /// HTTP only: the largest A2A request (POST body) read on a pair whose intention has A2A
    /// permissions; a larger one is refused with 413 and nothing reaches the app. Default
    /// 4 MiB (`DEFAULT_A2A_MAX_BODY_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a_max_body_bytes: Option<usize>,
    /// HTTP only: the frontend (service name or SPIFFE ID) whose user tokens this sidecar
    /// verifies on MCP routes, for permissions with `user` claims. Without it no user token
    /// is verified, and such permissions refuse every call they name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_token_issuer: Option<String>,
    /// The `aud` those user tokens must name; default the sidecar's trust domain (the
    /// frontend's default too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_token_audience: Option<String>,
}

/// 4 MiB: gRPC's default largest message, far above any tool call's arguments, and small
/// enough that holding one per open stream stays bounded by the stream limits.
pub const DEFAULT_MCP_MAX_BODY_BYTES: usize = agentmesh_sdk::mcp::DEFAULT_MAX_BODY_BYTES;

/// 4 MiB, as for MCP: far above any message's text parts.
pub const DEFAULT_A2A_MAX_BODY_BYTES: usize = agentmesh_sdk::a2a::DEFAULT_MAX_BODY_BYTES;

impl Inbound {
    /// The largest A2A request this listener reads.
    pub fn a2a_max_body(&self) -> usize {
        self.a2a_max_body_bytes
            .unwrap_or(DEFAULT_A2A_MAX_BODY_BYTES)
    }

    /// The largest MCP message this listener reads.
    pub fn mcp_max_body(&self) -> usize {
        self.mcp_max_body_bytes
            .unwrap_or(DEFAULT_MCP_MAX_BODY_BYTES)
    }

    /// How this listener normalises HTTP requests before deciding and forwarding them.
    pub fn normalize_options(&self) -> agentmesh_policy::NormalizeOptions {
        agentmesh_policy::NormalizeOptions {
            escaped_slashes: self.path_with_escaped_slashes_action,
            headers_with_underscores: self.headers_with_underscores_action,
        }
    }
}

/// `[[upstream]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// A service name or SPIFFE ID; the server's certificate must carry exactly this ID.
    pub destination: String,
    /// The plain local listener the app calls: `unix:///path` (created 0600; a peer of
    /// another uid is refused) or a loopback `ip:port` (open to every local user).
    pub listen: LocalAddr,
    /// The destination proxy's address; default from the service catalog.
    #[serde(default)]
    pub address: Option<String>,
    /// `http` (pooled, multiplexed HTTP/2 to the destination) or `tcp` (default; one mTLS
    /// connection per local connection).
    #[serde(default)]
    pub protocol: Protocol,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where `/metrics`, `/healthz` and `/decisions` are served: `unix:///path` (this uid
    /// only) or a loopback `ip:port`.
    pub listen: LocalAddr,
}

impl Inbound {
    /// The app's address (checked by [`ProxyConfig::parse`]).
    ///
    /// # Errors
    /// A config built without `parse` whose `app` does not parse.
    pub fn app_addr(&self) -> Result<LocalAddr, ConfigError> {
        self.app.parse().map_err(|e| {
            ConfigError::Invalid(PathBuf::from("proxy config"), format!("inbound.app: {e}"))
        })
    }
}

impl ProxyConfig {
    /// Parses and checks a config text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys, or inconsistent values.
    pub fn parse(origin: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = agentmesh_proto::config::parse_toml(text, origin)?;
        let invalid = |m: String| ConfigError::Invalid(origin.to_owned(), m);
        agentmesh_spiffe::SpiffeId::from_service_name(
            &agentmesh_spiffe::TrustDomain::new("placeholder.local")
                .unwrap_or_else(|_| unreachable!("valid constant")),
            &cfg.service,
        )
        .map_err(|e| invalid(format!("service {:?}: {e}", cfg.service)))?;
        cfg.limits.check().map_err(|e| invalid(e.to_string()))?;
        if cfg.inbound.is_none() && cfg.upstream.is_empty() {
            return Err(invalid(
                "nothing to do: add an [inbound] section or at least one [[upstream]]".into(),
            ));
        }
        let mut listens: Vec<LocalAddr> = cfg.upstream.iter().map(|u| u.listen.clone()).collect();
        if let Some(i) = &cfg.inbound {
            if let Some(issuer) = &i.user_token_issuer {
                agentmesh_spiffe::SpiffeId::from_service_name(
                    &agentmesh_spiffe::TrustDomain::new("placeholder.local")
                        .unwrap_or_else(|_| unreachable!("valid constant")),
                    issuer,
                )
                .map_err(|e| invalid(format!("inbound.user_token_issuer {issuer:?}: {e}")))?;
            }
            if i.mcp_max_body_bytes == Some(0) {
                return Err(invalid(
                    "inbound.mcp_max_body_bytes must be at least 1".into(),
                ));
            }
            if i.a2a_max_body_bytes == Some(0) {
                return Err(invalid(
                    "inbound.a2a_max_body_bytes must be at least 1".into(),
                ));
            }
            if i.app.parse::<LocalAddr>().is_err() {
                return Err(invalid(format!(
                    "inbound.app {:?} is not host:port or unix:///path",
                    i.app
                )));
            }
            listens.push(i.listen.into());
        }
        if let Some(a) = &cfg.admin {
            if !a.listen.is_host_local() {
                return Err(invalid(format!(
                    "admin listen {} is not a loopback address or a unix socket",
                    a.listen
                )));
            }
            listens.push(a.listen.clone());
        }
        for (n, l) in listens.iter().enumerate() {
            let port_zero = l.tcp_socket_addr().is_some_and(|s| s.port() == 0);
            if !port_zero && listens[..n].contains(l) {
                return Err(invalid(format!("listen address {l} is used twice")));
            }
        }
        for u in &cfg.upstream {
            agentmesh_spiffe::SpiffeId::from_service_name(
                &agentmesh_spiffe::TrustDomain::new("placeholder.local")
                    .unwrap_or_else(|_| unreachable!("valid constant")),
                &u.destination,
            )
            .map_err(|e| invalid(format!("upstream destination {:?}: {e}", u.destination)))?;
            // The upstream listener is plaintext for the local app only.
            if !u.listen.is_host_local() {
                return Err(invalid(format!(
                    "upstream listen {} is not a loopback address; the plain side must stay local",
                    u.listen
                )));
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// As [`ProxyConfig::parse`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = agentmesh_proto::config::read(path)?;
        Self::parse(path, &text)
    }

    /// The Workload API socket path, from the file or `env` (the value of
    /// `$SPIFFE_ENDPOINT_SOCKET`).
    ///
    /// # Errors
    /// Neither is set, or the address is not a unix path.
    pub fn workload_socket(
        &self,
        origin: &Path,
        env: Option<&str>,
    ) -> Result<PathBuf, ConfigError> {
        let raw = self
            .workload_api
            .as_deref()
            .or(env)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ConfigError::NoWorkloadApi(origin.to_owned()))?;
        unix_path(origin, "workload_api", raw)
    }

    /// The policy relay's socket path: `policy_api`, else `workload` (the Workload API
    /// socket, where an agentmesh node serves both).
    ///
    /// # Errors
    /// `policy_api` is not a unix path.
    pub fn policy_socket(&self, origin: &Path, workload: &Path) -> Result<PathBuf, ConfigError> {
        match self.policy_api.as_deref() {
            Some(raw) => unix_path(origin, "policy_api", raw),
            None => Ok(workload.to_owned()),
        }
    }
}

/// The path of `raw`, a `unix:///absolute/path` (or a bare absolute path) that `key` names.
fn unix_path(origin: &Path, key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
    let v = raw.trim();
    let path = v
        .strip_prefix("unix://")
        .or_else(|| v.strip_prefix("unix:"))
        .unwrap_or(v);
    if path.is_empty() || !path.starts_with('/') || v.contains("://") && !v.starts_with("unix:///")
    {
        return Err(ConfigError::Invalid(
            origin.to_owned(),
            format!("{key} {raw:?} is not unix:///absolute/path"),
        ));
    }
    Ok(PathBuf::from(path))
}

/// Whether `v` is its type's default, so a written config leaves the key to the component's
/// own default instead of pinning today's.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::parse(Path::new("proxy.toml"), text)
    }

    #[test]
    fn the_design_example_parses() {
        let cfg = parse(
            r#"
service = "executor"
workload_api = "unix:///tmp/agentmesh/node.sock"
[inbound]
listen = "127.0.0.1:21001"
app = "127.0.0.1:8081"
protocol = "http"
[[upstream]]
destination = "gateway"
listen = "127.0.0.1:9002"
# address = "127.0.0.1:21003"
[admin]
listen = "127.0.0.1:19001"
"#,
        )
        .unwrap();
        assert_eq!(cfg.inbound.as_ref().unwrap().protocol, Protocol::Http);
        assert_eq!(cfg.upstream[0].protocol, Protocol::Tcp);
        // Normalisation defaults to refusing both suspicious spellings.
        assert_eq!(
            cfg.inbound.as_ref().unwrap().normalize_options(),
            agentmesh_policy::NormalizeOptions::default()
        );
        assert_eq!(
            cfg.workload_socket(Path::new("p"), None).unwrap(),
            PathBuf::from("/tmp/agentmesh/node.sock")
        );
    }

    #[test]
    fn normalisation_settings_take_envoys_values() {
        use agentmesh_policy::{EscapedSlashesAction as E, HeadersWithUnderscoresAction as H};
        let base = "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\nprotocol = \"http\"\n";
        let cases = [
            ("allow", "keep_unchanged", H::Allow, E::KeepUnchanged),
            (
                "reject_request",
                "reject_request",
                H::RejectRequest,
                E::RejectRequest,
            ),
            (
                "drop_header",
                "unescape_and_forward",
                H::DropHeader,
                E::UnescapeAndForward,
            ),
        ];
        for (h, e, want_h, want_e) in cases {
            let cfg = parse(&format!(
                "{base}headers_with_underscores_action = \"{h}\"\npath_with_escaped_slashes_action = \"{e}\"\n"
            ))
            .unwrap();
            let opts = cfg.inbound.unwrap().normalize_options();
            assert_eq!(
                (opts.headers_with_underscores, opts.escaped_slashes),
                (want_h, want_e)
            );
        }
        for (text, want) in [
            (
                "path_with_escaped_slashes_action = \"unescape_and_redirect\"",
                "unknown variant `unescape_and_redirect`",
            ),
            (
                "headers_with_underscores_action = \"ALLOW\"",
                "unknown variant `ALLOW`",
            ),
            ("normalize_path = false", "unknown field `normalize_path`"),
        ] {
            let err = parse(&format!("{base}{text}\n")).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn malformed_configs_are_one_line_errors_naming_the_problem() {
        let cases = [
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\nprotcol = \"http\"",
                "unknown field `protcol`",
            ),
            ("service = \"a\"", "nothing to do"),
            (
                "service = \"a b\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"",
                "service",
            ),
            (
                "service = \"a\"\n[[upstream]]\ndestination = \"b/c/d\"\nlisten = \"127.0.0.1:1\"",
                "destination",
            ),
            (
                "service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"0.0.0.0:1\"",
                "loopback",
            ),
            (
                "service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"nope\"",
                "listen",
            ),
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"nope\"",
                "inbound.app",
            ),
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\nprotocol = \"udp\"",
                "unknown variant `udp`",
            ),
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\nmcp_max_body_bytes = 0",
                "mcp_max_body_bytes",
            ),
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\nuser_token_issuer = \"a b\"",
                "user_token_issuer",
            ),
            (
                "service = \"a\"\n[inbound]\nlisten = \"127.0.0.1:1\"\napp = \"127.0.0.1:2\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"",
                "used twice",
            ),
            ("service = ", "proxy.toml"),
            (
                "service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"\n[limits]\nmax_headers = 0",
                "limits.max_headers",
            ),
            (
                "service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"\n[limits]\nheader_timeot = \"1s\"",
                "unknown field `header_timeot`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let cfg = parse("service = \"a\"\nworkload_api = \"tcp://x\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"").unwrap();
        assert!(
            cfg.workload_socket(Path::new("p"), None)
                .unwrap_err()
                .to_string()
                .contains("unix:///")
        );
        // The policy relay's socket: its own key when identities come from elsewhere.
        let cfg = parse("service = \"a\"\npolicy_api = \"http://node\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"").unwrap();
        let err = cfg
            .policy_socket(Path::new("p"), Path::new("/w.sock"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy_api \"http://node\" is not unix:///"),
            "{err}"
        );
        let cfg = parse("service = \"a\"\npolicy_api = \"unix:///run/node.sock\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"").unwrap();
        assert_eq!(
            cfg.policy_socket(Path::new("p"), Path::new("/w.sock"))
                .unwrap(),
            Path::new("/run/node.sock")
        );
        let cfg =
            parse("service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"")
                .unwrap();
        assert_eq!(
            cfg.policy_socket(Path::new("p"), Path::new("/w.sock"))
                .unwrap(),
            Path::new("/w.sock"),
            "an agentmesh node serves both on one socket"
        );
        assert!(matches!(
            cfg.workload_socket(Path::new("p"), None),
            Err(ConfigError::NoWorkloadApi(_))
        ));
        assert_eq!(
            cfg.workload_socket(Path::new("p"), Some("unix:///x.sock"))
                .unwrap(),
            PathBuf::from("/x.sock")
        );
    }
}
