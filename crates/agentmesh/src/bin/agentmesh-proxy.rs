//! `agentmesh-proxy`: the sidecar alone, in an executable that links only the data plane.
//!
//! `agentmesh-proxy run --config proxy.toml` is `agentmesh proxy run --config proxy.toml`;
//! errors, exit codes and logs are the same. See the library's docs for why it exists.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use agentmesh::{LogFormat, ProxyRunArgs};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// agentmesh-proxy: the agentmesh sidecar (mTLS in and out, intentions enforced).
#[derive(Debug, Parser)]
#[command(name = "agentmesh-proxy", version = agentmesh::VERSION, propagate_version = true)]
struct Cli {
    /// Log format on stderr. The filter comes from $AGENTMESH_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the sidecar described by a proxy.toml.
    Run(ProxyRunArgs),
    /// Prints the build this executable comes from (`agentmesh up` checks it).
    #[command(hide = true)]
    BuildId,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", agentmesh::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Command::BuildId => {
            println!("{}", agentmesh::BUILD_ID);
            return Ok(());
        }
        Command::Run(args) => args,
    };
    agentmesh::init_logging(cli.log_format)?;
    // As in `agentmesh proxy run`: the data plane runs on worker threads of its own (one per
    // core); this runtime only follows the Workload API, the policy stream and the admin
    // listener.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(agentmesh::run_sidecar(args))
}
