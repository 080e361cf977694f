//! `docker`: what Docker workload attestation costs, against a host process on the same node in
//! the same run.
//!
//! - **A container's first SVID**: from `docker run` to the SVID that `agentmesh svid fetch`
//!   prints inside the container, against the same binary run as a host process. The
//!   container's call includes its one Docker Engine lookup.
//! - **One Workload API call**: FetchX509SVID to its first message, from this harness's
//!   `fetch-loop` inside a container (`docker:` selectors; the Docker lookup cached per
//!   container after the first call) against the same loop run on the host (`unix:` selectors).
//!
//! Each side has an entry only it matches: the container by a label, the host processes by
//! the path of their executable on the host (inside a container the path is the image's).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use anyhow::{Context, bail};

use crate::propagation::{ControlPlane, TRUST_DOMAIN};
use crate::report::{Table, micros, quantile, ratio};

/// Alternating runs of each first-SVID measurement; the median counts.
const FIRST_RUNS: usize = 5;
/// Where the node's socket is mounted in the containers.
const SOCKET_INSIDE: &str = "/run/agentmesh/node.sock";

/// Runs the benchmark against the release binary `agentmesh` (and this harness, copied into
/// an image next to it).
///
/// # Errors
/// No Docker Engine, an image that cannot be built, or a side that gets no SVID.
pub fn run(agentmesh: &Path, samples: usize) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, samples))
}

/// The `fetch-loop` command: `samples` FetchX509SVID calls on `socket` after a warm-up, their
/// p50 and p99 in microseconds as one JSON line.
///
/// # Errors
/// The socket cannot be reached or a call fails.
pub fn fetch_loop(socket: &Path, samples: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut latencies = rt.block_on(async {
        let channel = agentmesh_proto::unix::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples + 50 {
            let mut req = tonic::Request::new(X509svidRequest {});
            req.metadata_mut().insert(
                agentmesh_proto::WORKLOAD_API_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let start = Instant::now();
            let mut stream = client.fetch_x509svid(req).await?.into_inner();
            let msg = stream.message().await?.context("the stream ended empty")?;
            let took = start.elapsed();
            if msg.svids.is_empty() {
                bail!("a message without SVIDs");
            }
            if i >= 50 {
                out.push(took);
            }
        }
        anyhow::Ok(out)
    })?;
    latencies.sort();
    println!(
        "{{\"p50_us\":{},\"p99_us\":{}}}",
        quantile(&latencies, 0.50).as_micros(),
        quantile(&latencies, 0.99).as_micros()
    );
    Ok(())
}

/// Images built for this run, removed when dropped.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

fn docker(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker (scripts/test installs docker.io and starts dockerd)")
}

/// `agentmesh:dev`-style image of `agentmesh` (through `scripts/image`), with this harness
/// added as `/agentmesh-bench` (it links the same libraries).
fn build_image(agentmesh: &Path, tag: &str, images: &mut Images) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = format!("{tag}-base");
    let out = Command::new(root.join("scripts/image"))
        .arg("--binary")
        .arg(agentmesh)
        .args(["--tag", &base])
        .output()
        .context("running scripts/image")?;
    if !out.status.success() {
        bail!("scripts/image: {}", String::from_utf8_lossy(&out.stderr));
    }
    images.0.push(base.clone());
    let ctx = tempfile::tempdir().context("a build context")?;
    std::fs::copy(
        std::env::current_exe().context("the harness's path")?,
        ctx.path().join("agentmesh-bench"),
    )?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY agentmesh-bench /agentmesh-bench\n"),
    )?;
    let out = docker(&["build", "-q", "-t", tag, &ctx.path().display().to_string()])?;
    if !out.status.success() {
        bail!("docker build: {}", String::from_utf8_lossy(&out.stderr));
    }
    images.0.push(tag.to_owned());
    Ok(())
}

/// The time `cmd` takes to exit successfully, printing `want`.
fn timed(mut cmd: Command, want: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().context("spawning")?;
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(want) {
        bail!(
            "expected {want}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Parses `fetch-loop`'s JSON line.
fn latencies(out: &std::process::Output) -> anyhow::Result<(Duration, Duration)> {
    if !out.status.success() {
        bail!("fetch-loop: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("fetch-loop's JSON line")?;
    let us = |k: &str| {
        v[k].as_u64()
            .map(Duration::from_micros)
            .context("a latency")
    };
    Ok((us("p50_us")?, us("p99_us")?))
}

async fn run_async(agentmesh: &Path, samples: usize) -> anyhow::Result<Table> {
    let out = docker(&["info", "--format", "{{.ServerVersion}}"])?;
    if !out.status.success() {
        bail!("no Docker Engine answers: start dockerd (scripts/test starts one)");
    }
    let engine = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let agentmesh: PathBuf = agentmesh
        .canonicalize()
        .with_context(|| format!("no agentmesh binary at {}", agentmesh.display()))?;
    let harness = std::env::current_exe().context("the harness's path")?;
    let run = std::process::id().to_string();
    let tag = format!("agentmesh-bench-docker:{run}");
    let mut images = Images(Vec::new());
    build_image(&agentmesh, &tag, &mut images)?;

    let mut plane = ControlPlane::start(&agentmesh).await?;
    let id = |s: &str| format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/{s}");
    let label = format!("agentmesh.bench={run}");
    plane
        .create_entry(
            &id("container"),
            &[format!("docker:label:agentmesh.bench:{run}")],
        )
        .await?;
    for exe in [&agentmesh, &harness] {
        plane
            .create_entry(&id("host"), &[format!("unix:path:{}", exe.display())])
            .await?;
    }
    let socket = plane.workload_socket();
    let mount = format!("{}:{SOCKET_INSIDE}", socket.display());
    let endpoint = format!("unix://{SOCKET_INSIDE}");
    let in_container = |entrypoint: &str, args: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.args([
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            &label,
            "-v",
            &mount,
        ])
        .args(["--entrypoint", entrypoint, &tag])
        .args(args);
        cmd
    };
    let on_host = |bin: &Path, args: &[&str]| {
        let mut cmd = Command::new(bin);
        cmd.args(args).env_remove("SPIFFE_ENDPOINT_SOCKET");
        cmd
    };
    let host_socket = socket.display().to_string();
    // Wait until the node serves both (the entries reach it through its sync).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let host = timed(
            on_host(&agentmesh, &["svid", "fetch", "--socket", &host_socket]),
            &id("host"),
        );
        let container = timed(
            in_container("/agentmesh", &["svid", "fetch", "--socket", &endpoint]),
            &id("container"),
        );
        match (host, container) {
            (Ok(_), Ok(_)) => break,
            (h, c) if Instant::now() > deadline => {
                bail!("no SVIDs within 60 s: host {h:?}, container {c:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }

    let (mut host_first, mut container_first) = (Vec::new(), Vec::new());
    for round in 0..FIRST_RUNS {
        let host = || {
            timed(
                on_host(&agentmesh, &["svid", "fetch", "--socket", &host_socket]),
                &id("host"),
            )
        };
        let container = || {
            timed(
                in_container("/agentmesh", &["svid", "fetch", "--socket", &endpoint]),
                &id("container"),
            )
        };
        if round % 2 == 0 {
            host_first.push(host()?);
            container_first.push(container()?);
        } else {
            container_first.push(container()?);
            host_first.push(host()?);
        }
    }
    let n = samples.to_string();
    let host_calls = latencies(
        &on_host(
            &harness,
            &["fetch-loop", "--socket", &host_socket, "--samples", &n],
        )
        .output()?,
    )?;
    let container_calls = latencies(
        &in_container(
            "/agentmesh-bench",
            &["fetch-loop", "--socket", SOCKET_INSIDE, "--samples", &n],
        )
        .output()?,
    )?;
    drop(plane);

    let (c_first, h_first) = (median(container_first), median(host_first));
    let mut table = Table::new(
        "docker: Docker workload attestation vs a host process on the same node (same run)",
    );
    table.row(
        format!("first SVID: `docker run … svid fetch` vs the same binary on the host, median of {FIRST_RUNS}"),
        micros(c_first),
        micros(h_first),
        ratio(c_first.as_secs_f64(), h_first.as_secs_f64()),
        "",
    );
    for (name, c, h) in [
        ("p50", container_calls.0, host_calls.0),
        ("p99", container_calls.1, host_calls.1),
    ] {
        table.row(
            format!("FetchX509SVID first message, {name}: `docker:` (cached lookup) vs `unix:` attestation"),
            micros(c),
            micros(h),
            ratio(c.as_secs_f64(), h.as_secs_f64()),
            "",
        );
    }
    table.note(format!(
        "Docker Engine {engine} (Debian docker.io), the image built by scripts/image from the release \
         binary. The first-SVID time is the whole command, process start included: for the \
         container that is `docker run` (create, start, the attestation's one Engine API \
         lookup, the fetch, exit, `--rm`); for the host, spawning `agentmesh svid fetch`. The \
         call latencies are {samples} FetchX509SVID calls on one connection after 50 warm-up \
         calls, from this harness's fetch-loop in a container of the same image and on the \
         host; the container's selectors come from the Docker Engine once and then from the \
         node's cache, so the difference is reading /proc/PID/cgroup and the cache per call."
    ));
    Ok(table)
}
