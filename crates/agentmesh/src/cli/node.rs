//! `agentmesh node run`: the per-host daemon.

use std::path::PathBuf;

use agentmesh_node::NodeConfig;
use anyhow::Context;
use clap::{Args, Subcommand};

use super::server::Signals;
use super::{JOIN_TOKEN_ENV, WORKLOAD_SOCKET_ENV, default_admin_socket, workload_socket_path};

/// The node's data dir when none is given.
pub const DEFAULT_NODE_DATA_DIR: &str = ".agentmesh/node";

/// `agentmesh node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Runs the node until SIGINT or SIGTERM.
    Run(NodeRunArgs),
}

/// `agentmesh node run` flags.
#[derive(Debug, Clone, Args)]
pub struct NodeRunArgs {
    /// The server's node API address, HOST:PORT
    #[arg(long, value_name = "ADDR")]
    pub server: String,
    /// A one-time join token from `agentmesh token generate`; not needed while a stored node
    /// SVID is still valid
    #[arg(long, value_name = "TOKEN", env = JOIN_TOKEN_ENV, hide_env_values = true)]
    pub join_token: Option<String>,
    /// Where to serve the Workload API and Envoy SDS: unix:///path, unix:/path or a path
    #[arg(long, value_name = "PATH", env = WORKLOAD_SOCKET_ENV)]
    pub socket: String,
    /// PEM file with the roots that the server's certificate must chain to (from `agentmesh
    /// bundle show`)
    #[arg(long, value_name = "FILE")]
    pub trust_bundle: PathBuf,
    /// Where the node keeps its SVID, key and cache
    #[arg(long, value_name = "DIR", default_value = DEFAULT_NODE_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The node's admin socket, for launchers [default: <DATA_DIR>/admin.sock]
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// The trust domain, needed only when no bundle root carries a SPIFFE ID (an upstream
    /// CA's root, such as OpenBao's) [default: from the bundle]
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
    /// A TOML file with a `[limits]` table for the Workload API and admin sockets (the
    /// same keys as every component's `[limits]`) [default: the built-in limits]
    #[arg(long, value_name = "FILE")]
    pub limits: Option<PathBuf>,
}

/// The `--limits` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    limits: agentmesh_proto::limits::ListenerLimits,
}

/// Reads and checks a `--limits` file.
fn read_limits(path: &std::path::Path) -> anyhow::Result<agentmesh_proto::limits::ListenerLimits> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --limits {}", path.display()))?;
    let file: LimitsFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--limits {}: {}", path.display(), e.message()))?;
    file.limits
        .check()
        .map_err(|e| anyhow::anyhow!("--limits {}: {e}", path.display()))?;
    Ok(file.limits)
}

impl NodeRunArgs {
    /// The node's configuration. `$AGENTMESH_ADMIN_SOCKET` is deliberately not read: it names
    /// the server's socket.
    ///
    /// # Errors
    /// A malformed `--socket` or an empty `--server` / `--join-token`.
    pub fn to_config(&self) -> anyhow::Result<NodeConfig> {
        let server = self.server.trim();
        if server.is_empty() {
            anyhow::bail!(
                "--server is empty; pass the server's node API address, e.g. 127.0.0.1:8081"
            );
        }
        let join_token = match self.join_token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(t.to_owned()),
        };
        Ok(NodeConfig {
            server: server.to_owned(),
            join_token,
            socket: workload_socket_path(&self.socket)?,
            trust_bundle: self.trust_bundle.clone(),
            data_dir: self.data_dir.clone(),
            admin_socket: self
                .admin_socket
                .clone()
                .unwrap_or_else(|| default_admin_socket(&self.data_dir)),
            trust_domain: self
                .trust_domain
                .as_deref()
                .map(|td| {
                    agentmesh_spiffe::TrustDomain::new(td)
                        .map_err(|e| anyhow::anyhow!("invalid --trust-domain {td:?}: {e}"))
                })
                .transpose()?,
            limits: self
                .limits
                .as_deref()
                .map(read_limits)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// Runs `agentmesh node ...`.
///
/// # Errors
/// Bad settings, or the node failing to start.
pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Run(args) => {
            let cfg = args.to_config()?;
            let server = cfg.server.clone();
            let mut signals = Signals::new()?;
            let node = agentmesh_node::start(cfg)
                .await
                .with_context(|| format!("node did not start (server {server})"))?;
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            node.shutdown().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> NodeRunArgs {
        let cli =
            crate::cli::Cli::try_parse_from(["agentmesh", "node", "run"].iter().chain(args.iter()))
                .unwrap();
        match cli.command {
            crate::cli::Command::Node(NodeCommand::Run(a)) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn node_defaults_keep_its_admin_socket_in_its_data_dir() {
        let a = parse(&[
            "--server",
            "127.0.0.1:8081",
            "--join-token",
            "tok",
            "--socket",
            "unix:///tmp/am/node.sock",
            "--trust-bundle",
            "b.pem",
        ]);
        let cfg = a.to_config().unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/tmp/am/node.sock"));
        assert_eq!(cfg.data_dir, PathBuf::from(".agentmesh/node"));
        assert_eq!(
            cfg.admin_socket,
            PathBuf::from(".agentmesh/node/admin.sock")
        );
        assert_eq!(cfg.join_token.as_deref(), Some("tok"));
    }

    #[test]
    fn limits_come_from_the_limits_file_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("limits.toml");
        let args = |f: &std::path::Path| {
            parse(&[
                "--server",
                "127.0.0.1:8081",
                "--socket",
                "/tmp/node.sock",
                "--trust-bundle",
                "b.pem",
                "--limits",
                f.to_str().unwrap(),
            ])
        };
        std::fs::write(&file, "[limits]\nheader_timeout = \"3s\"\n").unwrap();
        let cfg = args(&file).to_config().unwrap();
        assert_eq!(cfg.limits.header_timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            cfg.limits.body_idle_timeout,
            std::time::Duration::from_secs(30)
        );
        std::fs::write(&file, "[limits]\nheader_timout = \"3s\"\n").unwrap();
        let err = args(&file).to_config().unwrap_err().to_string();
        assert!(
            err.contains("header_timout") && err.contains("--limits"),
            "{err}"
        );
        std::fs::write(&file, "[limits]\nmax_connections = 0\n").unwrap();
        let err = args(&file).to_config().unwrap_err().to_string();
        assert!(err.contains("limits.max_connections"), "{err}");
    }

    #[test]
    fn the_join_token_is_optional() {
        let a = parse(&[
            "--server",
            "127.0.0.1:8081",
            "--socket",
            "/tmp/node.sock",
            "--trust-bundle",
            "b.pem",
            "--data-dir",
            "/var/lib/am",
        ]);
        let cfg = a.to_config().unwrap();
        assert_eq!(cfg.admin_socket, PathBuf::from("/var/lib/am/admin.sock"));
        // The env var may be set in the test's environment; only check it is not empty.
        assert_ne!(cfg.join_token.as_deref(), Some(""));
    }

    #[test]
    fn a_bad_socket_is_refused() {
        let a = parse(&[
            "--server",
            "127.0.0.1:8081",
            "--socket",
            "tcp://127.0.0.1:1",
            "--trust-bundle",
            "b.pem",
        ]);
        let err = a.to_config().unwrap_err().to_string();
        assert!(err.starts_with("invalid --socket"), "{err}");
    }
}
