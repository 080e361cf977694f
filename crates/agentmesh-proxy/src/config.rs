//! `proxy.toml`: DESIGN.md's starting format, extended (never renamed). Unknown keys are
//! refused, so a misspelt key cannot silently leave a listener unprotected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// What the inbound listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw TCP under L4 intentions (Consul's default too).
    #[default]
    Tcp,
    /// HTTP/1.1 or HTTP/2 (by ALPN), with L7 intentions per request.
    Http,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The service this proxy fronts; a name (`executor`, `team/executor`) or a SPIFFE ID.
    pub service: String,
    /// `unix:///path` of the Workload API; default `$SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub workload_api: Option<String>,
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
    #[serde(default)]
    pub limits: agentmesh_proto::limits::ListenerLimits,
}

/// `[inbound]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// The public mTLS listener.
    pub listen: SocketAddr,
    /// The local app, `host:port`.
    pub app: String,
    /// `http` or `tcp` (default).
    #[serde(default)]
    pub protocol: Protocol,
    /// The address other proxies should dial, registered in the service catalog; default
    /// the bound listener address.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// `[[upstream]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// A service name or SPIFFE ID; the server's certificate must carry exactly this ID.
    pub destination: String,
    /// The plain local listener the app calls.
    pub listen: SocketAddr,
    /// The destination proxy's address; default from the service catalog.
    #[serde(default)]
    pub address: Option<String>,
    /// `http` (pooled, multiplexed HTTP/2 to the destination) or `tcp` (default; one mTLS
    /// connection per local connection).
    #[serde(default)]
    pub protocol: Protocol,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where `/metrics` and `/healthz` are served.
    pub listen: SocketAddr,
}

impl ProxyConfig {
    /// Parses and checks a config text; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys, or inconsistent values.
    pub fn parse(origin: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(origin.to_owned(), one_line(&e.to_string())))?;
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
        let mut listens: Vec<SocketAddr> = cfg.upstream.iter().map(|u| u.listen).collect();
        if let Some(i) = &cfg.inbound {
            if i.app
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(invalid(format!("inbound.app {:?} is not host:port", i.app)));
            }
            listens.push(i.listen);
        }
        if let Some(a) = &cfg.admin {
            listens.push(a.listen);
        }
        for (n, l) in listens.iter().enumerate() {
            if l.port() != 0 && listens[..n].contains(l) {
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
            if !u.listen.ip().is_loopback() {
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
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
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
        let v = raw.trim();
        let path = v
            .strip_prefix("unix://")
            .or_else(|| v.strip_prefix("unix:"))
            .unwrap_or(v);
        if path.is_empty()
            || !path.starts_with('/')
            || v.contains("://") && !v.starts_with("unix:///")
        {
            return Err(ConfigError::Invalid(
                origin.to_owned(),
                format!("workload_api {raw:?} is not unix:///absolute/path"),
            ));
        }
        Ok(PathBuf::from(path))
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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
        assert_eq!(
            cfg.workload_socket(Path::new("p"), None).unwrap(),
            PathBuf::from("/tmp/agentmesh/node.sock")
        );
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
        let cfg =
            parse("service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"127.0.0.1:1\"")
                .unwrap();
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
