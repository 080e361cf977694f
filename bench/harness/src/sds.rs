//! `sds`: how long a rotated X.509-SVID takes to be in a real Envoy. A real server and node
//! (release build), one entry with a 10 s TTL (`unix:uid:<bench uid>`, so the bench process and
//! Envoy are both entitled to it), and Envoy 1.40 running the shipped bootstrap,
//! examples/envoy/envoy.yaml, with its certificate over SDS from the node.
//!
//! Each sample: the moment the node pushes the rotated SVID on the bench's own FetchX509SVID
//! stream (the node publishes one snapshot to every stream, SDS or Workload API) until Envoy's
//! admin `/certs` (polled every 1 ms) shows the new serial. The node decides to rotate on its
//! 250 ms mint tick, which the sample leaves out. The peer figure is SPIRE's, cited: its agent
//! looks for SVIDs to rotate on its sync with the server, every 5 s by default
//! (`sync_interval`), so a rotation waits up to one sync interval before Envoy can be told.

use std::path::Path;
use std::time::{Duration, Instant};

use agentmesh_proto::v1;
use anyhow::{Context, bail};

use crate::load::http_get;
use crate::propagation::{ControlPlane, TRUST_DOMAIN};
use crate::report::{Table, micros, quantile};
use crate::scale::{Proc, fetch_x509, free_port, my_uid, poll};

/// The TTL under test; the node rotates at ½ ± 10%, so about every 5 s.
const TTL_SECONDS: i64 = 10;

/// Runs the benchmark for `rotations` rotations.
///
/// # Errors
/// Any process failing to start or answer, or Envoy missing a rotation.
pub fn run(agentmesh: &Path, envoy: &Path, rotations: usize) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, envoy, rotations))
}

/// A serial as hex with no leading zeros, lowercase: how Envoy and agentmesh print one differ.
fn normalize(serial: &str) -> String {
    let s = serial.trim().to_ascii_lowercase().replace(':', "");
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// The leaf serials Envoy's `/certs` shows.
async fn envoy_serials(admin: &str) -> Vec<String> {
    let Some((200, body)) = http_get(admin, "/certs").await else {
        return Vec::new();
    };
    let Some(json) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .or_else(|| serde_json::from_str(&dechunk(&body)?).ok())
    else {
        return Vec::new();
    };
    json["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cert_chain"][0]["serial_number"].as_str())
        .map(normalize)
        .collect()
}

/// The body of a chunked HTTP/1.1 response (`http_get` reads the raw bytes).
fn dechunk(body: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, tail) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(tail.get(..n)?);
        rest = tail.get(n + 2..)?;
    }
}

async fn run_async(agentmesh: &Path, envoy: &Path, rotations: usize) -> anyhow::Result<Table> {
    let mut plane = ControlPlane::start(agentmesh).await?;
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/web");
    plane
        .admin
        .create_entry(v1::CreateEntryRequest {
            entry: Some(v1::Entry {
                spiffe_id: spiffe_id.clone(),
                selectors: vec![format!("unix:uid:{}", my_uid()?)],
                x509_ttl_seconds: TTL_SECONDS,
                ..Default::default()
            }),
        })
        .await
        .context("CreateEntry")?;
    let socket = plane.workload_socket();
    let lay = &plane.lay;

    let admin = format!("127.0.0.1:{}", free_port()?);
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/envoy/envoy.yaml"),
    )
    .context("reading examples/envoy/envoy.yaml")?;
    let port = || free_port().map(|p| p.to_string());
    let vars = [
        ("ENVOY_NODE_ID", "web".to_owned()),
        (
            "ENVOY_ADMIN_PORT",
            admin.rsplit(':').next().unwrap_or("0").to_owned(),
        ),
        ("INBOUND_PORT", port()?),
        ("INBOUND_ALLOWED_ID", spiffe_id.clone()),
        ("APP_PORT", port()?),
        ("OUTBOUND_PORT", port()?),
        ("UPSTREAM_PORT", port()?),
        ("UPSTREAM_ID", spiffe_id.clone()),
        ("AGENTMESH_SOCKET", socket.display().to_string()),
    ];
    let mut yaml = template;
    for (k, v) in &vars {
        yaml = yaml.replace(&format!("${{{k}}}"), v);
    }
    let config = lay.path("envoy.yaml");
    std::fs::write(&config, yaml)?;
    let mut envoy_proc = Proc::spawn(
        "envoy",
        envoy,
        &[
            "-c",
            &config.display().to_string(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
        &lay.path("envoy.log"),
    )?;

    let mut stream = poll(
        "the SVID from the node",
        Duration::from_secs(60),
        || async { fetch_x509(&socket).await?.ok() },
    )
    .await?
    .into_inner();
    let serial_of = |msg: &agentmesh_proto::workload::X509svidResponse| -> anyhow::Result<String> {
        let svid = msg
            .svids
            .iter()
            .find(|s| s.spiffe_id == spiffe_id)
            .context("no SVID for the entry")?;
        let chain = agentmesh_ca::split_der_certs(&svid.x509_svid)?;
        Ok(normalize(&agentmesh_ca::cert_serial_hex(
            chain.first().context("an empty chain")?,
        )?))
    };
    let first = stream.message().await?.context("the stream ended")?;
    let mut current = serial_of(&first)?;
    poll("Envoy's first certificate", Duration::from_secs(60), || {
        let (admin, current) = (admin.clone(), current.clone());
        async move { envoy_serials(&admin).await.contains(&current).then_some(()) }
    })
    .await
    .with_context(|| format!("see {}", lay.path("envoy.log").display()))?;
    envoy_proc.check_alive()?;

    let mut samples = Vec::with_capacity(rotations);
    while samples.len() < rotations {
        let msg = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("no rotation within 60 s")??
            .context("the stream ended")?;
        let serial = serial_of(&msg)?;
        if serial == current {
            continue;
        }
        let rotated = Instant::now();
        current = serial;
        loop {
            if envoy_serials(&admin).await.contains(&current) {
                break;
            }
            if rotated.elapsed() > Duration::from_secs(30) {
                bail!("Envoy did not show serial {current} within 30 s of the rotation");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(rotated.elapsed());
        eprintln!("bench sds: rotation {}/{rotations}", samples.len());
    }
    envoy_proc.check_alive()?;
    samples.sort();
    let mut table = Table::new(format!(
        "sds: rotation → new serial in Envoy's /certs ({rotations} rotations, {TTL_SECONDS} s TTL)"
    ));
    table.row(
        "p50",
        micros(quantile(&samples, 0.50)),
        "SPIRE: up to 5 s (agent sync_interval, cited)",
        "n/a",
        "",
    );
    table.row(
        "p99",
        micros(quantile(&samples, 0.99)),
        "SPIRE: up to 5 s (agent sync_interval, cited)",
        "n/a",
        "< 1 s",
    );
    table.row(
        "max",
        micros(*samples.last().unwrap_or(&Duration::ZERO)),
        "",
        "",
        "",
    );
    table.row(
        "rotation decision (not in the samples)",
        "≤ 250 ms mint tick",
        "≤ 5 s sync_interval",
        "n/a",
        "",
    );
    table.note("Each sample: the node's push of the rotated SVID on the bench's FetchX509SVID stream → the new serial in Envoy 1.40's admin /certs (polled every 1 ms), over SDS on the node's socket with the shipped examples/envoy/envoy.yaml. Envoy applies a pushed secret to its listener and cluster before /certs shows it.");
    Ok(table)
}
