//! `agentmesh bundle show`: the trust bundle, for nodes (`--trust-bundle`) and verifiers.

use agentmesh_proto::v1::GetBundleRequest;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::admin::{AdminArgs, status_error};
use super::output::{certs_pem, print_json};

/// `agentmesh bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Prints the trust bundle.
    Show(BundleShowArgs),
}

/// `-o pem|jwks|json` for `bundle show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BundleFormat {
    /// The X.509 roots as PEM CERTIFICATE blocks.
    #[default]
    Pem,
    /// The JWT signing keys as a JWKS document.
    Jwks,
    /// Both, with the trust domain and the bundle's sequence number.
    Json,
}

/// `agentmesh bundle show` flags.
#[derive(Debug, Clone, Args)]
pub struct BundleShowArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: BundleFormat,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The JSON form of a bundle.
#[derive(Debug, Serialize)]
pub struct BundleJson {
    /// The trust domain the bundle belongs to.
    pub trust_domain: String,
    /// Each root as a PEM block.
    pub x509_authorities: Vec<String>,
    /// The JWKS document.
    pub jwks: serde_json::Value,
    /// Increases whenever the bundle changes.
    pub sequence: u64,
}

/// Runs `agentmesh bundle ...`.
///
/// # Errors
/// No server, the server refusing, or a JWKS that is not JSON.
pub async fn run(cmd: BundleCommand) -> anyhow::Result<()> {
    let BundleCommand::Show(args) = cmd;
    let mut client = args.admin.connect().await?;
    let bundle = client
        .get_bundle(GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let jwks = || -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&bundle.jwks).context("the server sent a JWKS that is not JSON")
    };
    match args.output {
        BundleFormat::Pem => print!("{}", certs_pem(&bundle.x509_authorities)),
        BundleFormat::Jwks => print_json(&jwks()?)?,
        BundleFormat::Json => print_json(&BundleJson {
            trust_domain: bundle.trust_domain.clone(),
            x509_authorities: bundle
                .x509_authorities
                .iter()
                .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
                .collect(),
            jwks: jwks()?,
            sequence: bundle.sequence,
        })?,
    }
    Ok(())
}
