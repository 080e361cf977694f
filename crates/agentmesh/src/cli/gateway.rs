//! `agentmesh gateway run --config FILE`: the LLM gateway, behind its own inbound proxy.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use agentmesh::Signals;

/// `agentmesh gateway ...`
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Runs the gateway described by a gateway.toml.
    Run(GatewayRunArgs),
}

/// `agentmesh gateway run` flags.
#[derive(Debug, Clone, Args)]
pub struct GatewayRunArgs {
    // clap prints this doc comment as the flag's --help, where the table names read best in
    // TOML's own brackets; rustdoc would take them for links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// The gateway.toml (listen, [[provider]], [[model]], [[caller]], [dlp])
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs `agentmesh gateway ...`.
///
/// # Errors
/// A bad config or a listener that cannot be bound.
pub async fn run(cmd: GatewayCommand) -> anyhow::Result<()> {
    match cmd {
        GatewayCommand::Run(args) => {
            let cfg = agentmesh_gateway::GatewayConfig::load(&args.config)?;
            // Before anything listens, so a bad OTEL_* variable is one error at startup.
            let telemetry = agentmesh_telemetry::init("agentmesh-gateway")?;
            let mut signals = Signals::new()?;
            let gateway = agentmesh_gateway::start(cfg)
                .await
                .context("gateway did not start")?;
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            gateway.shutdown().await;
            telemetry.shutdown().await;
            Ok(())
        }
    }
}
