//! `frontend.toml`: where the frontend listens, how it logs people in and where `/ask` goes.
//!
//! ```toml
//! listen = "127.0.0.1:8080"                 # default
//! workload_api = "unix:///tmp/agentmesh/node.sock"   # default: $SPIFFE_ENDPOINT_SOCKET
//! # public_url = "https://mesh.example.com" # default: http://<listen>; the OIDC redirect base
//! # audience = "agentmesh.local"           # user-token aud; default: the SVID's trust domain
//! entry = "planner"                         # which [[upstream]] /ask goes to (default: the first)
//!
//! [oidc]                                    # omit the whole table for the loopback-only dev login
//! issuer = "https://accounts.example.com"   # discovery: <issuer>/.well-known/openid-configuration
//! client_id = "agentmesh"
//! client_secret = "..."                     # optional (public client with PKCE)
//! auth_method = "client_secret_basic"       # or client_secret_post
//! scopes = ["openid", "email", "profile"]   # default
//! admin_claim = "groups"                    # who may open the Security Inspector: users whose
//! admin_values = ["agentmesh-admins"]       #   id_token claim holds one of these (none without)
//!
//! [[upstream]]
//! name = "planner"
//! url = "http://127.0.0.1:9001"              # the entry agent's local port
//!
//! [inspector]                               # omit for no Security Inspector (/inspector 404s)
//! server_admin_socket = "/var/lib/agentmesh/admin.sock"   # entries, intentions, checks
//! node_admin_socket = "/var/lib/agentmesh/node-admin.sock" # node status, the SVIDs it holds
//! [[inspector.proxy]]                       # each sidecar whose decisions are shown live
//! name = "planner"
//! admin = "127.0.0.1:19001"                 # its [admin] listener (loopback only)
//! ```

use agentmesh_sdk::LocalAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a frontend.toml could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read frontend config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed or has unknown keys.
    #[error("invalid frontend config {0}: {1}")]
    Parse(PathBuf, String),
    /// The keys parse but do not make sense together.
    #[error("invalid frontend config {0}: {1}")]
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

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (the OIDC default).
    #[default]
    ClientSecretBasic,
    /// The id and secret in the form body.
    ClientSecretPost,
    /// A public client: only the client id, PKCE protects the code.
    None,
}

/// The `[oidc]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, exactly as its `iss` claim spells it.
    pub issuer: String,
    /// The client id registered at the issuer.
    pub client_id: String,
    /// The client secret, if the client is confidential.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// How to authenticate at the token endpoint.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Scopes asked for; `openid` is always included.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The id_token claim that names who may use the Security Inspector, e.g. `groups` or
    /// `roles` (a claim name with dots is tried as is, then as a path: `realm_access.roles`).
    /// Without it no OIDC user is an administrator.
    #[serde(default)]
    pub admin_claim: Option<String>,
    /// The values of `admin_claim` that make a user an administrator: the claim (a string or
    /// an array of strings) must hold one of them.
    #[serde(default)]
    pub admin_values: Vec<String>,
}

impl OidcConfig {
    /// Whether an id_token with `claims` makes its user an administrator.
    pub fn grants_admin(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        let Some(name) = &self.admin_claim else {
            return false;
        };
        let value = claims.get(name).or_else(|| {
            let mut parts = name.split('.');
            let first = claims.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))
        });
        let holds = |v: &str| self.admin_values.iter().any(|a| a == v);
        match value {
            Some(Value::String(s)) => holds(s),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(holds),
            _ => false,
        }
    }
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

/// One `[[upstream]]`: a named plain-HTTP URL (a local sidecar port).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The name `entry` refers to.
    pub name: String,
    /// `http://host:port`; `/ask` POSTs to `<url>/ask`.
    pub url: String,
}

/// One `[[inspector.proxy]]`: a sidecar's admin listener, whose `/decisions` the inspector
/// follows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFeedConfig {
    /// The service the sidecar fronts.
    pub name: String,
    /// Its admin listener: `unix:///path` (the feed is then readable only by this uid) or a
    /// loopback `ip:port`.
    pub admin: LocalAddr,
}

/// The `[inspector]` table: where the Security Inspector reads the mesh from. Each part is
/// optional; what is not configured is shown as such.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InspectorConfig {
    /// The server's admin socket: entries, intentions, `intention check`.
    #[serde(default)]
    pub server_admin_socket: Option<PathBuf>,
    /// The node's admin socket: its status and the SVIDs it holds.
    #[serde(default)]
    pub node_admin_socket: Option<PathBuf>,
    /// Sidecars whose decisions stream into Live decisions and the request pages.
    #[serde(default)]
    pub proxy: Vec<ProxyFeedConfig>,
    /// Destinations outside the mesh (an LLM provider, an MCP server, an egress host),
    /// drawn on the mesh graph: the control plane has no entry for them, so only the
    /// config that wired them in can name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalConfig>,
}

/// One `[[inspector.external]]`: a destination outside the mesh that a service calls.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// What the graph labels it (`LLM provider: offline`).
    pub name: String,
    /// The service that calls it (a service name or SPIFFE ID).
    pub from: String,
    /// What it is (`llm`, `mcp`, `egress`); shown next to the name.
    #[serde(default)]
    pub kind: String,
    /// More about it for its details panel (`ollama at http://127.0.0.1:11434`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The whole frontend.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// Where the web UI listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The Workload API socket (`unix:///path`); default `$SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub workload_api: Option<String>,
    /// The URL browsers reach the frontend at; the OIDC redirect URI is `<public_url>/callback`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The user token's `aud`; default the frontend's trust domain.
    #[serde(default)]
    pub audience: Option<String>,
    /// The `[[upstream]]` name `/ask` goes to; default the first.
    #[serde(default)]
    pub entry: Option<String>,
    /// OIDC login; without it the frontend offers the dev login (loopback only).
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// Named upstreams.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// The Security Inspector at `/inspector`; off without this table.
    #[serde(default)]
    pub inspector: Option<InspectorConfig>,
    /// `[limits]`: head deadline, body idle timeout, head sizes and connections per client
    /// address and in total, for the public listener.
    #[serde(
        default,
        skip_serializing_if = "agentmesh_proto::limits::ListenerLimits::is_default"
    )]
    pub limits: agentmesh_proto::limits::ListenerLimits,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl FrontendConfig {
    /// Reads and checks a frontend.toml.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = agentmesh_proto::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` only names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = agentmesh_proto::config::parse_toml(text, path)?;
        let invalid = |m: String| ConfigError::Invalid(path.to_owned(), m);
        cfg.limits.check().map_err(|e| invalid(e.to_string()))?;
        for up in &cfg.upstream {
            if up.url.starts_with("unix:") {
                up.url.parse::<LocalAddr>().map_err(|e| {
                    invalid(format!("upstream {:?}: url {:?}: {e}", up.name, up.url))
                })?;
                continue;
            }
            if !up.url.starts_with("http://") {
                return Err(invalid(format!(
                    "upstream {:?}: url {:?} must be unix:///path or http://host:port (the local sidecar port)",
                    up.name, up.url
                )));
            }
            up.url
                .parse::<http::Uri>()
                .map_err(|e| invalid(format!("upstream {:?}: url {:?}: {e}", up.name, up.url)))?;
        }
        if let Some(entry) = &cfg.entry
            && !cfg.upstream.iter().any(|u| &u.name == entry)
        {
            return Err(invalid(format!(
                "entry {entry:?} is not an [[upstream]] name"
            )));
        }
        if let Some(oidc) = &cfg.oidc {
            if let Some(rest) = oidc.issuer.strip_prefix("http://") {
                // The code exchange carries the client secret and the id_token: plaintext is
                // only acceptable when it never leaves the machine (tests, a local issuer).
                let host = rest.split(['/', ':']).next().unwrap_or("");
                let loopback = host == "localhost"
                    || host == "[::1]"
                    || host
                        .parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|a| a.is_loopback());
                if !loopback {
                    return Err(invalid(format!(
                        "oidc.issuer {:?} must be https:// (plain http only for a loopback issuer)",
                        oidc.issuer
                    )));
                }
            } else if !oidc.issuer.starts_with("https://") {
                return Err(invalid(format!(
                    "oidc.issuer {:?} must be an https:// URL",
                    oidc.issuer
                )));
            }
            match (&oidc.admin_claim, oidc.admin_values.is_empty()) {
                (Some(c), true) => {
                    return Err(invalid(format!(
                        "oidc.admin_claim = {c:?} needs oidc.admin_values: the values that make a user an administrator"
                    )));
                }
                (None, false) => {
                    return Err(invalid(
                        "oidc.admin_values needs oidc.admin_claim: the id_token claim that holds them".into(),
                    ));
                }
                (Some(c), false) if c.trim().is_empty() => {
                    return Err(invalid("oidc.admin_claim must not be empty".into()));
                }
                _ => {}
            }
            if oidc.auth_method != AuthMethod::None && oidc.client_secret.is_none() {
                return Err(invalid(
                    "oidc.client_secret is required unless oidc.auth_method = \"none\"".into(),
                ));
            }
        }
        if let Some(inspector) = &cfg.inspector {
            for p in &inspector.proxy {
                if !p.admin.is_host_local() {
                    return Err(invalid(format!(
                        "inspector.proxy {:?}: admin {} must be a loopback address (the decision \
                         feed is plain HTTP)",
                        p.name, p.admin
                    )));
                }
            }
        }
        if let Some(url) = &cfg.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "public_url {url:?} must be an http(s) URL"
            )));
        }
        Ok(cfg)
    }

    /// The base URL browsers use, without a trailing slash.
    pub fn public_url(&self) -> String {
        self.public_url.as_deref().map_or_else(
            || format!("http://{}", self.listen),
            |u| u.trim_end_matches('/').to_owned(),
        )
    }

    /// The upstream `/ask` goes to.
    pub fn entry_upstream(&self) -> Option<&UpstreamConfig> {
        match &self.entry {
            Some(name) => self.upstream.iter().find(|u| &u.name == name),
            None => self.upstream.first(),
        }
    }

    /// The Workload API socket path, from the config or `$SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when neither names a `unix://` socket.
    pub fn workload_socket(&self, path: &Path) -> Result<PathBuf, ConfigError> {
        let value = self
            .workload_api
            .clone()
            .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
            .ok_or_else(|| {
                ConfigError::Invalid(
                    path.to_owned(),
                    "no Workload API: set workload_api or SPIFFE_ENDPOINT_SOCKET".into(),
                )
            })?;
        let stripped = value.strip_prefix("unix://").ok_or_else(|| {
            ConfigError::Invalid(
                path.to_owned(),
                format!("workload_api {value:?} must be unix:///path"),
            )
        })?;
        Ok(PathBuf::from(stripped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FrontendConfig, ConfigError> {
        FrontendConfig::parse(text, Path::new("frontend.toml"))
    }

    #[test]
    fn an_empty_config_is_a_dev_login_frontend_on_loopback() {
        let cfg = parse("").unwrap();
        assert!(cfg.oidc.is_none());
        assert!(cfg.listen.ip().is_loopback());
        assert_eq!(cfg.public_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn the_admin_claim_is_a_string_a_list_or_a_path() {
        let cfg = parse(
            "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             admin_claim = \"groups\"\nadmin_values = [\"agentmesh-admins\", \"root\"]",
        )
        .unwrap();
        let oidc = cfg.oidc.unwrap();
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        for (c, want) in [
            (
                serde_json::json!({"groups": ["staff", "agentmesh-admins"]}),
                true,
            ),
            (serde_json::json!({"groups": "root"}), true),
            (serde_json::json!({"groups": ["staff"]}), false),
            (serde_json::json!({"groups": "agentmesh-admins-not"}), false),
            (serde_json::json!({"groups": [["agentmesh-admins"]]}), false),
            (serde_json::json!({"roles": ["agentmesh-admins"]}), false),
            (serde_json::json!({}), false),
        ] {
            assert_eq!(oidc.grants_admin(&claims(c.clone())), want, "{c}");
        }
        let nested = OidcConfig {
            admin_claim: Some("realm_access.roles".into()),
            ..oidc.clone()
        };
        assert!(nested.grants_admin(&claims(
            serde_json::json!({"realm_access": {"roles": ["root"]}})
        )));
        let dotted = OidcConfig {
            admin_claim: Some("https://example.com/groups".into()),
            ..oidc.clone()
        };
        assert!(dotted.grants_admin(&claims(
            serde_json::json!({"https://example.com/groups": ["root"]})
        )));
        let none = OidcConfig {
            admin_claim: None,
            admin_values: Vec::new(),
            ..oidc
        };
        assert!(!none.grants_admin(&claims(serde_json::json!({"groups": ["root"]}))));
    }

    #[test]
    fn malformed_configs_are_one_clear_line() {
        for (text, want) in [
            ("listen = 5", "invalid frontend config frontend.toml"),
            ("lisen = \"127.0.0.1:1\"", "unknown field"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"https://x\"",
                "must be unix:///path or http://",
            ),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"unix://no/root.sock\"",
                "neither unix:///absolute/path nor host:port",
            ),
            ("entry = \"b\"", "not an [[upstream]] name"),
            (
                "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"",
                "client_secret is required",
            ),
            (
                "[oidc]\nissuer = \"ftp://i\"\nclient_id = \"c\"",
                "must be an https:// URL",
            ),
            (
                "[oidc]\nissuer = \"http://idp.example\"\nclient_id = \"c\"\nclient_secret = \"s\"",
                "plain http only for a loopback issuer",
            ),
            (
                "[inspector]\n[[inspector.proxy]]\nname = \"p\"\nadmin = \"10.0.0.1:1\"",
                "must be a loopback address",
            ),
            (
                "[inspector]\n[[inspector.proxy]]\nname = \"p\"\nadmin = \"nope\"",
                "invalid frontend config frontend.toml",
            ),
            ("[inspector]\nnode_socket = \"/x\"", "unknown field"),
            (
                "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nclient_secret = \"s\"\nadmin_claim = \"groups\"",
                "needs oidc.admin_values",
            ),
            (
                "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nclient_secret = \"s\"\nadmin_values = [\"a\"]",
                "needs oidc.admin_claim",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
    }
}
