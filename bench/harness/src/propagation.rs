//! `propagation`: how long an intention change takes to be in force on a proxy. A real server,
//! node and `agentmesh proxy run`; each sample is one `CreateIntention` or `DeleteIntention`
//! on the admin API (SQLite write with fsync included) until the proxy's `/healthz` reports
//! the new policy revision. The reference figures are the issue's target and the seeds'
//! numbers for SPIRE and Consul (not measured here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{self, CreateEntryRequest};
use anyhow::Context;

use crate::load::http_get;
use crate::report::{Table, micros, quantile};
use crate::scale::{Layout, Proc, cli, free_port, poll};

pub(crate) const TRUST_DOMAIN: &str = "bench.example";

/// The revision `/healthz` reports, or `None` while the proxy is not ready.
pub(crate) async fn revision(admin: &str) -> Option<u64> {
    let (200, body) = http_get(admin, "/healthz").await? else {
        return None;
    };
    body.split("policy_revision=").nth(1)?.trim().parse().ok()
}

pub(crate) fn start_time(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("no comm in stat")? + 2..];
    after
        .split_whitespace()
        .nth(19)
        .context("no field 22")?
        .parse()
        .context("field 22 is not a number")
}

/// Runs the benchmark with `changes` samples.
///
/// # Errors
/// Any process failing to start or answer.
pub fn run(bin: &Path, changes: usize) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(bin, changes))
}

/// A running server and one node, with an admin client; everything stops when dropped.
pub(crate) struct ControlPlane {
    pub(crate) lay: Layout,
    pub(crate) admin: AdminClient<tonic::transport::Channel>,
    // Dropped in field order: the node before the server, then the directory.
    _node: Option<Proc>,
    _server: Proc,
    _tmp: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts `agentmesh server run` and `agentmesh node run` (named `node`) from `bin` in a
    /// fresh temporary directory, and waits until both answer.
    pub(crate) async fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_domain(bin, TRUST_DOMAIN, &[], true).await
    }

    /// As [`ControlPlane::start`], in trust domain `trust_domain` with `server_args` added to
    /// `agentmesh server run`, and with a node only if `with_node`.
    pub(crate) async fn start_domain(
        bin: &Path,
        trust_domain: &str,
        server_args: &[&str],
        with_node: bool,
    ) -> anyhow::Result<Self> {
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
        let admin_socket = lay.admin_socket.display().to_string();
        let data_dir = lay.s("server");
        let mut args = vec![
            "server",
            "run",
            "--data-dir",
            &data_dir,
            "--trust-domain",
            trust_domain,
            "--listen",
            &lay.listen,
            "--admin-socket",
            &admin_socket,
        ];
        args.extend_from_slice(server_args);
        let mut server = Proc::spawn("server", &lay.bin, &args, &lay.path("server.log"))?;
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
        std::fs::write(
            lay.path("bundle.pem"),
            cli(
                &lay.bin,
                &lay.admin_args(&["bundle", "show"], &admin_socket),
            )?,
        )?;
        let admin = AdminClient::new(agentmesh_proto::unix::connect(&lay.admin_socket).await?);
        let node = if with_node {
            let mut node = lay.start_node("node")?;
            let node_admin = lay.path("node-admin.sock");
            poll("the node's admin API", Duration::from_secs(30), || async {
                agentmesh_proto::unix::connect(&node_admin).await.ok()
            })
            .await?;
            node.check_alive()?;
            Some(node)
        } else {
            None
        };
        Ok(Self {
            lay,
            admin,
            _node: node,
            _server: server,
            _tmp: tmp,
        })
    }

    /// The node's Workload API socket.
    pub(crate) fn workload_socket(&self) -> PathBuf {
        self.lay.path("node.sock")
    }

    /// Registers an entry for `spiffe_id` with `selectors`, served by every node.
    pub(crate) async fn create_entry(
        &mut self,
        spiffe_id: &str,
        selectors: &[String],
    ) -> anyhow::Result<()> {
        self.admin
            .create_entry(CreateEntryRequest {
                entry: Some(v1::Entry {
                    spiffe_id: spiffe_id.to_owned(),
                    selectors: selectors.to_vec(),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("CreateEntry for {spiffe_id}"))?;
        Ok(())
    }
}

async fn run_async(bin: &Path, changes: usize) -> anyhow::Result<Table> {
    let mut plane = ControlPlane::start(bin).await?;
    plane
        .create_entry(
            &format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/b"),
            &["launcher:service:b".into()],
        )
        .await?;
    let lay = &plane.lay;
    let node_admin = lay.path("node-admin.sock");
    let mut client = plane.admin.clone();
    let proxy_admin = format!("127.0.0.1:{}", free_port()?);
    let config = lay.path("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "service = \"b\"\nworkload_api = \"unix://{}\"\n[inbound]\nlisten = \"127.0.0.1:{}\"\napp = \"127.0.0.1:9\"\n[admin]\nlisten = \"{proxy_admin}\"\n",
            lay.path("node.sock").display(),
            free_port()?
        ),
    )?;
    let config = config.display().to_string();
    let mut proxy = Proc::spawn(
        "proxy",
        &lay.bin,
        &["proxy", "run", "--config", &config],
        &lay.path("proxy.log"),
    )?;
    let pid = proxy.pid();
    NodeAdminClient::new(agentmesh_proto::unix::connect(&node_admin).await?)
        .register_launch(v1::RegisterLaunchRequest {
            pid,
            start_time: start_time(pid)?,
            selectors: vec!["launcher:service:b".into()],
        })
        .await
        .context("registering the proxy with the node")?;
    let mut current = poll("the proxy's first policy", Duration::from_secs(60), || {
        revision(&proxy_admin)
    })
    .await?;
    proxy.check_alive()?;

    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let started = Instant::now();
        if i % 2 == 0 {
            client
                .create_intention(v1::CreateIntentionRequest {
                    spec_json: r#"{"source":"a","destination":"b","action":"allow"}"#.into(),
                })
                .await
                .context("CreateIntention")?;
        } else {
            client
                .delete_intention(v1::DeleteIntentionRequest {
                    source: "a".into(),
                    destination: "b".into(),
                    ..Default::default()
                })
                .await
                .context("DeleteIntention")?;
        }
        let before = current;
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(r) = revision(&proxy_admin).await
                && r > before
            {
                current = r;
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "change {i} did not reach the proxy in 30 s"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let p50 = quantile(&samples, 0.50);
    let p99 = quantile(&samples, 0.99);
    let mut table = Table::new(format!(
        "propagation: intention change → in force on a proxy ({changes} changes)"
    ));
    table.row(
        "p50",
        micros(p50),
        "SPIRE entry ≈ 10 s (commonly quoted)",
        "n/a",
        "",
    );
    table.row(
        "p99",
        micros(p99),
        "Consul: \"within seconds\"",
        "n/a",
        "< 500 ms",
    );
    table.row(
        "max",
        micros(*samples.last().unwrap_or(&Duration::ZERO)),
        "",
        "",
        "",
    );
    table.note("Each sample: admin API create/delete (SQLite commit with fsync) → server watch → node relay → proxy policy swap, read from the proxy's /healthz (polled every 0.5 ms).");
    Ok(table)
}
