//! `agentmesh svid fetch`: this process's X.509-SVIDs from the Workload API, like
//! `spire-agent api fetch x509`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh_proto::workload::{X509svid, X509svidRequest};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::output::{certs_pem, print_json, rfc3339, split_der_certs};
use super::{WORKLOAD_SOCKET_ENV, parse_duration, require_workload_socket, workload};

/// `agentmesh svid ...`
#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Fetches this process's X.509-SVIDs (the first message of FetchX509SVID).
    Fetch(SvidFetchArgs),
}

/// `-o text|json|pem` for `svid fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SvidFormat {
    /// A summary: IDs, validity, serials. No key.
    #[default]
    Text,
    /// Certificates as PEM inside JSON. No key.
    Json,
    /// The chain, the PRIVATE KEY and the bundle as PEM.
    Pem,
}

/// `agentmesh svid fetch` flags.
#[derive(Debug, Clone, Args)]
pub struct SvidFetchArgs {
    /// The Workload API: unix:///path, unix:/path or a path [default: $SPIFFE_ENDPOINT_SOCKET]
    #[arg(long, value_name = "PATH", env = WORKLOAD_SOCKET_ENV)]
    pub socket: Option<String>,
    /// Output format; only pem prints the private key
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: SvidFormat,
    /// Also write svid.N.pem, svid.N.key (mode 0600) and bundle.N.pem into DIR
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
    /// How long to wait for the node
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub timeout: String,
}

/// One SVID in `svid fetch -o json`. There is deliberately no key.
#[derive(Debug, Serialize)]
pub struct SvidJson {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// The chain, leaf first, as PEM.
    pub chain_pem: String,
    /// The Workload API's hint, often empty.
    pub hint: String,
}

/// `svid fetch -o json`.
#[derive(Debug, Serialize)]
pub struct SvidFetchJson {
    /// Every SVID the node issued to this process.
    pub svids: Vec<SvidJson>,
    /// The trust domain's roots as PEM.
    pub bundle_pem: String,
}

/// One SVID, decoded.
struct Decoded {
    spiffe_id: String,
    hint: String,
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    bundle: Vec<Vec<u8>>,
    serial: String,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
}

fn decode(i: usize, s: X509svid) -> anyhow::Result<Decoded> {
    let chain = split_der_certs(&s.x509_svid)
        .with_context(|| format!("SVID #{i} ({}): bad x509_svid", s.spiffe_id))?;
    let leaf = chain
        .first()
        .with_context(|| format!("SVID #{i} ({}) has no certificate", s.spiffe_id))?;
    let (not_before, not_after) = agentmesh_ca::cert_validity(leaf)
        .with_context(|| format!("SVID #{i} ({})", s.spiffe_id))?;
    let serial = agentmesh_ca::cert_serial_hex(leaf)
        .with_context(|| format!("SVID #{i} ({})", s.spiffe_id))?;
    let bundle = split_der_certs(&s.bundle)
        .with_context(|| format!("SVID #{i} ({}): bad bundle", s.spiffe_id))?;
    if s.x509_svid_key.is_empty() {
        anyhow::bail!("SVID #{i} ({}) came without its private key", s.spiffe_id);
    }
    Ok(Decoded {
        spiffe_id: s.spiffe_id,
        hint: s.hint,
        chain,
        key_der: s.x509_svid_key,
        bundle,
        serial,
        not_before,
        not_after,
    })
}

fn text(svids: &[Decoded], elapsed: Duration) -> String {
    let mut out = String::new();
    let n = svids.len();
    let _ = writeln!(
        out,
        "Received {n} {} after {}",
        if n == 1 { "svid" } else { "svids" },
        humantime::format_duration(Duration::from_millis(
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        ))
    );
    for s in svids {
        out.push('\n');
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(out, "{k:<18}: {v}");
        };
        line("SPIFFE ID", &s.spiffe_id);
        if !s.hint.is_empty() {
            line("Hint", &s.hint);
        }
        line("Serial", &s.serial);
        line("SVID Valid After", &rfc3339(s.not_before));
        line("SVID Valid Until", &rfc3339(s.not_after));
        line("Chain length", &s.chain.len().to_string());
        line("Bundle CAs", &s.bundle.len().to_string());
        for (i, ca) in s.bundle.iter().enumerate() {
            if let Ok((nb, na)) = agentmesh_ca::cert_validity(ca) {
                line(&format!("CA #{} Valid After", i + 1), &rfc3339(nb));
                line(&format!("CA #{} Valid Until", i + 1), &rfc3339(na));
            }
        }
    }
    out
}

fn pem(svids: &[Decoded]) -> String {
    let mut out = String::new();
    for s in svids {
        out.push_str(&certs_pem(&s.chain));
        out.push_str(&agentmesh_ca::pem_encode("PRIVATE KEY", &s.key_der));
    }
    if let Some(first) = svids.first() {
        out.push_str(&certs_pem(&first.bundle));
    }
    out
}

/// Writes `svid.N.pem`, `svid.N.key` (0600, atomic) and `bundle.N.pem` into `dir`, and
/// returns one line per SVID saying what went where.
fn write_files(dir: &Path, svids: &[Decoded]) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut said = Vec::new();
    for (i, s) in svids.iter().enumerate() {
        let chain = dir.join(format!("svid.{i}.pem"));
        let key = dir.join(format!("svid.{i}.key"));
        let bundle = dir.join(format!("bundle.{i}.pem"));
        std::fs::write(&chain, certs_pem(&s.chain))
            .with_context(|| format!("cannot write {}", chain.display()))?;
        agentmesh_ca::write_secret_file(
            &key,
            agentmesh_ca::pem_encode("PRIVATE KEY", &s.key_der).as_bytes(),
        )
        .with_context(|| format!("cannot write {}", key.display()))?;
        std::fs::write(&bundle, certs_pem(&s.bundle))
            .with_context(|| format!("cannot write {}", bundle.display()))?;
        said.push(format!(
            "Wrote SVID #{i} ({}): chain to {}, key to {} (mode 0600), bundle to {}",
            s.spiffe_id,
            chain.display(),
            key.display(),
            bundle.display()
        ));
    }
    Ok(said)
}

/// Runs `agentmesh svid ...`.
///
/// # Errors
/// No socket, no node, a refusal from the node (printed as `<Code>: <message>`), a timeout,
/// or a file that cannot be written.
pub async fn run(cmd: SvidCommand) -> anyhow::Result<()> {
    let SvidCommand::Fetch(args) = cmd;
    let socket = require_workload_socket(args.socket.as_deref())?;
    let timeout = parse_duration("--timeout", &args.timeout)?;
    let started = Instant::now();
    let fetch = async {
        let mut client = workload::connect(&socket).await?;
        let mut stream = client
            .fetch_x509svid(workload::request(X509svidRequest {}))
            .await
            .map_err(workload::status_error)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(workload::status_error)?
            .context("the node closed the FetchX509SVID stream without sending anything")
    };
    let response = tokio::time::timeout(timeout, fetch).await.map_err(|_| {
        anyhow::anyhow!(
            "no X.509-SVID from {} within {}; is the node attested and ready? (raise --timeout to wait longer)",
            socket.display(),
            humantime::format_duration(timeout)
        )
    })??;
    let elapsed = started.elapsed();
    if response.svids.is_empty() {
        anyhow::bail!("the node at {} sent no SVIDs", socket.display());
    }
    let svids = response
        .svids
        .into_iter()
        .enumerate()
        .map(|(i, s)| decode(i, s))
        .collect::<anyhow::Result<Vec<_>>>()?;

    match args.output {
        SvidFormat::Text => print!("{}", text(&svids, elapsed)),
        SvidFormat::Json => print_json(&SvidFetchJson {
            bundle_pem: certs_pem(&svids[0].bundle),
            svids: svids
                .iter()
                .map(|s| SvidJson {
                    spiffe_id: s.spiffe_id.clone(),
                    serial: s.serial.clone(),
                    not_before: rfc3339(s.not_before),
                    not_after: rfc3339(s.not_after),
                    chain_pem: certs_pem(&s.chain),
                    hint: s.hint.clone(),
                })
                .collect(),
        })?,
        SvidFormat::Pem => print!("{}", pem(&svids)),
    }
    if let Some(dir) = &args.write {
        for line in write_files(dir, &svids)? {
            // Keep stdout machine-readable for json and pem.
            if args.output == SvidFormat::Text {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
    Ok(())
}
