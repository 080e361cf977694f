//! `agentmesh frontend run --config FILE`: the entry point for humans (OIDC login, user
//! tokens, JWKS, the ask page).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use agentmesh::Signals;

/// `agentmesh frontend ...`
#[derive(Debug, Subcommand)]
pub enum FrontendCommand {
    /// Runs the frontend described by a frontend.toml.
    Run(FrontendRunArgs),
}

/// `agentmesh frontend run` flags.
#[derive(Debug, Clone, Args)]
pub struct FrontendRunArgs {
    // clap prints this doc comment as the flag's --help, where the table names read best in
    // TOML's own brackets; rustdoc would take them for links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// The frontend.toml (listen, workload_api, [oidc], [[upstream]], entry, audience)
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Listen here instead of the config's `listen` (IP:PORT), so one config serves on a
    /// port chosen at deploy time (Compose's `${PORT}`)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// Runs `agentmesh frontend ...`.
///
/// # Errors
/// A bad config, no SVID, an issuer that cannot be discovered, or a listener that cannot be
/// bound.
pub async fn run(cmd: FrontendCommand) -> anyhow::Result<()> {
    match cmd {
        FrontendCommand::Run(args) => {
            let mut cfg = agentmesh_frontend::FrontendConfig::load(&args.config)?;
            // The dev login's loopback rule is checked at start, on this address.
            if let Some(listen) = args.listen {
                cfg.listen = listen;
            }
            let telemetry = agentmesh_telemetry::init("agentmesh-frontend")?;
            let mut signals = Signals::new()?;
            let frontend = agentmesh_frontend::start(cfg, &args.config)
                .await
                .context("frontend did not start")?;
            println!("frontend listening on http://{}", frontend.addr);
            let signal = signals.recv().await;
            tracing::info!(signal, "shutting down");
            frontend.shutdown().await;
            telemetry.shutdown().await;
            Ok(())
        }
    }
}
