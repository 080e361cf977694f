//! `agentmesh proxy run --config FILE`: the sidecar. `agentmesh-proxy run` runs the same one
//! from a smaller executable (the library's docs say why).

use clap::Subcommand;

pub use agentmesh::ProxyRunArgs;

/// `agentmesh proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Runs the sidecar described by a proxy.toml.
    Run(ProxyRunArgs),
}

/// Runs `agentmesh proxy ...`.
///
/// # Errors
/// A bad config, no SVID, or a listener that cannot be bound.
pub async fn run(cmd: ProxyCommand) -> anyhow::Result<()> {
    match cmd {
        ProxyCommand::Run(args) => agentmesh::run_sidecar(args).await,
    }
}
