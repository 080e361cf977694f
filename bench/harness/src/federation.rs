//! `federation`: how long a root rotation in one trust domain takes to reach the workloads of
//! a federated trust domain, agentmesh against SPIRE v1.13.3 in the same run and at the same
//! refresh hints.
//!
//! ```text
//! source domain A (rotates its root)          federated domain B
//!   server ── bundle endpoint (https_spiffe) ◀── B's server fetches ── B's node/agent ── watcher
//!                 ▲ poller (first seen: t0)                               (first seen: t1)
//! ```
//!
//! Each side is a pair of domains: A's server alone, rotating its root about every 70 s
//! (agentmesh `--root-ttl 100s`, the next root at 2/3 of its life; SPIRE `ca_ttl = "140s"`,
//! the next CA prepared at half its life on SPIRE's 10 s rotation tick), and B's server with a
//! node (SPIRE: an agent), federating with A over `https_spiffe`, bootstrapped by hand as an
//! operator would. The watcher is a workload of B whose entry federates with A; it holds one
//! `FetchX509SVID` stream open, the stream B's proxies read their federated bundles from. A
//! sample is one new root of A: from the first time A's bundle endpoint serves it (polled
//! every [`POLL`], authenticated with the roots seen so far) to the first message on the
//! watcher's stream that carries it.
//!
//! The rotation period is chosen not to be a multiple of the 15 s fetch interval (a 60 s hint
//! polled four times): with a one-minute rotation every sample would land at the same point of
//! B's fetch cycle, and the figures would show that phase rather than the wait.
//!
//! Both sides fetch four times per refresh hint, so the figures follow the hint; SPIRE counts
//! a hint under a minute as a minute, which the short-hint pairs show.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::SpiffeBundle;
use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::propagation::ControlPlane;
use crate::report::{Table, quantile, ratio};
use crate::scale::{cli, fetch_x509, free_port, my_uid};
use crate::spire::Spire;

/// How often the poller reads the source domain's bundle endpoint: the resolution of `t0`.
const POLL: Duration = Duration::from_millis(100);
/// The refresh hints both sides are measured at: SPIRE's floor, and one under it.
const HINTS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(5)];
/// How often a source domain rotates its root, at most (agentmesh about every 67 s, SPIRE 70 s).
const CYCLE: Duration = Duration::from_secs(70);

/// Runs the comparison: `rotations` new roots per pair.
///
/// # Errors
/// Any process failing to start or answer, or a pair not delivering `rotations` roots in time.
pub fn run(agentmesh: &Path, spire_bin: &Path, rotations: usize) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, spire_bin, rotations))
}

/// Where a pair's source domain serves its bundle and where its federated workload listens.
struct Pair {
    label: String,
    /// The source domain's bundle endpoint.
    url: String,
    /// The SPIFFE ID its certificate carries.
    endpoint_id: SpiffeId,
    /// The source domain's roots when the pair started (not samples).
    initial_roots: Vec<Vec<u8>>,
    /// The watcher's Workload API (B's node or agent).
    workload_socket: PathBuf,
    /// The processes, stopped on drop.
    _keep: Box<dyn Send>,
}

/// `refresh_hint` as both configs spell it.
fn hint_text(hint: Duration) -> String {
    format!("{}s", hint.as_secs())
}

/// agentmesh: A (server alone, short-lived roots, a bundle endpoint) and B (server with a
/// node, federating with A), and a watcher entry in B.
async fn agentmesh_pair(agentmesh: &Path, hint: Duration) -> anyhow::Result<Pair> {
    let (td_a, td_b) = ("a.agentmesh.test", "b.agentmesh.test");
    let port = free_port()?;
    let config_a = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config_a.path(),
        format!(
            "[federation]\nbundle_endpoint = {{ listen = \"127.0.0.1:{port}\", profile = \"https_spiffe\", refresh_hint = \"{}\" }}\n",
            hint_text(hint)
        ),
    )?;
    let a = ControlPlane::start_domain(
        agentmesh,
        td_a,
        &[
            "--config",
            &config_a.path().display().to_string(),
            "--root-ttl",
            "100s",
            "--intermediate-ttl",
            "40s",
            "--default-x509-ttl",
            "10s",
            "--default-jwt-ttl",
            "10s",
            "--node-svid-ttl",
            "20s",
        ],
        false,
    )
    .await?;
    let config_b = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config_b.path(),
        format!(
            "[[federation.federates_with]]\ntrust_domain = \"{td_a}\"\nurl = \"https://127.0.0.1:{port}/\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{td_a}/agentmesh/server\"\n"
        ),
    )?;
    let b = ControlPlane::start_domain(
        agentmesh,
        td_b,
        &["--config", &config_b.path().display().to_string()],
        true,
    )
    .await?;
    let (a_admin, b_admin) = (
        a.lay.admin_socket.display().to_string(),
        b.lay.admin_socket.display().to_string(),
    );
    let doc = cli(
        &a.lay.bin,
        &a.lay
            .admin_args(&["bundle", "show", "-o", "spiffe"], &a_admin),
    )?;
    let doc_file = b.lay.path("a.bundle.json");
    std::fs::write(&doc_file, &doc)?;
    let a_id = format!("spiffe://{td_a}");
    cli(
        &b.lay.bin,
        &b.lay.admin_args(
            &[
                "bundle",
                "set",
                "--id",
                &a_id,
                "--path",
                &doc_file.display().to_string(),
            ],
            &b_admin,
        ),
    )?;
    cli(
        &b.lay.bin,
        &b.lay.admin_args(
            &[
                "entry",
                "create",
                "--spiffe-id",
                &format!("spiffe://{td_b}/watcher"),
                "--selector",
                &format!("unix:uid:{}", my_uid()?),
                "--federates-with",
                &a_id,
            ],
            &b_admin,
        ),
    )?;
    let initial_roots = SpiffeBundle::from_json(doc.as_bytes())
        .context("agentmesh bundle show -o spiffe")?
        .x509_authorities;
    Ok(Pair {
        label: format!("agentmesh, hint {}", hint_text(hint)),
        url: format!("https://127.0.0.1:{port}/"),
        endpoint_id: SpiffeId::new(&format!("spiffe://{td_a}/agentmesh/server"))?,
        initial_roots,
        workload_socket: b.workload_socket(),
        _keep: Box::new((b, a, config_a, config_b)),
    })
}

/// SPIRE: A (server alone, `ca_ttl = "120s"`, a bundle endpoint) and B (server and agent,
/// `federates_with` A), and a watcher entry in B.
async fn spire_pair(spire_bin: &Path, hint: Duration) -> anyhow::Result<Pair> {
    let (td_a, td_b) = ("a.spire.test", "b.spire.test");
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let a = Spire::start_domain(
        spire_bin,
        &dir.path().join("a"),
        td_a,
        &format!(
            r#"  ca_ttl = "140s"
  default_x509_svid_ttl = "10s"
  default_jwt_svid_ttl = "10s"
  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {port}
      refresh_hint = "{}"
    }}
  }}"#,
            hint_text(hint)
        ),
        false,
    )
    .await?;
    let b = Spire::start_domain(
        spire_bin,
        &dir.path().join("b"),
        td_b,
        &format!(
            r#"  federation {{
    federates_with "{td_a}" {{
      bundle_endpoint_url = "https://127.0.0.1:{port}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{td_a}/spire/server"
      }}
    }}
  }}"#
        ),
        true,
    )
    .await?;
    let doc = a.server(&["bundle", "show", "-format", "spiffe"])?;
    let doc_file = dir.path().join("a.bundle.json");
    std::fs::write(&doc_file, &doc)?;
    let a_id = format!("spiffe://{td_a}");
    b.server(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        &a_id,
        "-path",
        &doc_file.display().to_string(),
    ])?;
    b.server(&[
        "entry",
        "create",
        "-parentID",
        &format!("spiffe://{td_b}/host"),
        "-spiffeID",
        &format!("spiffe://{td_b}/watcher"),
        "-selector",
        &format!("unix:uid:{}", my_uid()?),
        "-federatesWith",
        &a_id,
    ])?;
    let initial_roots = SpiffeBundle::from_json(doc.as_bytes())
        .context("spire-server bundle show -format spiffe")?
        .x509_authorities;
    Ok(Pair {
        label: format!("SPIRE, hint {}", hint_text(hint)),
        url: format!("https://127.0.0.1:{port}/"),
        endpoint_id: SpiffeId::new(&format!("spiffe://{td_a}/spire/server"))?,
        initial_roots,
        workload_socket: b.socket(),
        _keep: Box::new((b, a, dir)),
    })
}

/// When each new root of a pair was first seen at the source's endpoint and at the watcher.
#[derive(Default)]
struct Seen {
    at_endpoint: HashMap<Vec<u8>, Instant>,
    at_watcher: HashMap<Vec<u8>, Instant>,
}

impl Seen {
    /// The samples so far: roots seen at both ends, watcher time minus endpoint time (zero if
    /// the watcher was faster than one poll).
    fn samples(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .at_endpoint
            .iter()
            .filter_map(|(root, t0)| {
                self.at_watcher
                    .get(root)
                    .map(|t1| t1.saturating_duration_since(*t0))
            })
            .collect();
        out.sort();
        out
    }
}

/// Reads the source's bundle endpoint every [`POLL`], authenticating it with every root seen
/// so far (a new root joins the bundle before it signs, on both sides), and records when each
/// new root first appears.
async fn poll_endpoint(pair: &Pair, seen: Arc<Mutex<Seen>>) -> anyhow::Result<()> {
    let initial: HashSet<Vec<u8>> = pair.initial_roots.iter().cloned().collect();
    let mut trusted = pair.initial_roots.clone();
    let mut settings = agentmesh_proto::https::ClientSettings::new(
        "agentmesh-bench",
        Duration::from_secs(5),
        1 << 20,
    );
    settings.timeout = Some(Duration::from_secs(5));
    let mut failures = 0_u32;
    let client_for = |trusted: &[Vec<u8>]| -> anyhow::Result<agentmesh_proto::https::HttpClient> {
        let roots: Vec<_> = trusted
            .iter()
            .cloned()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let tls = agentmesh_tls::client_config(
            None,
            &roots,
            agentmesh_tls::exact([pair.endpoint_id.clone()]),
            &[],
        )?;
        Ok(agentmesh_proto::https::HttpClient::new(
            (*tls).clone(),
            settings.clone(),
        ))
    };
    // Rebuilt only when a new root joins the trusted set.
    let mut client = client_for(&trusted)?;
    loop {
        match client
            .request(Method::GET, &pair.url, Vec::new(), Bytes::new())
            .await
        {
            Ok((StatusCode::OK, body)) => {
                failures = 0;
                let now = Instant::now();
                let bundle = SpiffeBundle::from_json(&body)
                    .with_context(|| format!("{}: the bundle endpoint's answer", pair.label))?;
                let mut grew = false;
                {
                    let mut seen = seen.lock().expect("seen lock");
                    for root in bundle.x509_authorities {
                        if !trusted.contains(&root) {
                            trusted.push(root.clone());
                            grew = true;
                        }
                        if !initial.contains(&root) {
                            seen.at_endpoint.entry(root).or_insert(now);
                        }
                    }
                }
                if grew {
                    client = client_for(&trusted)?;
                }
            }
            other => {
                failures += 1;
                if failures > 50 {
                    bail!(
                        "{}: the bundle endpoint keeps failing: {other:?}",
                        pair.label
                    );
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Holds the watcher's `FetchX509SVID` stream open (reopening it if it ends) and records when
/// each root of a federated bundle first arrives.
async fn watch_workload_api(pair: &Pair, seen: Arc<Mutex<Seen>>) -> anyhow::Result<()> {
    let initial: HashSet<Vec<u8>> = pair.initial_roots.iter().cloned().collect();
    loop {
        let mut stream = match fetch_x509(&pair.workload_socket).await {
            Some(Ok(resp)) => resp.into_inner(),
            // Not listening or not registered yet (the entry is new): ask again shortly.
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Ok(Some(msg)) = stream.message().await {
            let now = Instant::now();
            let mut seen = seen.lock().expect("seen lock");
            for der in msg.federated_bundles.values() {
                for root in agentmesh_tls::split_der_certs(der).unwrap_or_default() {
                    if !initial.contains(&root) {
                        seen.at_watcher.entry(root).or_insert(now);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Measures one pair until it has `rotations` samples.
async fn measure(pair: Pair, rotations: usize) -> anyhow::Result<(String, Vec<Duration>)> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    // A rotation per cycle, then up to a fetch interval and an agent sync.
    let deadline = CYCLE * (rotations as u32 + 3) + Duration::from_secs(120);
    let done = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let samples = seen.lock().expect("seen lock").samples();
            if samples.len() >= rotations {
                return samples;
            }
        }
    };
    tokio::select! {
        r = poll_endpoint(&pair, seen.clone()) => r.map(|()| unreachable!("the poller only returns on failure")),
        r = watch_workload_api(&pair, seen.clone()) => r.map(|()| unreachable!("the watcher only returns on failure")),
        samples = done => Ok((pair.label.clone(), samples)),
        () = tokio::time::sleep(deadline) => {
            let seen = seen.lock().expect("seen lock");
            bail!(
                "{}: {} of {rotations} rotations arrived within {deadline:?} ({} new roots at the endpoint, {} at the watcher)",
                pair.label,
                seen.samples().len(),
                seen.at_endpoint.len(),
                seen.at_watcher.len()
            )
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn run_async(agentmesh: &Path, spire_bin: &Path, rotations: usize) -> anyhow::Result<Table> {
    for tool in ["spire-server", "spire-agent"] {
        if !spire_bin.join(tool).is_file() {
            bail!(
                "{tool} is missing in {}; scripts/build-spire builds SPIRE from the Go module proxy",
                spire_bin.display()
            );
        }
    }
    let mut pairs = Vec::new();
    for hint in HINTS {
        pairs.push(agentmesh_pair(agentmesh, hint).await?);
        pairs.push(spire_pair(spire_bin, hint).await?);
    }
    let results =
        futures::future::try_join_all(pairs.into_iter().map(|p| measure(p, rotations))).await?;
    let mut table = Table::new(format!(
        "federation: a root rotation in one trust domain until the other domain's workloads hold it, agentmesh vs SPIRE v1.13.3, same run ({rotations} rotations per pair)"
    ));
    for (hint, pair) in HINTS.iter().zip(results.chunks(2)) {
        let [(_, ours), (_, spire)] = pair else {
            unreachable!("two pairs per hint")
        };
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (o, s) = (quantile(ours, q), quantile(spire, q));
            table.row(
                format!("refresh hint {}: {name}", hint_text(*hint)),
                secs(o),
                secs(s),
                ratio(o.as_secs_f64(), s.as_secs_f64()),
                "—",
            );
        }
        let worst = |v: &[Duration]| v.last().copied().unwrap_or_default();
        table.row(
            format!("refresh hint {}: slowest", hint_text(*hint)),
            secs(worst(ours)),
            secs(worst(spire)),
            ratio(worst(ours).as_secs_f64(), worst(spire).as_secs_f64()),
            "—",
        );
    }
    table.note(format!(
        "Each side: domain A's server alone rotates its root about every 70 s (agentmesh \
         `--root-ttl 100s`; SPIRE `ca_ttl = \"140s\"`; not a multiple of the 15 s fetch \
         interval, so samples fall at different points of B's fetch cycle) and serves its bundle over `https_spiffe` \
         with the refresh hint of the row; domain B's server federates with A (bootstrapped \
         with `bundle set`) and a workload of B whose entry federates with A holds one \
         `FetchX509SVID` stream on B's node (SPIRE: agent). A sample is one new root: from the \
         first time A's endpoint serves it (polled every {} ms) to the first stream message \
         carrying it. Both fetch four times per hint; SPIRE counts a hint under 1 min as 1 min \
         and its agent syncs with its server every 5 s, where our server pushes to its nodes. \
         With {rotations} samples, p99 is the slowest.",
        POLL.as_millis()
    ));
    Ok(table)
}
