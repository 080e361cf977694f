//! `scale`: one real `agentmesh node run` process serving N registration entries that every
//! node serves (no parent_id): how long it takes to sync them and mint their SVIDs, and its
//! resident memory, against an idle node (no entries) measured in the same run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{self, CreateEntryRequest, NodeStatusRequest};
use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use anyhow::{Context, bail};
use futures::StreamExt;

use crate::report::{Table, count, ratio};

const TRUST_DOMAIN: &str = "bench.example";
/// How long the whole sync may take before the benchmark gives up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// CreateEntry calls in flight at once.
const CREATE_CONCURRENCY: usize = 16;
/// The commonly quoted figure for a SPIRE agent's RSS, for reference only (not measured here).
const SPIRE_AGENT_MB: f64 = 50.0;
/// Wait after the last change before reading memory, so it reflects a settled process.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    pub(crate) fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args).env("AGENTMESH_LOG", "info");
        Self::spawn_command(name, cmd, log)
    }

    /// Starts `cmd` with no stdin and its stdout and stderr in `log`.
    pub(crate) fn spawn_command(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {name}", cmd.get_program().display()))?;
        Ok(Self { name, child })
    }

    /// Takes charge of a child started elsewhere.
    pub(crate) fn adopt(name: &'static str, child: Child) -> Self {
        Self { name, child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the {} exited early: {status}", self.name),
            Err(e) => bail!("cannot wait for the {}: {e}", self.name),
        }
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Memory of a process from /proc/PID/status, in MiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss: f64,
    pub(crate) hwm: f64,
}

pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| -> anyhow::Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: kb("VmRSS:")? / 1024.0,
        hwm: kb("VmHWM:")? / 1024.0,
    })
}

/// User plus system CPU time a process has used.
pub(crate) fn cpu_time(pid: u32, ticks_per_sec: f64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which ends with the last ')': state is the first.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("malformed /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15 of the whole line.
    Ok(Duration::from_secs_f64(
        (tick(11)? + tick(12)?) / ticks_per_sec,
    ))
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Runs the `agentmesh` CLI and returns its stdout.
pub(crate) fn cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running agentmesh {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "agentmesh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("non-UTF-8 output from agentmesh")
}

/// Polls `f` every 10 ms until it returns `Some`, or fails after `timeout`.
pub(crate) async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) struct Layout {
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) admin_socket: PathBuf,
    pub(crate) listen: String,
}

impl Layout {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub(crate) fn admin_args<'a>(&'a self, cmd: &[&'a str], socket: &'a str) -> Vec<&'a str> {
        let mut v = cmd.to_vec();
        v.extend(["--admin-socket", socket]);
        v
    }

    /// Starts `agentmesh node run` named `name` with a fresh join token.
    pub(crate) fn start_node(&self, name: &'static str) -> anyhow::Result<Proc> {
        let admin = self.admin_socket.display().to_string();
        let token = cli(&self.bin, &self.admin_args(&["token", "generate"], &admin))?
            .trim()
            .to_owned();
        Proc::spawn(
            name,
            &self.bin,
            &[
                "node",
                "run",
                "--server",
                &self.listen,
                "--join-token",
                &token,
                "--socket",
                &self.s(&format!("{name}.sock")),
                "--trust-bundle",
                &self.s("bundle.pem"),
                "--data-dir",
                &self.s(name),
                "--admin-socket",
                &self.s(&format!("{name}-admin.sock")),
            ],
            &self.path(&format!("{name}.log")),
        )
    }
}

/// The node's Status over its admin socket, once it answers.
async fn node_status(socket: &Path) -> Option<v1::NodeStatus> {
    let channel = agentmesh_proto::unix::connect(socket).await.ok()?;
    NodeAdminClient::new(channel)
        .status(NodeStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Opens a FetchX509SVID stream on the node at `socket`, with the required header.
pub(crate) async fn fetch_x509(
    socket: &Path,
) -> Option<
    Result<
        tonic::Response<tonic::Streaming<agentmesh_proto::workload::X509svidResponse>>,
        tonic::Status,
    >,
> {
    let channel = agentmesh_proto::unix::connect(socket).await.ok()?;
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Some(
        SpiffeWorkloadApiClient::new(channel)
            .fetch_x509svid(req)
            .await,
    )
}

/// Whether this process got its X.509-SVID from the node.
async fn first_svid(socket: &Path) -> bool {
    let Some(Ok(resp)) = fetch_x509(socket).await else {
        return false;
    };
    matches!(resp.into_inner().message().await, Ok(Some(m)) if !m.svids.is_empty())
}

/// This process's effective uid, from /proc.
pub(crate) fn my_uid() -> anyhow::Result<String> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
        .context("no Uid line in /proc/self/status")
}

/// Whether the node has finished its first sync: the Workload API stops answering Unavailable.
pub(crate) async fn node_ready(socket: &Path) -> bool {
    match fetch_x509(socket).await {
        None => false,
        Some(Ok(_)) => true,
        Some(Err(s)) => s.code() != tonic::Code::Unavailable,
    }
}

async fn create_entries(admin_socket: &Path, n: usize) -> anyhow::Result<Duration> {
    let admin = AdminClient::new(agentmesh_proto::unix::connect(admin_socket).await?);
    let start = Instant::now();
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let mut admin = admin.clone();
            async move {
                admin
                    .create_entry(CreateEntryRequest {
                        entry: Some(v1::Entry {
                            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/workload-{i}"),
                            selectors: vec![format!("unix:uid:{}", 100_000 + i)],
                            ..Default::default()
                        }),
                    })
                    .await
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY);
    while let Some(r) = results.next().await {
        r.context("CreateEntry")?;
    }
    Ok(start.elapsed())
}

/// Runs the benchmark against the release binary `bin` with `entries` entries.
pub fn run(bin: &Path, entries: usize) -> anyhow::Result<Table> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(bin, entries))
}

async fn run_async(bin: &Path, entries: usize) -> anyhow::Result<Table> {
    let bin = bin
        .canonicalize()
        .with_context(|| format!("no agentmesh binary at {}", bin.display()))?;
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let lay = Layout {
        dir: tmp.path().to_owned(),
        admin_socket: tmp.path().join("admin.sock"),
        listen: format!("127.0.0.1:{}", free_port()?),
        bin,
    };
    let ticks = clock_ticks();
    let n = u32::try_from(entries).context("too many entries")?;

    let admin = lay.admin_socket.display().to_string();
    let mut server = Proc::spawn(
        "server",
        &lay.bin,
        &[
            "server",
            "run",
            "--data-dir",
            &lay.s("server"),
            "--trust-domain",
            TRUST_DOMAIN,
            "--listen",
            &lay.listen,
            "--admin-socket",
            &admin,
        ],
        &lay.path("server.log"),
    )?;
    poll(
        "the server's admin socket",
        Duration::from_secs(30),
        || async {
            let ch = agentmesh_proto::unix::connect(&lay.admin_socket)
                .await
                .ok()?;
            AdminClient::new(ch)
                .get_bundle(v1::GetBundleRequest {})
                .await
                .ok()
        },
    )
    .await?;
    server.check_alive()?;
    let pem = cli(&lay.bin, &lay.admin_args(&["bundle", "show"], &admin))?;
    std::fs::write(lay.path("bundle.pem"), pem).context("writing bundle.pem")?;

    // The peer: an idle node (no entries), same binary, same server, same run. Its memory is
    // read before any Workload API call: the first call from a binary makes the node hash it.
    let mut idle = lay.start_node("idle")?;
    let idle_admin = lay.path("idle-admin.sock");
    poll(
        "the idle node's admin API",
        Duration::from_secs(30),
        || async { node_status(&idle_admin).await },
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    idle.check_alive()?;
    let idle_mem = memory(idle.pid())?;
    // Then one Workload API call, from this benchmark's binary.
    let idle_sock = lay.path("idle.sock");
    poll(
        "the idle node's first sync",
        Duration::from_secs(30),
        || async { node_ready(&idle_sock).await.then_some(()) },
    )
    .await?;
    let idle_after_call = memory(idle.pid())?;
    let caller_mib = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| m.len() as f64 / 1_048_576.0)
        .unwrap_or_default();
    idle.stop();
    let server_idle_mem = memory(server.pid())?;

    eprintln!("scale: creating {entries} entries");
    let created_in = create_entries(&lay.admin_socket, entries).await?;
    // Plus one entry for this benchmark process, to time an SVID minted on demand.
    AdminClient::new(agentmesh_proto::unix::connect(&lay.admin_socket).await?)
        .create_entry(CreateEntryRequest {
            entry: Some(v1::Entry {
                spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/me"),
                selectors: vec![format!("unix:uid:{}", my_uid()?)],
                ..Default::default()
            }),
        })
        .await
        .context("CreateEntry for the benchmark itself")?;
    // Above the node's eager limit, SVIDs are minted only when a workload asks.
    let eager = entries < agentmesh_node::EAGER_MINT_LIMIT;
    let want_svids = if eager { n + 1 } else { 0 };

    eprintln!("scale: starting the measured node");
    let server_cpu_before = cpu_time(server.pid(), ticks)?;
    let started = Instant::now();
    let mut node = lay.start_node("node")?;
    let node_admin = lay.path("node-admin.sock");
    let (mut t_status, mut t_entries, mut t_svids) = (None, None, None);
    let deadline = started + SYNC_TIMEOUT;
    let mut last = None;
    while t_svids.is_none() {
        node.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the node did not reach {entries} cached SVIDs within {SYNC_TIMEOUT:?}; last status: {last:?}"
            );
        }
        if let Some(st) = node_status(&node_admin).await {
            let now = started.elapsed();
            t_status.get_or_insert(now);
            if st.entries > n {
                t_entries.get_or_insert(now);
                if st.cached_svids >= want_svids {
                    t_svids = Some(now);
                }
            }
            last = Some(st);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server_cpu = cpu_time(server.pid(), ticks)?.saturating_sub(server_cpu_before);
    let node_cpu = cpu_time(node.pid(), ticks)?;
    tokio::time::sleep(SETTLE).await;
    node.check_alive()?;
    let node_mem = memory(node.pid())?;
    let server_mem = memory(server.pid())?;
    // One workload (this process) asks for its SVID: minted on demand above the limit.
    let asked = Instant::now();
    poll("this process's SVID", Duration::from_secs(30), || async {
        first_svid(&lay.path("node.sock")).await.then_some(())
    })
    .await?;
    let on_demand = asked.elapsed();
    tokio::time::sleep(SETTLE).await;
    let node_mem_after = memory(node.pid())?;
    node.stop();
    server.stop();

    let (t_status, t_entries, t_svids) = (
        t_status.unwrap_or_default(),
        t_entries.unwrap_or_default(),
        t_svids.unwrap_or_default(),
    );
    let mint_secs = t_svids.saturating_sub(t_entries).as_secs_f64();
    let mb = |v: f64| format!("{v:.1} MiB");
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mut t = Table::new(format!(
        "scale — one `agentmesh node run` process with {} entries",
        count(entries as f64)
    ));
    t.row(
        format!(
            "node RSS (VmRSS), {} entries synced (peer: idle node, 0 entries)",
            count(entries as f64)
        ),
        mb(node_mem.rss),
        mb(idle_mem.rss),
        ratio(node_mem.rss, idle_mem.rss),
        "< 40 MB (38.1 MiB)",
    );
    t.row(
        "node RSS after one workload fetched its SVID (peer: idle node)",
        mb(node_mem_after.rss),
        mb(idle_mem.rss),
        ratio(node_mem_after.rss, idle_mem.rss),
        "< 40 MB (38.1 MiB)",
    );
    t.row(
        if eager {
            "first SVID for a workload (cached since the sync)"
        } else {
            "first SVID for a workload (minted on demand)"
        },
        format!("{:.1} ms", on_demand.as_secs_f64() * 1000.0),
        "",
        "",
        "",
    );
    t.row(
        "node peak RSS (VmHWM) (peer: idle node)",
        mb(node_mem.hwm),
        mb(idle_mem.hwm),
        ratio(node_mem.hwm, idle_mem.hwm),
        "< 40 MB (38.1 MiB)",
    );
    t.row(
        format!(
            "idle node peak RSS after one Workload API call from a {caller_mib:.0} MiB binary (peer: before it)"
        ),
        mb(idle_after_call.hwm),
        mb(idle_mem.hwm),
        ratio(idle_after_call.hwm, idle_mem.hwm),
        "",
    );
    t.row(
        "node RSS vs a SPIRE agent (reference, not measured)",
        mb(node_mem.rss),
        format!("~{SPIRE_AGENT_MB:.0} MB"),
        ratio(node_mem.rss * 1.048_576, SPIRE_AGENT_MB),
        "",
    );
    t.row(
        format!(
            "server RSS, {} entries (peer: same server, 0 entries)",
            count(entries as f64)
        ),
        mb(server_mem.rss),
        mb(server_idle_mem.rss),
        ratio(server_mem.rss, server_idle_mem.rss),
        "",
    );
    t.row(
        "node start → Status answers (attested)",
        secs(t_status),
        "",
        "",
        "",
    );
    t.row(
        format!("node start → all {} entries synced", count(entries as f64)),
        secs(t_entries),
        "",
        "",
        "",
    );
    t.row(
        if eager {
            format!(
                "node start → all {} X.509-SVIDs cached",
                count(entries as f64)
            )
        } else {
            format!(
                "node start → synced; no SVID minted eagerly above {} entries",
                agentmesh_node::EAGER_MINT_LIMIT
            )
        },
        secs(t_svids),
        "",
        "",
        "",
    );
    t.row(
        "full-path minting rate (node keygen+CSR, server verify+sign, node verify), SVIDs/s",
        if eager && mint_secs > 0.0 {
            count(entries as f64 / mint_secs)
        } else {
            "n/a (on demand)".to_owned()
        },
        "",
        "",
        "",
    );
    t.row(
        "CPU time from node start until ready: node / server",
        format!("{} / {}", secs(node_cpu), secs(server_cpu)),
        "",
        "",
        "",
    );
    if eager {
        t.row(
            "SVIDs per server CPU-second on the full path (mTLS, gRPC, entry lookup, CSR verify, sign)",
            count(entries as f64 / server_cpu.as_secs_f64().max(1e-9)),
            "",
            "",
            "",
        );
    }
    t.row(
        "CreateEntry via the admin API, entries/s",
        count(entries as f64 / created_in.as_secs_f64().max(1e-9)),
        "",
        "",
        "",
    );
    t.note(format!(
        "Real processes: `agentmesh server run` and `agentmesh node run` (release build) on \
         127.0.0.1, entries with distinct SPIFFE IDs and `unix:uid:<n>` selectors and no \
         parent_id, so every node serves all of them (and mints them all only up to \
         EAGER_MINT_LIMIT entries; above it, only what a workload asks for). Times are from spawning the \
         node, polled every 10 ms through NodeAdmin.Status. Memory read {} s after the last \
         SVID arrived. Peer: an idle node (same binary, same server, no entries) measured \
         earlier in the same run.",
        SETTLE.as_secs()
    ));
    Ok(t)
}
