//! `spire`: the agentmesh proxy pair on SVIDs from a real SPIRE agent against the same pair
//! on agentmesh's own SVIDs, in one run, against one app and one agentmesh control plane
//! (which decides the intentions for both).
//!
//! ```text
//! load ─▶ client sidecar ─(mTLS, HTTP/2)─▶ server sidecar ─▶ app   (SVIDs: SPIRE agent)
//! load ─▶ client sidecar ─(mTLS, HTTP/2)─▶ server sidecar ─▶ app   (SVIDs: agentmesh node)
//! ```
//!
//! The data path is the same code on either identity source, so the difference should be
//! nil; the table shows whether it is, with each side's spread over its rounds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::propagation::{ControlPlane, TRUST_DOMAIN};
use crate::proxy::{
    MeshPair, SidecarCommand, Sizes, SpireIdentity, proxy_executable_beside, register, start_app,
    start_pair, start_pair_on,
};
use crate::proxy_ab::compare_pairs;
use crate::report::Table;
use crate::scale::{Proc, free_port, poll};

/// The gids the SPIRE pair's client and server sidecars run with (SPIRE selects by them).
const GIDS: [u32; 2] = [61_100, 61_101];

/// A SPIRE server and one agent (join token, unix workload attestor), as SPIRE's quickstart
/// has them, in `dir`; both stop when this is dropped.
pub(crate) struct Spire {
    bin: PathBuf,
    dir: PathBuf,
    _procs: Vec<Proc>,
}

impl Spire {
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_domain(bin, dir, TRUST_DOMAIN, "", true).await
    }

    /// A SPIRE server of `trust_domain` with `server_block` (say, `ca_ttl` or a `federation`
    /// block) inside its `server { … }`, and its agent (alias `spiffe://TD/host`) only if
    /// `with_agent`.
    pub(crate) async fn start_domain(
        bin: &Path,
        dir: &Path,
        trust_domain: &str,
        server_block: &str,
        with_agent: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let server_conf = dir.join("server.conf");
        std::fs::write(
            &server_conf,
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{sock}"
  trust_domain = "{trust_domain}"
  data_dir = "{data}"
  log_level = "WARN"
{server_block}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{ plugin_data {{}} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#,
                sock = dir.join("server.sock").display(),
                data = dir.join("server-data").display(),
            ),
        )?;
        let mut me = Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            _procs: Vec::new(),
        };
        let mut server = Command::new(bin.join("spire-server"));
        server.args(["run", "-config"]).arg(&server_conf);
        me._procs.push(Proc::spawn_command(
            "SPIRE server",
            server,
            &dir.join("server.log"),
        )?);
        poll("the SPIRE server", Duration::from_secs(60), || async {
            me.server(&["healthcheck"]).ok().map(|_| ())
        })
        .await?;
        let bundle = me.server(&["bundle", "show"])?;
        std::fs::write(dir.join("bundle.pem"), bundle)?;
        if !with_agent {
            return Ok(me);
        }
        let token = me.server(&[
            "token",
            "generate",
            "-spiffeID",
            &format!("spiffe://{trust_domain}/host"),
        ])?;
        let token = token
            .split_whitespace()
            .nth(1)
            .context("spire-server token generate printed no token")?
            .to_owned();
        let agent_conf = dir.join("agent.conf");
        std::fs::write(
            &agent_conf,
            format!(
                r#"agent {{
  data_dir = "{data}"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{sock}"
  trust_bundle_path = "{bundle}"
  trust_domain = "{trust_domain}"
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
                data = dir.join("agent-data").display(),
                sock = me.socket().display(),
                bundle = dir.join("bundle.pem").display(),
            ),
        )?;
        let mut agent = Command::new(bin.join("spire-agent"));
        agent
            .args(["run", "-config"])
            .arg(&agent_conf)
            .args(["-joinToken", &token]);
        me._procs.push(Proc::spawn_command(
            "SPIRE agent",
            agent,
            &dir.join("agent.log"),
        )?);
        let socket = me.socket();
        let agent_bin = bin.join("spire-agent");
        poll("the SPIRE agent", Duration::from_secs(60), || {
            let ok = Command::new(&agent_bin)
                .args(["healthcheck", "-socketPath"])
                .arg(&socket)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            async move { ok.then_some(()) }
        })
        .await?;
        Ok(me)
    }

    /// The agent's Workload API socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// `spire-server ARGS -socketPath …`: its stdout, or why it failed.
    pub(crate) fn server(&self, args: &[&str]) -> anyhow::Result<String> {
        let out: Output = Command::new(self.bin.join("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.dir.join("server.sock"))
            .stdin(Stdio::null())
            .output()
            .context("running spire-server")?;
        if !out.status.success() {
            bail!(
                "spire-server {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Runs the comparison with the release `agentmesh` and SPIRE's binaries in `spire_bin`.
///
/// # Errors
/// Any process failing to start or answer, or a pair failing requests.
pub fn run(
    agentmesh: &Path,
    spire_bin: &Path,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, spire_bin, sizes, rounds))
}

async fn run_async(
    agentmesh: &Path,
    spire_bin: &Path,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<Table> {
    for tool in ["spire-server", "spire-agent"] {
        if !spire_bin.join(tool).is_file() {
            bail!(
                "{tool} is missing in {}; scripts/build-spire builds SPIRE from the Go module proxy",
                spire_bin.display()
            );
        }
    }
    let mut plane = ControlPlane::start(agentmesh).await?;
    // The agentmesh entries (by uid) also let the SPIRE pair's sidecars read the policy.
    register(&mut plane).await?;
    let spire = Spire::start(spire_bin, &plane.lay.path("spire")).await?;
    for (service, gid) in ["client", "app"].into_iter().zip(GIDS) {
        spire.server(&[
            "entry",
            "create",
            "-parentID",
            &format!("spiffe://{TRUST_DOMAIN}/host"),
            "-spiffeID",
            &format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"),
            "-selector",
            &format!("unix:gid:{gid}"),
        ])?;
    }
    let (app, _app) = start_app(&plane)?;
    let proxy = proxy_executable_beside(&plane.lay.bin)?;
    let socket = spire.socket();
    let pairs: [MeshPair; 2] = [
        start_pair_on(
            &plane,
            SidecarCommand::proxy_executable(&proxy),
            app,
            "spire-",
            ("client", "app"),
            Some(SpireIdentity {
                socket: &socket,
                gids: GIDS,
            }),
        )
        .await?,
        start_pair(
            &plane,
            SidecarCommand::proxy_executable(&proxy),
            app,
            "agentmesh-",
        )
        .await?,
    ];
    let mut table = compare_pairs(
        &pairs,
        app,
        sizes,
        rounds,
        "spire: the agentmesh proxy pair on SPIRE SVIDs vs on agentmesh SVIDs, same run".into(),
    )
    .await?;
    table.note(format!(
        "Us: `agentmesh-proxy` with `workload_api` on a SPIRE v1.13.3 agent (join token, unix \
         attestor, the sidecars selected by gid) and `policy_api` on the agentmesh node. Peer: \
         the same executable with both on the agentmesh node. One app, one control plane, the \
         same intention. {rounds} rounds of {} s each, alternating which pair goes first; \
         added = pair − direct of the same round. The data path is the same code, so a ratio \
         within both spreads of 1.00× is the expected result.",
        sizes.seconds
    ));
    Ok(table)
}
