//! Bringing a planned mesh up, in order: the server, the node, one registration entry per
//! service, the scenario's intentions, then each service's app and sidecar, vouched for
//! over the node's admin socket (`launcher:service:NAME`), and finally waiting until every
//! one of them has its SVID and answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{
    CreateEntryRequest, CreateIntentionRequest, DeleteIntentionRequest, Entry,
    GenerateJoinTokenRequest, GetBundleRequest, ListEntriesRequest, ListIntentionsRequest,
    RegisterLaunchRequest,
};
use agentmesh_sdk::LocalStream;
use anyhow::{Context, anyhow, bail};
use tonic::transport::Channel;

use super::layout::{Layout, write_file};
use super::plan::{HeldPorts, Llm, Plan, Planned};
use super::render;
use super::scenario::{Scenario, ServiceKind};
use super::self_check::http_get;
use super::supervise::{Recipe, Supervisor, tail};
use crate::cli::{ADMIN_SOCKET_ENV, JOIN_TOKEN_ENV, WORKLOAD_SOCKET_ENV};

/// How long any one thing may take to come up before `up` gives up and cleans up.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// On SPIRE, service number `i` of the plan runs with gid `SPIRE_GID_BASE + i`: SPIRE's unix
/// attestor reads a caller's gid, and `up`'s children share a uid and a binary, so a gid per
/// service is what tells them apart (the uid stays, so each child still reaches the files
/// and sockets only `up`'s user may). A high range, so as not to borrow a real group.
pub const SPIRE_GID_BASE: u32 = 61_000;

/// Why a scenario cannot run on SPIRE identities here: `up` is not root (it could not set
/// the gids), or a service has no sidecar (an in-process agent reads policy from the
/// Workload API socket, which on SPIRE is SPIRE's).
///
/// # Errors
/// The first reason found.
pub fn check_spire_preconditions(scenario: &Scenario) -> anyhow::Result<()> {
    if agentmesh_sdk::own_uid() != Some(0) {
        bail!(
            "--identity spire: needs root, to run each service under a gid of its own that \
             SPIRE's unix attestor tells apart (the uid stays yours)"
        );
    }
    if let Some(s) = scenario.services.iter().find(|s| !s.sidecar) {
        bail!(
            "--identity spire: service {} has no sidecar (in-process mTLS); on SPIRE every \
             service takes its policy through a sidecar; use a scenario whose services all \
             have one, such as planner-executor",
            s.name
        );
    }
    Ok(())
}

/// Writes, and prints, the `spire-server entry create` line for each service: its SPIFFE
/// ID, under the SPIRE agent's ID, selected by its gid.
fn print_spire_entries(plan: &Plan, layout: &Layout) -> anyhow::Result<()> {
    let mut lines = String::from(
        "# Register agentmesh up's services with SPIRE; set SPIRE_AGENT_ID to this host's SPIRE \
         agent ID (e.g. spiffe://agentmesh.local/spire/agent/join_token/…).\n",
    );
    for (i, p) in plan.services.iter().enumerate() {
        lines.push_str(&format!(
            "spire-server entry create -parentID \"$SPIRE_AGENT_ID\" -spiffeID {} -selector unix:gid:{}\n",
            p.id,
            spire_gid(i)
        ));
    }
    write_file(&layout.spire_entries, &lines)?;
    println!(
        "  SPIRE ENTRIES (also in {}); every service waits a minute for its SVID:",
        layout.spire_entries.display()
    );
    for l in lines.lines().skip(1) {
        println!("    {l}");
    }
    Ok(())
}

/// The gid of service number `index` on SPIRE.
fn spire_gid(index: usize) -> u32 {
    SPIRE_GID_BASE.saturating_add(u32::try_from(index).unwrap_or(u32::MAX - SPIRE_GID_BASE))
}

/// An intention `up` applied for the scenario.
#[derive(Debug, Clone)]
pub struct AppliedIntention {
    /// The server's id for it.
    pub id: String,
    /// The calling service.
    pub source: String,
    /// The called service.
    pub destination: String,
    /// allow or deny.
    pub action: String,
    /// The scenario's words for it.
    pub description: String,
}

/// What every step of starting reads.
#[derive(Debug, Clone, Copy)]
pub struct Mesh<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// `--llm`.
    pub llm: &'a Llm,
    /// `--model`.
    pub model: Option<&'a str>,
    /// The data dir.
    pub layout: &'a Layout,
    /// The plan of `scenario`.
    pub plan: &'a Plan,
    /// The plan's ports, held until the child that listens on each starts.
    pub ports: &'a HeldPorts,
}

/// Starts everything in the plan under `sup`, printing one line per part as it comes up.
/// Returns the intentions applied.
///
/// # Errors
/// Any part fails to start or to become ready; the caller stops what `sup` holds.
pub async fn start_all(
    mesh: &Mesh<'_>,
    sup: &mut Supervisor,
) -> anyhow::Result<Vec<AppliedIntention>> {
    let Mesh {
        scenario,
        layout,
        plan,
        ..
    } = *mesh;
    mesh.ports.release(plan.server);
    let mut admin = start_server(scenario, layout, plan, sup).await?;
    let mut node = start_node(&mut admin, layout, plan, sup).await?;
    register_entries(&mut admin, plan).await?;
    let intentions = apply_intentions(&mut admin, scenario).await?;
    let proxy_executable = proxy_executable()?;
    let on_spire = layout.spire_socket.is_some();
    if on_spire {
        print_spire_entries(plan, layout)?;
    }
    for (i, p) in plan.services.iter().enumerate() {
        let gid = on_spire.then(|| spire_gid(i));
        start_service(p, mesh, sup, &mut node, proxy_executable.as_deref(), gid).await?;
    }
    for p in &plan.services {
        wait_ready(p, sup).await?;
    }
    Ok(intentions)
}

async fn start_server(
    scenario: &Scenario,
    layout: &Layout,
    plan: &Plan,
    sup: &mut Supervisor,
) -> anyhow::Result<AdminClient<Channel>> {
    let td = scenario.trust_domain().to_string();
    let mut cmd = agentmesh_command()?;
    cmd.args(["server", "run", "--trust-domain", &td, "--listen"])
        .arg(plan.server.to_string())
        .arg("--data-dir")
        .arg(&layout.data)
        .arg("--admin-socket")
        .arg(&layout.admin_socket);
    sup.spawn("server", cmd, &layout.log("server.log"), None, None)?;
    let admin_socket = layout.admin_socket.clone();
    wait_until("the server's admin socket", sup, || {
        let p = admin_socket.clone();
        async move { std::os::unix::net::UnixStream::connect(&p).is_ok() }
    })
    .await?;
    let channel = agentmesh_proto::unix::connect(&layout.admin_socket)
        .await
        .with_context(|| format!("cannot reach {}", layout.admin_socket.display()))?;
    let admin =
        AdminClient::new(channel).max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
    println!(
        "  ✓ server      trust domain {td}, listening on {}",
        plan.server
    );
    Ok(admin)
}

async fn start_node(
    admin: &mut AdminClient<Channel>,
    layout: &Layout,
    plan: &Plan,
    sup: &mut Supervisor,
) -> anyhow::Result<NodeAdminClient<Channel>> {
    let token = admin
        .generate_join_token(GenerateJoinTokenRequest { ttl_seconds: 0 })
        .await
        .map_err(|s| anyhow!("the server refused a join token: {}", s.message()))?
        .into_inner()
        .token;
    let bundle = admin
        .get_bundle(GetBundleRequest {})
        .await
        .map_err(|s| anyhow!("the server refused its bundle: {}", s.message()))?
        .into_inner();
    write_file(
        &layout.bundle,
        &crate::cli::output::certs_pem(&bundle.x509_authorities),
    )?;
    let mut cmd = agentmesh_command()?;
    cmd.args(["node", "run", "--server"])
        .arg(plan.server.to_string())
        .arg("--socket")
        .arg(&layout.node_socket)
        .arg("--trust-bundle")
        .arg(&layout.bundle)
        .arg("--data-dir")
        .arg(&layout.node_data)
        .arg("--admin-socket")
        .arg(&layout.node_admin_socket)
        // In the environment, not argv, so the token is not in `ps`.
        .env(JOIN_TOKEN_ENV, &token);
    if layout.spire_socket.is_some() {
        cmd.arg("--no-workload-api");
    }
    sup.spawn("node", cmd, &layout.log("node.log"), None, None)?;
    let sockets = [layout.node_socket.clone(), layout.node_admin_socket.clone()];
    wait_until("the node's sockets", sup, || {
        let s = sockets.clone();
        async move {
            s.iter()
                .all(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        }
    })
    .await?;
    let node = NodeAdminClient::new(
        agentmesh_proto::unix::connect(&layout.node_admin_socket)
            .await
            .context("cannot reach the node's admin socket")?,
    );
    match layout.policy_api() {
        Some(relay) => println!(
            "  ✓ node        policy relay at {relay}; SVIDs from SPIRE at {}",
            layout.workload_api()
        ),
        None => println!("  ✓ node        Workload API at {}", layout.workload_api()),
    }
    Ok(node)
}

/// One entry per service, matched by the launcher selector; an entry already there (from an
/// earlier `up` on this data dir) is kept.
async fn register_entries(admin: &mut AdminClient<Channel>, plan: &Plan) -> anyhow::Result<()> {
    let existing = admin
        .list_entries(ListEntriesRequest {})
        .await
        .map_err(|s| anyhow!("cannot list entries: {}", s.message()))?
        .into_inner()
        .entries;
    for p in &plan.services {
        let selector = format!("launcher:service:{}", p.spec.name);
        if existing
            .iter()
            .any(|e| e.spiffe_id == p.id && e.selectors == [selector.clone()])
        {
            continue;
        }
        admin
            .create_entry(CreateEntryRequest {
                entry: Some(Entry {
                    id: String::new(),
                    spiffe_id: p.id.clone(),
                    parent_id: String::new(),
                    selectors: vec![selector],
                    x509_ttl_seconds: 0,
                    jwt_ttl_seconds: 0,
                    dns_names: Vec::new(),
                    created_at: 0,
                    federates_with: Vec::new(),
                }),
            })
            .await
            .map_err(|s| anyhow!("cannot register {}: {}", p.spec.name, s.message()))?;
    }
    println!(
        "  ✓ entries     {} services registered (launcher:service:NAME)",
        plan.services.len()
    );
    Ok(())
}

/// The scenario's intentions replace whatever `up` applied before; an operator's stay.
async fn apply_intentions(
    admin: &mut AdminClient<Channel>,
    scenario: &Scenario,
) -> anyhow::Result<Vec<AppliedIntention>> {
    let old = admin
        .list_intentions(ListIntentionsRequest {})
        .await
        .map_err(|s| anyhow!("cannot list intentions: {}", s.message()))?
        .into_inner()
        .intentions;
    let owner = agentmesh_policy::scenario_owner(&scenario.name);
    let mut kept = 0;
    for i in old {
        let applied_by_up = serde_json::from_str::<agentmesh_policy::IntentionSpec>(&i.spec_json)
            .is_ok_and(|s| s.owner.starts_with("up:"));
        if !applied_by_up {
            kept += 1;
            continue;
        }
        admin
            .delete_intention(DeleteIntentionRequest {
                id: i.id.clone(),
                source: String::new(),
                destination: String::new(),
            })
            .await
            .map_err(|s| anyhow!("cannot replace intention {}: {}", i.id, s.message()))?;
    }
    let mut intentions = Vec::new();
    for spec in &scenario.intentions {
        let mut spec = spec.clone();
        spec.owner.clone_from(&owner);
        let created = match admin
            .create_intention(CreateIntentionRequest {
                spec_json: spec.to_json(),
            })
            .await
        {
            Ok(c) => c.into_inner(),
            // An operator's intention for the same pair wins: it was made on purpose.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                println!(
                    "  ! intention {} → {} of the scenario not applied: {}",
                    spec.source,
                    spec.destination,
                    s.message()
                );
                continue;
            }
            Err(s) => {
                return Err(anyhow!(
                    "cannot create intention {} → {}: {}",
                    spec.source,
                    spec.destination,
                    s.message()
                ));
            }
        };
        intentions.push(AppliedIntention {
            id: created.id,
            source: spec.source.clone(),
            destination: spec.destination.clone(),
            action: spec.action.to_string(),
            description: spec.description.clone(),
        });
    }
    println!(
        "  ✓ intentions  {} applied ({owner}){}; everything else is denied",
        intentions.len(),
        if kept > 0 {
            format!(", {kept} of an operator's kept")
        } else {
            String::new()
        }
    );
    Ok(intentions)
}

/// Writes a service's configs, starts its app and its sidecar, and vouches for each with
/// the node. Sidecars run as `agentmesh-proxy run` when `proxy_executable` is given, else
/// as `agentmesh proxy run`.
async fn start_service(
    p: &Planned,
    mesh: &Mesh<'_>,
    sup: &mut Supervisor,
    node: &mut NodeAdminClient<Channel>,
    proxy_executable: Option<&Path>,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    let Mesh { layout, plan, .. } = *mesh;
    mesh.ports.release_service(p);
    let stem = p.spec.file_stem();
    let name = &p.spec.name;
    let mut app_cmd =
        match render::app_config(p, plan, mesh.scenario, mesh.llm, mesh.model, layout)? {
            Some(config) => {
                let path = layout.config_file(&stem, config.kind);
                write_file(&path, &config.text)?;
                let mut cmd = agentmesh_command()?;
                cmd.args([config.kind, "run", "--config"]).arg(path);
                cmd
            }
            None => {
                let mut cmd = Recipe::new(&p.spec.command[0]);
                cmd.args(&p.spec.command[1..]).envs(render::process_env(p));
                cmd
            }
        };
    if let Some(g) = gid {
        app_cmd.gid(g);
    }
    let app_stdout =
        (p.spec.kind == ServiceKind::Gateway).then(|| layout.log(&format!("{stem}.audit.jsonl")));
    let pid = sup.spawn(
        name,
        app_cmd,
        &layout.log(&format!("{stem}.log")),
        app_stdout.as_deref(),
        Some(name),
    )?;
    register_launch(node, pid, name).await?;
    if !p.spec.sidecar {
        return Ok(());
    }

    let path = layout.config_file(&stem, "proxy");
    write_file(
        &path,
        &render::sidecar_config(p, plan, mesh.scenario, layout)?,
    )?;
    let mut cmd = match proxy_executable {
        Some(exe) => child_command(exe),
        None => {
            let mut cmd = agentmesh_command()?;
            cmd.arg("proxy");
            cmd
        }
    };
    cmd.args(["run", "--config"]).arg(path);
    if let Some(g) = gid {
        cmd.gid(g);
    }
    let pid = sup.spawn(
        &format!("{name} sidecar"),
        cmd,
        &layout.log(&format!("{stem}.proxy.log")),
        Some(&layout.log(&format!("{stem}.access.jsonl"))),
        Some(name),
    )?;
    register_launch(node, pid, name).await
}

/// Waits until the service's sidecar (or in-process agent) has its SVID and the app
/// answers.
async fn wait_ready(p: &Planned, sup: &mut Supervisor) -> anyhow::Result<()> {
    let admin_addr = &p.admin;
    let whose = if p.spec.sidecar {
        format!("{}'s sidecar to get its SVID", p.spec.name)
    } else {
        format!("{} to get its SVID and the intentions", p.spec.name)
    };
    wait_until(&whose, sup, || async move {
        matches!(http_get(admin_addr, "/healthz").await, Some((200, _)))
    })
    .await?;
    if !p.spec.sidecar {
        println!(
            "  ✓ {:<11} {} (in-process mTLS {})",
            p.spec.name, p.id, p.inbound
        );
        return Ok(());
    }
    let (app, kind) = (&p.app, p.spec.kind);
    wait_until(&format!("{} to answer", p.spec.name), sup, || async move {
        match kind {
            ServiceKind::Process => LocalStream::connect(app).await.is_ok(),
            _ => matches!(http_get(app, "/healthz").await, Some((200, _))),
        }
    })
    .await?;
    println!("  ✓ {:<11} {} (sidecar {})", p.spec.name, p.id, p.inbound);
    Ok(())
}

/// This binary, to run one of its own subcommands as a child.
fn agentmesh_command() -> anyhow::Result<Recipe> {
    let exe = std::env::current_exe().context("cannot find the agentmesh binary")?;
    Ok(child_command(&exe))
}

/// The `agentmesh-proxy` beside this binary when it comes from the same build. A plain
/// `cargo run` builds only `agentmesh`, leaving none or an older one; the sidecars then run
/// as `agentmesh proxy run`, which is the same sidecar in the larger executable.
fn proxy_executable() -> anyhow::Result<Option<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find the agentmesh binary")?;
    let found = agentmesh::proxy_executable_beside(&exe);
    if found.is_none() && exe.with_file_name(agentmesh::PROXY_EXECUTABLE).exists() {
        println!(
            "  note: {} beside {} is from another build; sidecars run as `agentmesh proxy run`",
            agentmesh::PROXY_EXECUTABLE,
            exe.display()
        );
    }
    Ok(found)
}

/// `exe` as a child of `up`, with the environment every child gets.
fn child_command(exe: &Path) -> Recipe {
    let mut cmd = Recipe::new(exe);
    // Children get their sockets from flags and configs, never from the caller's shell; and
    // each names itself in traces (agentmesh-proxy/NAME, agentmesh-agent/NAME, ...), so one
    // OTEL_SERVICE_NAME from the shell must not rename them all. The other OTEL_* variables
    // (the endpoint above all) pass through.
    cmd.env_remove(ADMIN_SOCKET_ENV)
        .env_remove(WORKLOAD_SOCKET_ENV)
        .env_remove("OTEL_SERVICE_NAME");
    cmd
}

async fn wait_until<F, Fut>(what: &str, sup: &mut Supervisor, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if let Some((name, status, log)) = sup.exited() {
            bail!(
                "{name} exited ({status}) while waiting for {what}; the end of {}:\n{}",
                log.display(),
                tail(&log, 15)
            );
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {START_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Vouches for a child with the node: the process `pid` is service `service`.
///
/// # Errors
/// Its start time cannot be read (it exited), or the node refused.
pub async fn register_launch(
    node: &mut NodeAdminClient<Channel>,
    pid: u32,
    service: &str,
) -> anyhow::Result<()> {
    let start_time = agentmesh_node::process_start_time(pid)
        .with_context(|| format!("cannot read the start time of {service} (pid {pid})"))?;
    node.register_launch(RegisterLaunchRequest {
        pid,
        start_time,
        selectors: vec![format!("launcher:service:{service}")],
    })
    .await
    .map_err(|s| {
        anyhow!(
            "the node refused to register {service} (pid {pid}): {}",
            s.message()
        )
    })?;
    Ok(())
}
