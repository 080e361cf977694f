//! `agentmesh agent run --config FILE`: one built-in AI agent, behind its own sidecar.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use agentmesh::Signals;

/// `agentmesh agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Runs the agent described by an agent.toml.
    Run(AgentRunArgs),
}

/// `agentmesh agent run` flags.
#[derive(Debug, Clone, Args)]
pub struct AgentRunArgs {
    // clap prints this doc comment as the flag's --help, where the table names read best in
    // TOML's own brackets; rustdoc would take them for links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// The agent.toml (role, listen, model, [[upstream]], [search])
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs `agentmesh agent ...`.
///
/// # Errors
/// A bad config or a listener that cannot be bound.
pub async fn run(cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Run(args) => {
            let cfg = agentmesh_agents::AgentConfig::load(&args.config)?;
            // Before anything listens, so a bad OTEL_* variable is one error at startup.
            let telemetry = agentmesh_telemetry::init(&format!("agentmesh-agent/{}", cfg.name()))?;
            let mut signals = Signals::new()?;
            let agent = agentmesh_agents::start(cfg)
                .await
                .context("agent did not start")?;
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            agent.shutdown().await;
            telemetry.shutdown().await;
            Ok(())
        }
    }
}
