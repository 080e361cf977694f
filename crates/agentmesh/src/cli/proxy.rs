//! `agentmesh proxy run --config FILE`: the sidecar.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::WORKLOAD_SOCKET_ENV;
use super::server::Signals;

/// `agentmesh proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Runs the sidecar described by a proxy.toml.
    Run(ProxyRunArgs),
}

/// `agentmesh proxy run` flags.
#[derive(Debug, Clone, Args)]
pub struct ProxyRunArgs {
    // clap prints this doc comment as the flag's --help, where the table names read best in
    // TOML's own brackets; rustdoc would take them for links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// The proxy.toml (service, [inbound], [[upstream]], [admin])
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs `agentmesh proxy ...`.
///
/// # Errors
/// A bad config, no SVID, or a listener that cannot be bound.
pub async fn run(cmd: ProxyCommand) -> anyhow::Result<()> {
    match cmd {
        ProxyCommand::Run(args) => {
            let cfg = agentmesh_proxy::ProxyConfig::load(&args.config)?;
            let env = std::env::var(WORKLOAD_SOCKET_ENV).ok();
            let socket = cfg.workload_socket(&args.config, env.as_deref())?;
            // Before anything listens, so a bad OTEL_* variable is one error at startup.
            let telemetry = agentmesh_telemetry::init(&format!("agentmesh-proxy/{}", cfg.service))?;
            let mut signals = Signals::new()?;
            let proxy = agentmesh_proxy::start(cfg, socket.clone())
                .await
                .with_context(|| {
                    format!("proxy did not start (Workload API {})", socket.display())
                })?;
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            proxy.shutdown().await;
            telemetry.shutdown().await;
            Ok(())
        }
    }
}
