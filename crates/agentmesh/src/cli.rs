//! The command tree, logging setup, and the argument helpers every command shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

pub mod admin;
pub mod agent;
pub mod ask;
pub mod bundle;
pub mod entry;
pub mod frontend;
pub mod gateway;
pub mod intention;
pub mod jwt;
pub mod node;
pub mod output;
pub mod proxy;
pub mod server;
pub mod svid;
pub mod token;
pub mod up;
pub mod workload;

pub use agentmesh::{LogFormat, WORKLOAD_SOCKET_ENV, init_logging, one_line};
/// The environment variable naming the server's admin socket.
pub const ADMIN_SOCKET_ENV: &str = "AGENTMESH_ADMIN_SOCKET";
/// The environment variable a node reads its join token from.
pub const JOIN_TOKEN_ENV: &str = "AGENTMESH_JOIN_TOKEN";
/// The server's data dir when none is given.
pub const DEFAULT_DATA_DIR: &str = ".agentmesh";
/// The admin socket's file name inside a data dir.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";

/// agentmesh: a SPIFFE identity mesh for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentmesh", version = agentmesh::VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr. The filter comes from $AGENTMESH_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The control plane: CA, registration entries, node attestation.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// The per-host daemon that serves the SPIFFE Workload API.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Join tokens for attesting nodes.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Registration entries: which workloads get which SPIFFE ID.
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// The trust bundle: the roots and the JWT signing keys.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// X.509-SVIDs from the Workload API.
    #[command(subcommand)]
    Svid(svid::SvidCommand),
    /// JWT-SVIDs from the Workload API.
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
    /// Intentions: which service may call which (everything else is denied).
    #[command(subcommand)]
    Intention(intention::IntentionCommand),
    /// The sidecar proxy: mTLS in and out, intentions enforced.
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// The LLM gateway: OpenAI and Ollama APIs, per-caller policy, DLP, audit.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// The frontend: OIDC login (or the loopback-only dev login), user tokens, JWKS, /ask.
    #[command(subcommand)]
    Frontend(frontend::FrontendCommand),
    /// A built-in AI agent (planner, executor, researcher, writer, orchestrator, ...).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Starts a whole scenario: server, node, every service and its sidecar, intentions.
    Up(up::UpArgs),
    /// Asks the running mesh a question through its entry point.
    Ask(ask::AskArgs),
}

/// Runs a parsed command line to completion.
///
/// # Errors
/// Whatever the command failed with; `main` prints it as one line. On success, the exit
/// code (0, or 2 for a denied `intention check`).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    init_logging(cli.log_format)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Proxy(_)) {
        // The proxy's data plane runs on worker threads of its own (one per core); this
        // runtime only follows the Workload API, the policy stream and the admin listener.
        builder.worker_threads(1);
    }
    if matches!(cli.command, Command::Gateway(_) | Command::Agent(_)) {
        // Mostly waiting on the network; one worker saves the cross-thread wake-ups that
        // dominated the gateway's added latency at low rates (bench/run gateway).
        builder.worker_threads(1);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(c) => server::run(c).await,
            Command::Node(c) => node::run(c).await,
            Command::Token(c) => token::run(c).await,
            Command::Entry(c) => entry::run(c).await,
            Command::Bundle(c) => bundle::run(c).await,
            Command::Svid(c) => svid::run(c).await,
            Command::Jwt(c) => jwt::run(c).await,
            Command::Proxy(c) => proxy::run(c).await,
            Command::Gateway(c) => gateway::run(c).await,
            Command::Frontend(c) => frontend::run(c).await,
            Command::Agent(c) => agent::run(c).await,
            Command::Up(a) => up::run(a).await,
            Command::Ask(a) => ask::run(a).await,
            Command::Intention(c) => return intention::run(c).await,
        }
        .map(|()| 0)
    })
}

/// Parses a human duration (`90s`, `10m`, `1h 30m`) given for `what` (a flag or config key).
/// Zero is refused: every duration agentmesh takes is a lifetime or a timeout.
///
/// # Errors
/// One line naming `what`, the value and an example of a good one.
pub fn parse_duration(what: &str, value: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        anyhow::anyhow!("invalid {what} {value:?}: {e} (use a duration like 90s, 10m or 1h)")
    })?;
    if d.is_zero() {
        bail!("invalid {what} {value:?}: must be more than zero");
    }
    Ok(d)
}

/// Parses a duration that the server stores in whole seconds (entry TTLs, token TTLs).
///
/// # Errors
/// As [`parse_duration`], and for a duration that is not a whole number of seconds.
pub fn parse_seconds(what: &str, value: &str) -> anyhow::Result<i64> {
    let d = parse_duration(what, value)?;
    if d.subsec_nanos() != 0 {
        bail!("invalid {what} {value:?}: must be a whole number of seconds");
    }
    i64::try_from(d.as_secs()).map_err(|_| anyhow::anyhow!("invalid {what} {value:?}: too long"))
}

/// Turns a Workload API address into a socket path. Accepts `unix:///path`, `unix:/path`
/// and a plain path, the forms `SPIFFE_ENDPOINT_SOCKET` is written in.
///
/// # Errors
/// Another scheme (`tcp://` is not served), a `unix://` URI with a host, or an empty value.
pub fn workload_socket_path(value: &str) -> anyhow::Result<PathBuf> {
    let v = value.trim();
    let path = if let Some(rest) = v.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            bail!(
                "invalid --socket {value:?}: a unix:// address must be unix:///absolute/path (no host)"
            );
        }
        rest
    } else if let Some(rest) = v.strip_prefix("unix:") {
        rest
    } else if v.contains("://") {
        bail!("invalid --socket {value:?}: only unix:///path addresses are supported");
    } else {
        v
    };
    if path.is_empty() {
        bail!("invalid --socket {value:?}: no socket path");
    }
    Ok(PathBuf::from(path))
}

/// The Workload API socket from `--socket` or `$SPIFFE_ENDPOINT_SOCKET` (clap fills the
/// option from either).
///
/// # Errors
/// Neither is set, or the value is malformed.
pub fn require_workload_socket(socket: Option<&str>) -> anyhow::Result<PathBuf> {
    match socket {
        Some(s) => workload_socket_path(s),
        None => bail!(
            "no Workload API socket: pass --socket unix:///path/to/node.sock or set ${WORKLOAD_SOCKET_ENV}"
        ),
    }
}

/// `<data-dir>/admin.sock`.
pub fn default_admin_socket(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_SOCKET_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_in_every_accepted_form_become_paths() {
        let cases = [
            (
                "unix:///tmp/agentmesh/node.sock",
                "/tmp/agentmesh/node.sock",
            ),
            ("unix:/tmp/node.sock", "/tmp/node.sock"),
            ("/tmp/node.sock", "/tmp/node.sock"),
            ("relative/node.sock", "relative/node.sock"),
            (" unix:///x ", "/x"),
        ];
        for (input, want) in cases {
            assert_eq!(
                workload_socket_path(input).unwrap(),
                PathBuf::from(want),
                "{input}"
            );
        }
    }

    #[test]
    fn socket_addresses_that_are_not_unix_paths_are_refused() {
        for input in [
            "unix://host/x",
            "unix://",
            "tcp://127.0.0.1:8081",
            "",
            "unix:",
        ] {
            let err = workload_socket_path(input).unwrap_err().to_string();
            assert!(err.starts_with("invalid --socket"), "{input}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn missing_workload_socket_names_the_flag_and_the_env_var() {
        let err = require_workload_socket(None).unwrap_err().to_string();
        assert!(
            err.contains("--socket") && err.contains(WORKLOAD_SOCKET_ENV),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_with_humantime() {
        assert_eq!(
            parse_duration("--ttl", "10m").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("--ttl", "1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_seconds("--ttl", "90s").unwrap(), 90);
    }

    #[test]
    fn bad_durations_are_one_line_naming_the_flag() {
        for (value, hint) in [
            ("ten", "expected number"),
            ("10", "unit"),
            ("5 parsecs", "unknown time unit"),
            ("0s", "more than zero"),
            ("", ""),
        ] {
            let err = parse_duration("--x509-ttl", value).unwrap_err().to_string();
            assert!(err.starts_with("invalid --x509-ttl"), "{value}: {err}");
            assert!(err.contains(hint), "{value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = parse_seconds("--ttl", "1500ms").unwrap_err().to_string();
        assert!(err.contains("whole number of seconds"), "{err}");
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
