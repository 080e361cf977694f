//! `gateway`: the latency an LLM gateway adds, for `agentmesh gateway run` and for the LiteLLM
//! proxy, each in front of the same OpenAI-compatible upstream (the bench app, which answers
//! a fixed `chat.completion` at once) in the same run, at a fixed request rate, driven by the
//! one load tool ([`crate::load`]).
//!
//! ```text
//! load ─▶ upstream                     (direct: the baseline)
//! load ─▶ agentmesh gateway ─▶ upstream
//! load ─▶ LiteLLM proxy     ─▶ upstream
//! ```
//!
//! The agentmesh gateway normally sits behind its inbound proxy, which verifies the caller's
//! SVID and sets `x-forwarded-client-cert`. Here the load tool sends that header itself,
//! straight to the gateway's plain listener (a Unix socket: on TCP the gateway trusts no
//! caller's XFCC), so the figure is the gateway's own, as the
//! published anchor (agentgateway against LiteLLM) measures gateways.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::header::{HeaderName, HeaderValue};

use crate::load::{self, Call, Endpoint, MODEL, best_of, http_get};
use crate::report::{Table, count, mib, micros, quantile, ratio};
use crate::scale::{Memory, Proc, SETTLE, clock_ticks, cpu_time, free_port, memory, poll};

/// Keep-alive connections the fixed rate is spread over: enough that a target answering in
/// tens of milliseconds still gets the offered rate.
const CONNECTIONS: usize = 64;
/// Each latency run is made this many times per target, alternating targets; the run with
/// the lowest p99 counts.
const ROUNDS: usize = 2;
/// The rate of the published anchor; measured too when `--rate` is another.
const ANCHOR_RATE: f64 = 3000.0;
/// agentgateway's published added p99 at 3,000 qps, and LiteLLM's in the same measurement.
const ANCHOR_P99_MS: (f64, f64) = (0.436, 30.6);
/// Our added p99 must be at most this fraction of LiteLLM's.
const TARGET_P99_RATIO: f64 = 0.05;
/// The LiteLLM release `bench/run` installs (keep in step with it).
const LITELLM_VERSION: &str = "1.103.0";
/// The caller the load tool names in `x-forwarded-client-cert`, as the gateway's proxy would.
pub(crate) const XFCC: &str = "By=spiffe://agentmesh.local/ns/default/sa/gateway;URI=spiffe://agentmesh.local/ns/default/sa/bench";
/// LiteLLM's own variable for its number of workers (default 1); passed through when set.
const WORKERS_ENV: &str = "DEFAULT_NUM_WORKERS_LITELLM_PROXY";
/// How long a gateway may take to answer its first request after it was started.
const START_PATIENCE: Duration = Duration::from_secs(180);

/// How the benchmark is sized.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Length of each timed run.
    pub seconds: f64,
    /// Requests per second offered to every target. The default, 50, keeps LiteLLM's one
    /// worker about half busy on the 2-core machine here (about 9.5 ms of CPU a request; it
    /// saturates at 150–200 req/s), so its latency is not its own queue.
    pub rate: f64,
}

/// Runs the benchmark against the release binary `agentmesh` and the `litellm` command.
///
/// # Errors
/// Any process failing to start or answer.
pub fn run(agentmesh: &Path, litellm: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, litellm, sizes))
}

/// One target of the latency runs.
#[derive(Debug, Clone)]
struct Target {
    addr: Endpoint,
    /// The process whose CPU time (with its descendants') is read around each run.
    pid: Option<u32>,
}

/// The best latency run of one target at one rate.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    samples: usize,
    errors: u64,
    /// Completed requests per second.
    sustained: f64,
    /// CPU time of the target per completed request.
    cpu_per_request: Duration,
}

/// The gateway's config: one OpenAI provider, the upstream, for one model and every caller.
pub(crate) fn gateway_toml(listen: &Endpoint, upstream: SocketAddr) -> String {
    format!(
        r#"listen = "{listen}"

[[provider]]
name = "upstream"
kind = "openai"
url = "http://{upstream}/v1"
api_key = "bench"

[[model]]
name = "{MODEL}"
providers = ["upstream"]

[[caller]]
id = "*"
models = ["*"]
"#
    )
}

fn litellm_yaml(upstream: SocketAddr) -> String {
    format!(
        r#"model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://{upstream}/v1
      api_key: bench
litellm_settings:
  telemetry: false
"#
    )
}

/// The sum of VmRSS and of VmHWM of `pid` and all its descendants (LiteLLM may run workers).
pub(crate) fn tree_memory(pid: u32) -> anyhow::Result<Memory> {
    let mut total = Memory { rss: 0.0, hwm: 0.0 };
    for p in descendants(pid) {
        if let Ok(m) = memory(p) {
            total.rss += m.rss;
            total.hwm += m.hwm;
        }
    }
    Ok(total)
}

/// CPU time of `pid` and all its descendants.
fn tree_cpu(pid: u32, ticks: f64) -> Duration {
    descendants(pid)
        .into_iter()
        .filter_map(|p| cpu_time(p, ticks).ok())
        .sum()
}

/// `pid` and every process below it.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name: state, then ppid.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Waits until `call` through `addr` is answered as expected; how long that took from `since`.
pub(crate) async fn first_answer(
    what: &str,
    addr: impl Into<Endpoint>,
    call: &Call,
    since: Instant,
    proc: &mut Proc,
    log: &Path,
) -> anyhow::Result<Duration> {
    let addr: Endpoint = addr.into();
    let answered = poll(what, START_PATIENCE, || {
        let alive = proc.check_alive().is_ok();
        let addr = addr.clone();
        async move {
            if !alive {
                return Some(false);
            }
            load::saturate(addr.clone(), call, 1, Duration::from_millis(20))
                .await
                .ok()
                .filter(|t| t.errors == 0 && t.per_second > 0.0)
                .map(|_| true)
        }
    })
    .await
    .with_context(|| format!("no answer from {what}: see {}", log.display()))?;
    if !answered {
        proc.check_alive()
            .with_context(|| format!("see {}", log.display()))?;
    }
    Ok(since.elapsed())
}

async fn latency(
    targets: &[Target],
    call: &Call,
    rate: f64,
    secs: Duration,
) -> anyhow::Result<Vec<Latency>> {
    let ticks = clock_ticks();
    best_of(
        targets,
        ROUNDS,
        |t| async move {
            let cpu = || t.pid.map_or(Duration::ZERO, |p| tree_cpu(p, ticks));
            let before = cpu();
            let (samples, errors) =
                load::fixed_rate(t.addr.clone(), call, CONNECTIONS, rate, secs).await?;
            let used = cpu().saturating_sub(before);
            if samples.is_empty() {
                bail!("no request to {} completed at {rate} req/s", t.addr);
            }
            Ok(Latency {
                p50: quantile(&samples, 0.50),
                p99: quantile(&samples, 0.99),
                samples: samples.len(),
                errors,
                sustained: samples.len() as f64 / secs.as_secs_f64(),
                cpu_per_request: used / samples.len() as u32,
            })
        },
        |run, best| run.p99 < best.p99,
    )
    .await
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn run_async(agentmesh: &Path, litellm: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    let agentmesh = agentmesh
        .canonicalize()
        .with_context(|| format!("no agentmesh binary at {}", agentmesh.display()))?;
    let litellm = litellm.canonicalize().with_context(|| {
        format!(
            "no litellm at {} (bench/run installs litellm[proxy])",
            litellm.display()
        )
    })?;
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let dir = tmp.path();
    let addr =
        || -> anyhow::Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
    let chat = Call::chat(vec![(
        HeaderName::from_static("x-forwarded-client-cert"),
        HeaderValue::from_static(XFCC),
    )]);

    // The upstream: the bench app, in its own process.
    let upstream = addr()?;
    let me = std::env::current_exe().context("the bench binary's path")?;
    let mut upstream_proc = Proc::spawn(
        "upstream",
        &me,
        &["app", "--listen", &upstream.to_string()],
        &dir.join("upstream.log"),
    )?;
    first_answer(
        "the upstream",
        upstream,
        &chat,
        Instant::now(),
        &mut upstream_proc,
        &dir.join("upstream.log"),
    )
    .await?;

    // agentmesh gateway.
    // On a Unix socket, as behind its sidecar: on TCP it trusts no caller's XFCC.
    let ours = Endpoint::Unix(dir.join("gateway.sock"));
    let config = dir.join("gateway.toml");
    std::fs::write(&config, gateway_toml(&ours, upstream))?;
    let log = dir.join("gateway.log");
    let started = Instant::now();
    let mut ours_proc = Proc::spawn(
        "agentmesh gateway",
        &agentmesh,
        &["gateway", "run", "--config", &config.display().to_string()],
        &log,
    )?;
    let ours_start = first_answer(
        "the agentmesh gateway",
        ours.clone(),
        &chat,
        started,
        &mut ours_proc,
        &log,
    )
    .await?;

    // LiteLLM, offline: the cost map from the package, no telemetry, no database, no UI.
    let peer = addr()?;
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, litellm_yaml(upstream))?;
    let log = dir.join("litellm.log");
    let mut cmd = Command::new(&litellm);
    cmd.args(["--config", &config.display().to_string()])
        .args(["--host", "127.0.0.1", "--port", &peer.port().to_string()])
        .args(["--telemetry", "False"])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_ADMIN_UI", "True")
        .env_remove("DATABASE_URL")
        .env_remove("OPENAI_API_KEY");
    let started = Instant::now();
    let mut peer_proc = Proc::spawn_command("LiteLLM proxy", cmd, &log)?;
    let peer_addr = peer.to_string();
    poll("LiteLLM's /health/readiness", START_PATIENCE, || async {
        matches!(
            http_get(&peer_addr, "/health/readiness").await,
            Some((200, _))
        )
        .then_some(())
    })
    .await
    .with_context(|| format!("LiteLLM did not get ready: see {}", log.display()))?;
    let peer_ready = started.elapsed();
    let peer_start = first_answer("LiteLLM", peer, &chat, started, &mut peer_proc, &log).await?;

    tokio::time::sleep(SETTLE).await;
    let (ours_pid, peer_pid) = (ours_proc.pid(), peer_proc.pid());
    let idle = [memory(ours_pid)?, tree_memory(peer_pid)?];
    let peer_processes = descendants(peer_pid).len();

    let targets = [
        Target {
            addr: upstream.into(),
            pid: None,
        },
        Target {
            addr: ours.clone(),
            pid: Some(ours_pid),
        },
        Target {
            addr: peer.into(),
            pid: Some(peer_pid),
        },
    ];
    let secs = Duration::from_secs_f64(sizes.seconds);
    let at_rate = latency(&targets, &chat, sizes.rate, secs).await?;
    let at_anchor = if sizes.rate == ANCHOR_RATE {
        None
    } else {
        Some(latency(&targets, &chat, ANCHOR_RATE, secs).await?)
    };
    let after = [memory(ours_pid)?, tree_memory(peer_pid)?];
    for p in [&mut upstream_proc, &mut ours_proc, &mut peer_proc] {
        p.check_alive()?;
    }

    let workers = match std::env::var(WORKERS_ENV) {
        Ok(n) => format!("{n} uvicorn workers, set by {WORKERS_ENV}"),
        Err(_) => "one uvicorn worker".to_owned(),
    };
    let mut table = Table::new(
        "gateway: agentmesh gateway vs LiteLLM proxy, each in front of the same upstream",
    );
    let mut errors = 0;
    for (rate, lat) in
        std::iter::once((sizes.rate, &at_rate)).chain(at_anchor.as_ref().map(|l| (ANCHOR_RATE, l)))
    {
        let direct = lat[0];
        let (ours, peer) = (lat[1], lat[2]); // latency runs, not addresses, from here on
        errors += lat.iter().map(|l| l.errors).sum::<u64>();
        let r = count(rate);
        let added = |l: Duration, base: Duration| l.saturating_sub(base);
        let (o50, p50) = (added(ours.p50, direct.p50), added(peer.p50, direct.p50));
        let (o99, p99) = (added(ours.p99, direct.p99), added(peer.p99, direct.p99));
        table.row(
            format!(
                "added latency p50 at {r} req/s (vs direct {})",
                micros(direct.p50)
            ),
            micros(o50),
            micros(p50),
            ratio(o50.as_secs_f64(), p50.as_secs_f64()),
            "",
        );
        table.row(
            format!(
                "added latency p99 at {r} req/s (vs direct {})",
                micros(direct.p99)
            ),
            micros(o99),
            micros(p99),
            ratio(o99.as_secs_f64(), p99.as_secs_f64()),
            format!("≤ {TARGET_P99_RATIO:.2}×"),
        );
        table.row(
            format!("latency p50 / p99 through the gateway at {r} req/s"),
            format!("{} / {}", micros(ours.p50), micros(ours.p99)),
            format!("{} / {}", micros(peer.p50), micros(peer.p99)),
            "",
            "",
        );
        table.row(
            format!(
                "throughput sustained at {r} req/s offered, req/s (direct: {})",
                count(direct.sustained)
            ),
            count(ours.sustained),
            count(peer.sustained),
            ratio(ours.sustained, peer.sustained),
            "",
        );
        table.row(
            format!("CPU time per request at {r} req/s (the gateway's processes)"),
            micros(ours.cpu_per_request),
            micros(peer.cpu_per_request),
            ratio(
                ours.cpu_per_request.as_secs_f64(),
                peer.cpu_per_request.as_secs_f64(),
            ),
            "",
        );
    }
    table.row(
        "RSS, idle after the first answer (VmRSS)",
        mib(idle[0].rss),
        mib(idle[1].rss),
        ratio(idle[0].rss, idle[1].rss),
        "",
    );
    table.row(
        "RSS after the load (VmRSS / peak VmHWM)",
        format!("{} / {}", mib(after[0].rss), mib(after[0].hwm)),
        format!("{} / {}", mib(after[1].rss), mib(after[1].hwm)),
        ratio(after[0].hwm, after[1].hwm),
        "",
    );
    table.row(
        "start → first chat completion answered",
        seconds(ours_start),
        seconds(peer_start),
        ratio(ours_start.as_secs_f64(), peer_start.as_secs_f64()),
        "",
    );
    table.row(
        "anchor, published (reference, not measured): agentgateway vs LiteLLM added p99 at 3,000 qps",
        format!("{} ms", ANCHOR_P99_MS.0),
        format!("{} ms", ANCHOR_P99_MS.1),
        ratio(ANCHOR_P99_MS.0, ANCHOR_P99_MS.1),
        "",
    );
    table.note(format!(
        "One run, one upstream: the bench app answering `POST /v1/chat/completions` at once with a fixed {}-byte `chat.completion` (with usage), over HTTP/1.1 keep-alive. Each target gets the same request (one short user turn for `{MODEL}`, with `x-forwarded-client-cert: {XFCC}`): the upstream directly, `agentmesh gateway run` (release build; one `openai` provider pointed at the upstream, one model, `[[caller]] id = \"*\"`, default DLP and audit line per call, on stdout into a file) and LiteLLM {LITELLM_VERSION} (`litellm --config` with one `openai/{MODEL}` deployment with `api_base` at the upstream; its defaults otherwise: {workers}, {peer_processes} process{} in all; offline: `LITELLM_LOCAL_MODEL_COST_MAP=True`, telemetry off, no database).",
        load::COMPLETION_LEN,
        if peer_processes == 1 { "" } else { "es" },
    ));
    table.note(format!(
        "The agentmesh gateway is measured on its plain listener (a Unix socket, where it trusts XFCC), without the inbound proxy that verifies callers' SVIDs in a mesh: the load tool sets the XFCC header that proxy would set. That is the gateway's own cost, as the anchor measures gateways; the proxy's own added latency is in the `proxy` table. Latency: {} req/s (and the anchor's {} req/s) on {CONNECTIONS} keep-alive connections on a fixed schedule for {} s per run, measured from the write of each request; added = through the gateway − direct at the same quantile; of {ROUNDS} alternating runs per target the one with the lowest p99 counts ({} samples for the agentmesh gateway at {}). A target that cannot keep up completes fewer requests than offered (the throughput row); its connections then wait for answers, so its latency does not include the queue in front of it. CPU time is read from /proc/PID/stat of the gateway and its descendants around each run (10 ms ticks; accepting the run's connections included) and divided by the completed requests; RSS sums the processes too.",
        count(sizes.rate),
        count(ANCHOR_RATE),
        sizes.seconds,
        at_rate[1].samples,
        count(sizes.rate),
    ));
    table.note(format!(
        "LiteLLM answered /health/readiness {} after it was started, and its first chat completion {}. Anchor: agentgateway's published comparison, p99 {} ms against LiteLLM's {} ms at 3,000 qps (its hardware, not measured here); the target is an added p99 at most {TARGET_P99_RATIO}× LiteLLM's, measured in the same run.",
        seconds(peer_ready),
        seconds(peer_start),
        ANCHOR_P99_MS.0,
        ANCHOR_P99_MS.1,
    ));
    if errors > 0 {
        table.note(format!("Failed requests across all runs: {errors}."));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_configs_point_at_the_upstream() {
        let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let text = gateway_toml(&Endpoint::Unix("/run/gw.sock".into()), up);
        assert!(text.contains("url = \"http://127.0.0.1:9/v1\""));
        assert!(text.contains("listen = \"unix:///run/gw.sock\""), "{text}");
        assert!(litellm_yaml(up).contains("api_base: http://127.0.0.1:9/v1"));
    }

    #[test]
    fn the_tree_of_this_process_holds_it() {
        let me = std::process::id();
        assert_eq!(descendants(me).first(), Some(&me));
        assert!(tree_memory(me).unwrap().rss > 0.0);
    }
}
