//! `agentmesh node run`: the per-host daemon; `agentmesh node denials`: the full explanation
//! of the callers it refused, from its 0600 admin socket.

use std::path::PathBuf;

use agentmesh_node::NodeConfig;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::admin::status_error;
use super::output::{TextOrJson, print_json, rfc3339_secs};

use super::{JOIN_TOKEN_ENV, WORKLOAD_SOCKET_ENV, default_admin_socket, workload_socket_path};
use agentmesh::Signals;

/// The node's data dir when none is given.
pub const DEFAULT_NODE_DATA_DIR: &str = ".agentmesh/node";

/// `agentmesh node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Runs the node until SIGINT or SIGTERM.
    Run(Box<NodeRunArgs>),
    /// Why the node refused callers: the closest entry and what it needs, which the refused
    /// caller itself is only given a request id for (newest first).
    Denials(NodeDenialsArgs),
}

/// `agentmesh node denials` flags.
#[derive(Debug, Clone, Args)]
pub struct NodeDenialsArgs {
    /// Only the denial with this request id (from the refused caller's error message)
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// The node's admin socket [default: <DATA_DIR>/admin.sock]
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// The node's data dir, used to find the admin socket
    #[arg(long, value_name = "DIR", default_value = DEFAULT_NODE_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
}

/// One denial as `-o json` prints it.
#[derive(Debug, Serialize)]
struct DenialJson {
    request_id: String,
    at: String,
    api: String,
    pid: u32,
    uid: u32,
    missing_kinds: Vec<String>,
    closest_entry_id: String,
    closest_spiffe_id: String,
    explanation: String,
}

async fn denials(args: NodeDenialsArgs) -> anyhow::Result<()> {
    let socket = args
        .admin_socket
        .clone()
        .unwrap_or_else(|| default_admin_socket(&args.data_dir));
    let channel = agentmesh_proto::unix::connect(&socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the node's admin socket {}: {e}; is the node running, and may this user \
             open the socket (mode 0600)? Point at it with --admin-socket",
            socket.display()
        )
    })?;
    let denials = NodeAdminClient::new(channel)
        .list_denials(agentmesh_proto::v1::ListDenialsRequest {
            request_id: args.request_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .denials;
    let rows: Vec<DenialJson> = denials
        .into_iter()
        .map(|d| DenialJson {
            request_id: d.request_id,
            at: rfc3339_secs(d.at),
            api: d.api,
            pid: d.pid,
            uid: d.uid,
            missing_kinds: d.missing_kinds,
            closest_entry_id: d.closest_entry_id,
            closest_spiffe_id: d.closest_spiffe_id,
            explanation: d.explanation,
        })
        .collect();
    match args.output {
        TextOrJson::Json => print_json(&rows),
        TextOrJson::Text => {
            if rows.is_empty() {
                println!("The node has refused no caller since it started.");
            }
            for d in rows {
                println!("Request ID    : {}", d.request_id);
                println!("At            : {}", d.at);
                println!("API           : {}", d.api);
                println!("Caller        : pid {} uid {}", d.pid, d.uid);
                println!(
                    "Closest entry : {} {}",
                    d.closest_entry_id, d.closest_spiffe_id
                );
                println!("Missing kinds : {}", d.missing_kinds.join(", "));
                println!("Explanation   : {}", d.explanation);
                println!();
            }
            Ok(())
        }
    }
}

/// `agentmesh node run` flags.
#[derive(Debug, Clone, Args)]
pub struct NodeRunArgs {
    /// The server's node API address, HOST:PORT
    #[arg(long, value_name = "ADDR")]
    pub server: String,
    /// A one-time join token from `agentmesh token generate`; not needed while a stored node
    /// SVID is still valid, nor with --x509pop-cert
    #[arg(long, value_name = "TOKEN", env = JOIN_TOKEN_ENV, hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file that holds the join token, as the server's `[bootstrap] join_token_file` writes
    /// it, for deployments that cannot pass secrets on the command line
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// x509pop node attestation instead of a join token: PEM file of this node's certificate
    /// (then any intermediates), issued by a CA the server's
    /// `[node_attestation.x509pop] ca_bundle_path` trusts. The node becomes
    /// spiffe://<td>/agentmesh/node/x509pop/<SHA-1 of the certificate>, and attests again with
    /// it after a restart or whenever its node SVID has expired
    #[arg(long, value_name = "FILE", requires = "x509pop_key")]
    pub x509pop_cert: Option<PathBuf>,
    /// The private key of --x509pop-cert (PEM: PKCS#8, EC or RSA)
    #[arg(long, value_name = "FILE", requires = "x509pop_cert")]
    pub x509pop_key: Option<PathBuf>,
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
    /// The Docker Engine's socket, asked about callers that run in containers (`docker:`
    /// selectors); an empty value turns Docker attestation off
    #[arg(long, value_name = "PATH", default_value = agentmesh_node::DEFAULT_DOCKER_SOCKET)]
    pub docker_socket: String,
    /// Serve no identities: --socket then relays only intentions and the service catalog to
    /// proxies whose SVIDs come from another Workload API (a SPIRE agent's; their
    /// `policy_api` points here). Callers are still attested against agentmesh entries
    #[arg(long)]
    pub no_workload_api: bool,
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
        let join_token = match (&self.join_token_file, self.join_token.as_deref()) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --join-token-file {}", file.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    anyhow::bail!("--join-token-file {} is empty", file.display());
                }
                Some(token.to_owned())
            }
            (None, None) => None,
            (None, Some(t)) => Some(t.trim().to_owned()).filter(|t| !t.is_empty()),
        };
        let x509pop = match (&self.x509pop_cert, &self.x509pop_key) {
            (Some(cert), Some(key)) => {
                if join_token.is_some() {
                    anyhow::bail!(
                        "both a join token (--join-token, --join-token-file or ${JOIN_TOKEN_ENV}) and \
                         --x509pop-cert are given; attest with one of them"
                    );
                }
                Some(agentmesh_node::X509PopFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            _ => None,
        };
        Ok(NodeConfig {
            server: server.to_owned(),
            join_token,
            x509pop,
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
            docker_socket: (!self.docker_socket.is_empty())
                .then(|| PathBuf::from(&self.docker_socket)),
            workload_api: !self.no_workload_api,
        })
    }
}

/// Runs `agentmesh node ...`.
///
/// # Errors
/// Bad settings, or the node failing to start.
pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Denials(args) => denials(args).await,
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
            crate::cli::Command::Node(NodeCommand::Run(a)) => *a,
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
        assert_eq!(
            cfg.docker_socket,
            Some(PathBuf::from("/var/run/docker.sock"))
        );
    }

    #[test]
    fn docker_attestation_follows_the_docker_socket_flag_and_an_empty_one_turns_it_off() {
        let with = |socket: &str| {
            parse(&[
                "--server",
                "127.0.0.1:8081",
                "--socket",
                "/tmp/node.sock",
                "--trust-bundle",
                "b.pem",
                "--docker-socket",
                socket,
            ])
            .to_config()
            .unwrap()
            .docker_socket
        };
        assert_eq!(
            with("/run/docker.sock"),
            Some(PathBuf::from("/run/docker.sock"))
        );
        assert_eq!(with(""), None);
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
    fn x509pop_takes_a_certificate_and_its_key_and_no_join_token() {
        let base = [
            "--server",
            "127.0.0.1:8081",
            "--socket",
            "/tmp/node.sock",
            "--trust-bundle",
            "b.pem",
        ];
        let with = |extra: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["agentmesh", "node", "run"]
                    .iter()
                    .chain(base.iter())
                    .chain(extra.iter()),
            )
        };
        let crate::cli::Command::Node(NodeCommand::Run(a)) = with(&[
            "--x509pop-cert",
            "/etc/am/node.pem",
            "--x509pop-key",
            "/etc/am/node.key",
        ])
        .unwrap()
        .command
        else {
            panic!("not node run");
        };
        let mut a = a;
        a.join_token = None;
        let cfg = a.to_config().unwrap();
        assert_eq!(
            cfg.x509pop,
            Some(agentmesh_node::X509PopFiles {
                cert: PathBuf::from("/etc/am/node.pem"),
                key: PathBuf::from("/etc/am/node.key"),
            })
        );
        a.join_token = Some("tok".into());
        let err = a.to_config().unwrap_err().to_string();
        assert!(err.contains("attest with one of them"), "{err}");
        // One without the other is a usage error.
        assert!(with(&["--x509pop-cert", "/etc/am/node.pem"]).is_err());
        assert!(with(&["--x509pop-key", "/etc/am/node.key"]).is_err());
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
    fn the_join_token_file_is_read_trimmed_and_a_missing_or_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("join-token");
        let args = || {
            parse(&[
                "--server",
                "127.0.0.1:8081",
                "--socket",
                "/tmp/node.sock",
                "--trust-bundle",
                "b.pem",
                "--join-token-file",
                file.to_str().unwrap(),
            ])
        };
        let err = args().to_config().unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read --join-token-file"),
            "{err:#}"
        );
        std::fs::write(&file, "  \n").unwrap();
        let err = args().to_config().unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&file, "tok-from-file\n").unwrap();
        assert_eq!(
            args().to_config().unwrap().join_token.as_deref(),
            Some("tok-from-file")
        );
        let both = crate::cli::Cli::try_parse_from([
            "agentmesh",
            "node",
            "run",
            "--server",
            "127.0.0.1:8081",
            "--socket",
            "/tmp/node.sock",
            "--trust-bundle",
            "b.pem",
            "--join-token",
            "t",
            "--join-token-file",
            "f",
        ]);
        assert!(
            both.is_err(),
            "a token and a token file at once must be refused"
        );
    }

    #[test]
    fn denials_are_read_from_the_node_admin_socket_by_request_id() {
        let cli = crate::cli::Cli::try_parse_from([
            "agentmesh",
            "node",
            "denials",
            "--request-id",
            "0123456789abcdef",
            "--data-dir",
            "/var/lib/am",
            "-o",
            "json",
        ])
        .unwrap();
        let crate::cli::Command::Node(NodeCommand::Denials(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(a.request_id.as_deref(), Some("0123456789abcdef"));
        assert_eq!(a.output, TextOrJson::Json);
        assert_eq!(
            a.admin_socket
                .unwrap_or_else(|| default_admin_socket(&a.data_dir)),
            PathBuf::from("/var/lib/am/admin.sock")
        );
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
