//! `agentmesh bundle show`: the trust bundle, for nodes (`--trust-bundle`) and verifiers;
//! `agentmesh bundle set|list|delete`: federated (foreign) bundles, as SPIRE's `bundle set`,
//! `bundle list` and `bundle delete`.

use std::io::Read as _;
use std::path::PathBuf;

use agentmesh_proto::v1::{
    self, DeleteFederatedBundleRequest, GetBundleRequest, ListFederatedBundlesRequest,
    SetFederatedBundleRequest,
};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::admin::{AdminArgs, status_error};
use super::output::{TextOrJson, certs_pem, print_json, rfc3339_secs};

/// `agentmesh bundle ...`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Prints the trust bundle.
    Show(BundleShowArgs),
    /// Sets a federated trust domain's bundle by hand (bootstraps an https_spiffe endpoint).
    Set(BundleSetArgs),
    /// Lists the federated bundles the server holds.
    List(BundleListArgs),
    /// Forgets a federated trust domain's bundle.
    Delete(BundleDeleteArgs),
}

/// `--format spiffe|pem` for `bundle set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SetFormat {
    /// The SPIFFE bundle document (JWKS with x509-svid and jwt-svid keys).
    #[default]
    Spiffe,
    /// PEM CERTIFICATE blocks (X.509 roots only).
    Pem,
}

/// `agentmesh bundle set` flags.
#[derive(Debug, Clone, Args)]
pub struct BundleSetArgs {
    /// The trust domain the bundle belongs to, spiffe://other.td
    #[arg(long, value_name = "TRUST_DOMAIN_ID")]
    pub id: String,
    /// The bundle file [default: read standard input]
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// The file's format
    #[arg(long, value_enum, default_value_t)]
    pub format: SetFormat,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh bundle list` flags.
#[derive(Debug, Clone, Args)]
pub struct BundleListArgs {
    /// Only this trust domain's bundle
    #[arg(long, value_name = "TRUST_DOMAIN_ID")]
    pub id: Option<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh bundle delete` flags.
#[derive(Debug, Clone, Args)]
pub struct BundleDeleteArgs {
    /// The trust domain whose bundle to forget, spiffe://other.td
    #[arg(long, value_name = "TRUST_DOMAIN_ID")]
    pub id: String,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The JSON form of a federated bundle in `bundle list -o json`.
#[derive(Debug, Serialize)]
pub struct FederatedBundleJson {
    /// The bundle itself.
    #[serde(flatten)]
    pub bundle: BundleJson,
    /// `manual`, or the bundle endpoint URL it was fetched from.
    pub source: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
    /// The publisher's refresh hint in seconds (0: none).
    pub refresh_hint_seconds: i64,
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
    /// The SPIFFE bundle document, as a bundle endpoint serves it (for `bundle set` on
    /// another server, or `spire-server bundle set -format spiffe`).
    Spiffe,
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
    match cmd {
        BundleCommand::Show(args) => show(args).await,
        BundleCommand::Set(args) => set(args).await,
        BundleCommand::List(args) => list(args).await,
        BundleCommand::Delete(args) => {
            let mut client = args.admin.connect().await?;
            client
                .delete_federated_bundle(DeleteFederatedBundleRequest {
                    trust_domain: args.id.clone(),
                })
                .await
                .map_err(status_error)?;
            println!("deleted the bundle of {}", args.id);
            Ok(())
        }
    }
}

fn bundle_json(bundle: &v1::Bundle) -> anyhow::Result<BundleJson> {
    Ok(BundleJson {
        trust_domain: bundle.trust_domain.clone(),
        x509_authorities: bundle
            .x509_authorities
            .iter()
            .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
            .collect(),
        jwks: serde_json::from_str(&bundle.jwks)
            .context("the server sent a JWKS that is not JSON")?,
        sequence: bundle.sequence,
    })
}

async fn set(args: BundleSetArgs) -> anyhow::Result<()> {
    let data = match &args.path {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read --path {}", p.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the bundle from standard input")?;
            buf
        }
    };
    let mut client = args.admin.connect().await?;
    let stored = client
        .set_federated_bundle(SetFederatedBundleRequest {
            trust_domain: args.id.clone(),
            data,
            format: match args.format {
                SetFormat::Spiffe => "spiffe",
                SetFormat::Pem => "pem",
            }
            .into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let roots = stored.bundle.map_or(0, |b| b.x509_authorities.len());
    println!("bundle set for {} ({roots} root(s))", args.id);
    Ok(())
}

async fn list(args: BundleListArgs) -> anyhow::Result<()> {
    let mut client = args.admin.connect().await?;
    let mut bundles = client
        .list_federated_bundles(ListFederatedBundlesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .bundles;
    if let Some(id) = &args.id {
        let name = id.strip_prefix("spiffe://").unwrap_or(id);
        bundles.retain(|b| b.bundle.as_ref().is_some_and(|b| b.trust_domain == name));
        if bundles.is_empty() {
            anyhow::bail!("no federated bundle for {id} is held");
        }
    }
    match args.output {
        TextOrJson::Json => {
            let list = bundles
                .iter()
                .map(|b| {
                    Ok(FederatedBundleJson {
                        bundle: bundle_json(&b.bundle.clone().unwrap_or_default())?,
                        source: b.source.clone(),
                        updated_at: rfc3339_secs(b.updated_at),
                        refresh_hint_seconds: b.refresh_hint_seconds,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_json(&serde_json::json!({ "bundles": list }))
        }
        TextOrJson::Text => {
            for b in &bundles {
                let bundle = b.bundle.clone().unwrap_or_default();
                // SPIRE's `bundle list` layout: a banner with the trust domain, then the roots.
                println!("****************************************");
                println!("* spiffe://{}", bundle.trust_domain);
                println!("****************************************");
                println!("Source           : {}", b.source);
                println!("Updated at       : {}", rfc3339_secs(b.updated_at));
                println!("Sequence         : {}", bundle.sequence);
                print!("{}", certs_pem(&bundle.x509_authorities));
                println!();
            }
            Ok(())
        }
    }
}

async fn show(args: BundleShowArgs) -> anyhow::Result<()> {
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
        BundleFormat::Spiffe => {
            let doc = agentmesh_ca::SpiffeBundle {
                x509_authorities: bundle.x509_authorities.clone(),
                jwt_keys: agentmesh_ca::Jwks::from_json(&bundle.jwks)
                    .context("the server sent a JWKS that is not usable")?,
                sequence: Some(bundle.sequence),
                refresh_hint: None,
            };
            println!("{}", doc.to_json()?);
        }
    }
    Ok(())
}
