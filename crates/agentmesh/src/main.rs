//! The `agentmesh` command: runs the server and the node, and talks to them (entries, join
//! tokens, bundles, SVIDs).
//!
//! Errors go to stderr as one line starting with `error:`, and the exit code is 1
//! (`intention check` exits 2 when the answer is deny, as `consul intention check` does). Usage
//! errors found by clap keep clap's own message and exit code 2.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {}", agentmesh::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
