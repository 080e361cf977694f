//! `agentmesh up`: one command from a fresh clone to a working mesh. It starts the server and
//! the node, then every service of the scenario and its sidecar as child processes, vouches
//! for each child over the node's admin socket (`launcher:service:NAME`), applies the
//! scenario's intentions, prints a status table, and shows one question answered and one call
//! refused on purpose. Ctrl-C stops every child.

pub mod scenario;
pub mod supervisor;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{
    CreateEntryRequest, CreateIntentionRequest, DeleteIntentionRequest, Entry,
    GenerateJoinTokenRequest, GetBundleRequest, ListEntriesRequest, ListIntentionsRequest,
    RegisterLaunchRequest,
};
use agentmesh_sdk::local::{LocalAddr, LocalStream};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;

use self::scenario::{DEFAULT_QUESTION, DEFAULT_SCENARIO, Scenario, ServiceKind, ServiceSpec};
use self::supervisor::{Recipe, Supervisor, tail};
use super::server::Signals;
use super::{ADMIN_SOCKET_ENV, DEFAULT_DATA_DIR, WORKLOAD_SOCKET_ENV};

/// `agentmesh up` flags.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// A built-in scenario (planner-executor, research-team, threat-pipeline) or a scenario file
    #[arg(long, value_name = "NAME|FILE", default_value = DEFAULT_SCENARIO)]
    pub scenario: String,
    /// Where inference comes from: offline (embedded), ollama:URL or openai:URL
    /// (key from $OPENAI_API_KEY)
    #[arg(
        long,
        value_name = "offline|ollama:URL|openai:URL",
        default_value = "offline"
    )]
    pub llm: String,
    /// The provider's model for ollama/openai [default: llama3.2 / gpt-4o-mini]
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The mesh's data dir: the server's state, the node's, configs, logs, env
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// The model name every agent asks the gateway for; the gateway maps it to `--llm`.
const MODEL: &str = agentmesh_agents::config::DEFAULT_MODEL;
/// How long any one thing may take to come up before `up` gives up and cleans up.
const START_PATIENCE: Duration = Duration::from_secs(60);

// === --llm ===

/// Where inference comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Llm {
    /// The embedded deterministic provider.
    Offline,
    /// An Ollama server.
    Ollama(String),
    /// An OpenAI-compatible server; the key comes from `$OPENAI_API_KEY`.
    Openai(String),
}

impl Llm {
    /// Parses `--llm`.
    ///
    /// # Errors
    /// An unknown scheme or a URL that is not http(s).
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        let v = value.trim();
        if v == "offline" {
            return Ok(Llm::Offline);
        }
        let (scheme, url) = v.split_once(':').unwrap_or((v, ""));
        let check_url = |url: &str| -> anyhow::Result<String> {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                bail!(
                    "invalid --llm {value:?}: {scheme}: needs an http:// or https:// URL, like {scheme}:http://127.0.0.1:11434"
                );
            }
            Ok(url.trim_end_matches('/').to_owned())
        };
        match scheme {
            "ollama" => Ok(Llm::Ollama(check_url(url)?)),
            "openai" => Ok(Llm::Openai(check_url(url)?)),
            _ => bail!(
                "invalid --llm {value:?}: unknown scheme {scheme:?} (use offline, ollama:URL or openai:URL)"
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Llm::Offline => "offline (embedded, deterministic)".into(),
            Llm::Ollama(u) => format!("ollama at {u}"),
            Llm::Openai(u) => format!("openai-compatible at {u}"),
        }
    }
}

// === the plan: paths and ports, decided before anything starts ===

/// Every path `up` uses, under the data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data dir (absolute); also the server's data dir.
    pub data: PathBuf,
    logs: PathBuf,
    configs: PathBuf,
    /// `<data>/run/NAME/`: each service's app, sidecar-port and admin sockets, 0700.
    run: PathBuf,
    admin_socket: PathBuf,
    node_socket: PathBuf,
    node_admin_socket: PathBuf,
    node_data: PathBuf,
    bundle: PathBuf,
    pid_file: PathBuf,
    /// `<data>/mesh.json`, how `agentmesh ask` finds the entry.
    pub mesh_file: PathBuf,
    env_file: PathBuf,
}

impl Layout {
    fn new(data: &Path) -> anyhow::Result<Self> {
        let data = std::path::absolute(data)
            .with_context(|| format!("invalid --data-dir {}", data.display()))?;
        Ok(Self {
            logs: data.join("logs"),
            configs: data.join("services"),
            run: data.join("run"),
            admin_socket: data.join(super::ADMIN_SOCKET_FILE),
            node_socket: data.join("node.sock"),
            node_admin_socket: data.join("node-admin.sock"),
            node_data: data.join("node"),
            bundle: data.join("bundle.pem"),
            pid_file: data.join("up.pid"),
            mesh_file: mesh_file(&data),
            env_file: data.join("env"),
            data,
        })
    }
}

/// Where `up` writes the running mesh's description.
pub fn mesh_file(data: &Path) -> PathBuf {
    data.join("mesh.json")
}

/// What `up` writes to `<data>/mesh.json` for `agentmesh ask` and scripts.
#[derive(Debug, Serialize, Deserialize)]
pub struct MeshInfo {
    /// The scenario's name.
    pub scenario: String,
    /// The entry service.
    pub entry: String,
    /// `http://127.0.0.1:PORT`, where questions go.
    pub entry_url: String,
    /// The entry's kind: `frontend` (log in first, then `/ask`) or an agent.
    #[serde(default)]
    pub entry_kind: String,
    /// The pid of `agentmesh up`.
    pub pid: u32,
    /// Every service.
    pub services: Vec<ServiceInfo>,
}

/// One service in mesh.json.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// agent, gateway or process.
    pub kind: String,
    /// The app's plain listener.
    pub app: String,
    /// The sidecar's mTLS listener.
    pub inbound: String,
    /// The sidecar's admin listener.
    pub admin: String,
    /// Upstream service → the sidecar's local port for it.
    pub upstreams: BTreeMap<String, String>,
}

struct Planned {
    spec: ServiceSpec,
    id: String,
    /// Where the app listens: a Unix socket only its sidecar's user reaches, or loopback TCP
    /// for the listeners meant for people (the frontend, an entry agent with no frontend)
    /// and for `kind = "process"` apps, which get a port in `$PORT`.
    app: LocalAddr,
    inbound: SocketAddr,
    /// The sidecar's (or in-process agent's) admin: a Unix socket.
    admin: LocalAddr,
    /// (destination, local listener); includes the self-check's probe.
    upstreams: Vec<(String, LocalAddr)>,
}

impl Planned {
    fn upstream(&self, dest: &str) -> Option<&LocalAddr> {
        self.upstreams
            .iter()
            .find(|(d, _)| d == dest)
            .map(|(_, a)| a)
    }
}

/// Holds free ports until the plan is complete, so no two services get the same one.
struct PortPool(Vec<TcpListener>);

/// The lowest port the kernel hands out for outgoing connections (and for `bind(0)`).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

impl PortPool {
    /// A free loopback port below the ephemeral range: a port the kernel picked for
    /// `bind(0)` is released again before the child binds it, and in between any outgoing
    /// connection on the host may be given the same number; below the range only another
    /// listener can take it.
    fn take(&mut self) -> anyhow::Result<SocketAddr> {
        use std::hash::{BuildHasher, Hasher};
        const LOWEST: u16 = 20000;
        let ceiling = ephemeral_floor();
        if ceiling > LOWEST + 100 {
            let span = u64::from(ceiling - LOWEST);
            for attempt in 0..64u64 {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(attempt);
                let port = LOWEST + u16::try_from(h.finish() % span).unwrap_or(0);
                if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                    self.0.push(l);
                    return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
                }
            }
        }
        let l = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
        let addr = l.local_addr().context("no free loopback port")?;
        self.0.push(l);
        Ok(addr)
    }
}

/// A socket in the service's own 0700 directory under `<data>/run/`.
fn socket_in(layout: &Layout, service: &str, file: &str) -> anyhow::Result<LocalAddr> {
    let path = layout.run.join(service).join(file);
    format!("unix://{}", path.display()).parse().map_err(|e| {
        anyhow!(
            "service {service}: {e}; choose a shorter --data-dir (Unix socket paths are limited)"
        )
    })
}

fn plan(scenario: &Scenario, layout: &Layout) -> anyhow::Result<(Vec<Planned>, SocketAddr)> {
    // Fixed ports first: a port in use is the most common start failure, and it must be
    // found before any child exists.
    for s in &scenario.services {
        if let Some(addr) = s.listen {
            TcpListener::bind(addr).map_err(|e| {
                anyhow!(
                    "service {}: listen address {addr} is not available: {e}",
                    s.name
                )
            })?;
        }
    }
    let mut pool = PortPool(Vec::new());
    let server = pool.take()?;
    let mut planned = Vec::new();
    let has_frontend = scenario
        .services
        .iter()
        .any(|s| s.kind == ServiceKind::Frontend);
    for s in &scenario.services {
        // People reach the frontend (or, with no frontend, the entry agent) directly; a
        // plain program gets a port. Every other app is reachable only by its sidecar.
        let for_people = s.kind == ServiceKind::Frontend
            || (!has_frontend && s.name == scenario.entry)
            || s.kind == ServiceKind::Process;
        let app = match s.listen {
            Some(a) => LocalAddr::from(a),
            None if for_people => LocalAddr::from(pool.take()?),
            None => socket_in(layout, &s.name, "app.sock")?,
        };
        let mut dests = s.upstreams.clone();
        if let Some(c) = &scenario.self_check
            && c.source == s.name
            && !s.upstreams.contains(&c.destination)
        {
            dests.push(c.destination.clone());
        }
        let mut upstreams = Vec::new();
        for d in dests {
            let listen = if s.kind == ServiceKind::Process {
                LocalAddr::from(pool.take()?)
            } else {
                socket_in(layout, &s.name, &format!("to-{}.sock", file_safe(&d)))?
            };
            upstreams.push((d, listen));
        }
        planned.push(Planned {
            spec: s.clone(),
            id: scenario.id_of(&s.name).to_string(),
            app,
            inbound: pool.take()?,
            admin: socket_in(layout, &s.name, "admin.sock")?,
            upstreams,
        });
    }
    Ok((planned, server))
}

// === helpers ===

/// A service name as a file name (`team/planner` → `team_planner`).
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A TOML (and JSON) string literal.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a str serializes"))
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    agentmesh_proto::unix::create_private_dir(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    // Write then rename, so a crash never leaves half a config behind.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn agentmesh_command() -> anyhow::Result<Recipe> {
    let exe = std::env::current_exe().context("cannot find the agentmesh binary")?;
    let mut cmd = Recipe::new(exe);
    // Children get their sockets from flags and configs, never from the caller's shell; and
    // each names itself in traces (agentmesh-proxy/NAME, agentmesh-agent/NAME, ...), so one
    // OTEL_SERVICE_NAME from the shell must not rename them all. The other OTEL_* variables
    // (the endpoint above all) pass through.
    cmd.env_remove(ADMIN_SOCKET_ENV)
        .env_remove(WORKLOAD_SOCKET_ENV)
        .env_remove("OTEL_SERVICE_NAME");
    Ok(cmd)
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

/// A bare HTTP/1.0 GET on a local address: status and body, or None when nothing answers.
async fn http_get(addr: &LocalAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = LocalStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// POSTs JSON and returns the status and the JSON answer (Null when the body is not JSON).
///
/// # Errors
/// Nothing answered, or no answer within `timeout`.
pub async fn post_json(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .with_context(|| format!("invalid URL {url:?}"))?;
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow!("no answer from {url} within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {url}: {e}"))
}

/// [`post_json`] over a local address (a sidecar's Unix socket).
///
/// # Errors
/// Nothing answered, or no answer within `timeout`.
async fn post_json_local(
    target: &LocalAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    use http_body_util::{BodyExt, Full};
    let client = agentmesh_sdk::local::http_client::<Full<bytes::Bytes>>(target);
    let req = http::Request::post(format!("{}{path}", target.http_base()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .with_context(|| format!("invalid path {path:?}"))?;
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow!("no answer from {target} within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {target}: {e}"))
}

/// How a user runs this binary again: `agentmesh` when that is what `$PATH` finds, else its
/// full path (after `cargo run` it is in the target dir, not on `$PATH`).
fn how_to_run_me() -> String {
    let Ok(me) = std::env::current_exe() else {
        return "agentmesh".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("agentmesh")).ok().as_deref() == Some(me.as_path())
        })
    });
    if on_path {
        "agentmesh".into()
    } else {
        me.display().to_string()
    }
}

/// An `/ask` answer's `agents` as `a → b → c`.
pub fn agents_path(answer: &Value) -> String {
    answer["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default()
}

/// Who `up`'s self-check and `agentmesh ask` log in as at a dev-login frontend.
fn dev_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty() && u.len() <= 100)
        .unwrap_or_else(|| "agentmesh-cli".into())
}

/// Logs in at a dev-login frontend (`POST /login`) and returns the session cookie.
async fn frontend_session(base: &str, timeout: Duration) -> anyhow::Result<String> {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let form = format!(
        "name={}",
        dev_user().replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let req = http::Request::post(format!("{base}/login"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(bytes::Bytes::from(form)))
        .with_context(|| format!("invalid URL {base:?}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow!("no answer from {base}/login within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {base}/login: {e}"))?;
    let cookie = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .join("; ");
    if cookie.is_empty() {
        bail!(
            "the frontend at {base} gave no session ({}); it logs in with OIDC: ask from its page instead",
            resp.status()
        );
    }
    Ok(cookie)
}

/// Asks the mesh's entry: an agent's `/ask` directly, or a frontend's after a dev login.
///
/// # Errors
/// Nothing answered, or the frontend would not log in.
pub async fn ask_entry(
    base: &str,
    via_frontend: bool,
    question: &str,
    traceparent: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    let cookie;
    if via_frontend {
        cookie = frontend_session(base, timeout).await?;
        headers.push(("cookie", &cookie));
    }
    if let Some(tp) = traceparent {
        headers.push(("traceparent", tp));
    }
    post_json(
        &format!("{base}/ask"),
        &json!({ "question": question }),
        &headers,
        timeout,
    )
    .await
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Is another `agentmesh up` running from this data dir?
fn check_not_running(layout: &Layout) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(&layout.pid_file) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if pid != std::process::id() && args.iter().any(|a| *a == b"up") {
        bail!(
            "a mesh is already running from {} (agentmesh up, pid {pid}); stop it with Ctrl-C, \
             or use another --data-dir",
            layout.data.display()
        );
    }
    Ok(())
}

// === starting ===

struct Started {
    /// (intention id, source, destination, action, description)
    intentions: Vec<(String, String, String, String, String)>,
}

async fn admin_client(layout: &Layout) -> anyhow::Result<AdminClient<Channel>> {
    let channel = agentmesh_proto::unix::connect(&layout.admin_socket)
        .await
        .with_context(|| format!("cannot reach {}", layout.admin_socket.display()))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES))
}

async fn register_launch(
    node: &mut NodeAdminClient<Channel>,
    pid: u32,
    service: &str,
) -> anyhow::Result<()> {
    let start_time = agentmesh_node::attestor::process_start_time(pid)
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

fn proxy_toml(p: &Planned, all: &[Planned], layout: &Layout) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `agentmesh up`.\nservice = {}",
        q(&p.spec.name)
    );
    let _ = writeln!(
        t,
        "workload_api = {}",
        q(&format!("unix://{}", layout.node_socket.display()))
    );
    let _ = writeln!(
        t,
        "\n[inbound]\nlisten = {}\napp = {}\nprotocol = \"http\"",
        q(&p.inbound.to_string()),
        q(&p.app.to_string())
    );
    for (dest, listen) in &p.upstreams {
        let address = all
            .iter()
            .find(|o| &o.spec.name == dest)
            .map(|o| o.inbound.to_string())
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "\n[[upstream]]\ndestination = {}\nlisten = {}\naddress = {}\nprotocol = \"http\"",
            q(dest),
            q(&listen.to_string()),
            q(&address)
        );
    }
    let _ = writeln!(t, "\n[admin]\nlisten = {}", q(&p.admin.to_string()));
    t
}

fn agent_toml(p: &Planned, all: &[Planned], scenario: &Scenario, layout: &Layout) -> String {
    if !p.spec.sidecar {
        return in_process_agent_toml(p, all, layout);
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `agentmesh up`.\nrole = {}\nname = {}\nlisten = {}\nmodel = {}",
        q(p.spec.role.as_deref().unwrap_or_default()),
        q(&p.spec.name),
        q(&p.app.to_string()),
        q(MODEL)
    );
    for dest in &p.spec.upstreams {
        let Some(listen) = p.upstream(dest) else {
            continue;
        };
        let plays = scenario
            .service(dest)
            .and_then(ServiceSpec::plays)
            .unwrap_or("service");
        let _ = writeln!(
            t,
            "\n[[upstream]]\nname = {}\nrole = {}\nurl = {}",
            q(dest),
            q(plays),
            q(&upstream_url(listen))
        );
    }
    if let Some(kind) = &p.spec.search {
        let _ = writeln!(t, "\n[search]\nkind = {}", q(kind));
    }
    t
}

/// An agent with no sidecar (seed 001): it serves the port a sidecar's inbound would have
/// over mTLS itself, decides by the intentions, and calls each upstream's mTLS listener
/// pinning its SPIFFE ID. The self-check's probe destination is an upstream like the others.
fn in_process_agent_toml(p: &Planned, all: &[Planned], layout: &Layout) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `agentmesh up`: no sidecar, mTLS and intentions in-process.
role = {}
name = {}
listen = {}
model = {}",
        q(p.spec.role.as_deref().unwrap_or_default()),
        q(&p.spec.name),
        q(&p.inbound.to_string()),
        q(MODEL)
    );
    for (dest, _) in &p.upstreams {
        let Some(o) = all.iter().find(|o| &o.spec.name == dest) else {
            continue;
        };
        let plays = o.spec.plays().unwrap_or("service");
        let _ = writeln!(
            t,
            "\n[[upstream]]\nname = {}\nrole = {}\nurl = {}\nspiffe_id = {}",
            q(dest),
            q(plays),
            q(&format!("https://{}", o.inbound)),
            q(&o.id)
        );
    }
    if let Some(kind) = &p.spec.search {
        let _ = writeln!(t, "\n[search]\nkind = {}", q(kind));
    }
    let _ = writeln!(
        t,
        "\n[mtls]\nworkload_api = {}\nadmin = {}",
        q(&format!("unix://{}", layout.node_socket.display())),
        q(&p.admin.to_string())
    );
    t
}

fn gateway_toml(p: &Planned, scenario: &Scenario, llm: &Llm, model: Option<&str>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `agentmesh up`.\nlisten = {}\n",
        q(&p.app.to_string())
    );
    match llm {
        Llm::Offline => t.push_str("[[provider]]\nname = \"llm\"\nkind = \"offline\"\n"),
        Llm::Ollama(url) => {
            let _ = writeln!(
                t,
                "[[provider]]\nname = \"llm\"\nkind = \"ollama\"\nurl = {}\nmodel = {}",
                q(url),
                q(model.unwrap_or("llama3.2"))
            );
        }
        Llm::Openai(url) => {
            let _ = writeln!(
                t,
                "[[provider]]\nname = \"llm\"\nkind = \"openai\"\nurl = {}\nmodel = {}\n{}",
                q(url),
                q(model.unwrap_or("gpt-4o-mini")),
                // The key stays in the environment; the config names the variable. Local
                // OpenAI-compatible servers (vLLM, llama.cpp) need none.
                if std::env::var_os("OPENAI_API_KEY").is_some() {
                    "api_key_env = \"OPENAI_API_KEY\""
                } else {
                    "api_key = \"\"  # $OPENAI_API_KEY is not set: no key is sent"
                }
            );
        }
    }
    let _ = writeln!(t, "\n[[model]]\nname = {}\nproviders = [\"llm\"]", q(MODEL));
    // Who reaches the gateway is the intentions' business; the gateway adds what each caller
    // may spend. A generous budget, so a demo never runs dry, but a budget all the same.
    for s in &scenario.services {
        if s.name != p.spec.name && scenario.allows(&s.name, &p.spec.name) {
            let _ = writeln!(
                t,
                "\n[[caller]]\nid = {}\nmodels = [\"*\"]\ntokens_per_window = 1000000\nwindow = \"1h\"\nmax_request_bytes = 262144",
                q(&s.name)
            );
        }
    }
    t
}

/// `[delegation]` for agents and the gateway when the scenario has a frontend: each service
/// fetches its own SVID (it is registered with the same launcher selector as its sidecar),
/// verifies the user token and the chain of the agents before it, and signs its own link.
fn delegation_toml(scenario: &Scenario, layout: &Layout) -> String {
    let Some(frontend) = scenario
        .services
        .iter()
        .find(|s| s.kind == ServiceKind::Frontend)
    else {
        return String::new();
    };
    format!(
        "\n[delegation]\nworkload_api = {}\nissuer = {}\naudience = {}\nrequire = true\n",
        q(&format!("unix://{}", layout.node_socket.display())),
        q(&scenario.id_of(&frontend.name).to_string()),
        q(&scenario.trust_domain)
    )
}

fn frontend_toml(p: &Planned, all: &[Planned], layout: &Layout) -> String {
    let mut t = String::new();
    // No [oidc]: the loopback-only dev login, labelled as such on the page and in the log.
    let _ = writeln!(
        t,
        "# Written by `agentmesh up`.\nlisten = {}\nworkload_api = {}",
        q(&p.app.to_string()),
        q(&format!("unix://{}", layout.node_socket.display()))
    );
    if let Some(first) = p.spec.upstreams.first() {
        let _ = writeln!(t, "entry = {}", q(first));
    }
    for dest in &p.spec.upstreams {
        let Some(listen) = p.upstream(dest) else {
            continue;
        };
        let _ = writeln!(
            t,
            "\n[[upstream]]\nname = {}\nurl = {}",
            q(dest),
            q(&upstream_url(listen))
        );
    }
    if let Some(oidc) = &p.spec.oidc {
        let mut doc = toml::Table::new();
        doc.insert("oidc".into(), toml::Value::Table(oidc.clone()));
        // Validated with the scenario, so it serializes.
        let _ = write!(t, "\n{}", toml::to_string(&doc).unwrap_or_default());
    }
    // The Security Inspector reads the control plane over its admin sockets (same user,
    // 0600) and follows every sidecar's decisions.
    let _ = writeln!(
        t,
        "\n[inspector]\nserver_admin_socket = {}\nnode_admin_socket = {}",
        q(&layout.admin_socket.display().to_string()),
        q(&layout.node_admin_socket.display().to_string())
    );
    for o in all {
        let _ = writeln!(
            t,
            "\n[[inspector.proxy]]\nname = {}\nadmin = {}",
            q(&o.spec.name),
            q(&o.admin.to_string())
        );
    }
    t
}

/// How an app names its sidecar's port for a destination: the socket itself, or an
/// `http://` URL for a TCP port.
fn upstream_url(listen: &LocalAddr) -> String {
    if listen.is_unix() {
        listen.to_string()
    } else {
        listen.http_base()
    }
}

fn env_var_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

async fn start_all(
    scenario: &Scenario,
    llm: &Llm,
    model: Option<&str>,
    layout: &Layout,
    plans: &[Planned],
    server_addr: SocketAddr,
    sup: &mut Supervisor,
) -> anyhow::Result<Started> {
    let td = scenario.trust_domain().to_string();
    // --- server ---
    let mut cmd = agentmesh_command()?;
    cmd.args(["server", "run", "--trust-domain", &td, "--listen"])
        .arg(server_addr.to_string())
        .arg("--data-dir")
        .arg(&layout.data)
        .arg("--admin-socket")
        .arg(&layout.admin_socket);
    sup.spawn("server", cmd, &layout.logs.join("server.log"), None, None)?;
    let admin_socket = layout.admin_socket.clone();
    wait_until("the server's admin socket", sup, || {
        let p = admin_socket.clone();
        async move { std::os::unix::net::UnixStream::connect(&p).is_ok() }
    })
    .await?;
    let mut admin = admin_client(layout).await?;
    println!("  ✓ server      trust domain {td}, listening on {server_addr}");

    // --- node ---
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
        &super::output::certs_pem(&bundle.x509_authorities),
    )?;
    let mut cmd = agentmesh_command()?;
    cmd.args(["node", "run", "--server"])
        .arg(server_addr.to_string())
        .arg("--socket")
        .arg(&layout.node_socket)
        .arg("--trust-bundle")
        .arg(&layout.bundle)
        .arg("--data-dir")
        .arg(&layout.node_data)
        .arg("--admin-socket")
        .arg(&layout.node_admin_socket)
        // In the environment, not argv, so the token is not in `ps`.
        .env(super::JOIN_TOKEN_ENV, &token);
    sup.spawn("node", cmd, &layout.logs.join("node.log"), None, None)?;
    let sockets = [layout.node_socket.clone(), layout.node_admin_socket.clone()];
    wait_until("the node's sockets", sup, || {
        let s = sockets.clone();
        async move {
            s.iter()
                .all(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        }
    })
    .await?;
    let mut node = NodeAdminClient::new(
        agentmesh_proto::unix::connect(&layout.node_admin_socket)
            .await
            .context("cannot reach the node's admin socket")?,
    );
    println!(
        "  ✓ node        Workload API at unix://{}",
        layout.node_socket.display()
    );

    // --- entries: one per service, matched by the launcher selector ---
    let existing = admin
        .list_entries(ListEntriesRequest {})
        .await
        .map_err(|s| anyhow!("cannot list entries: {}", s.message()))?
        .into_inner()
        .entries;
    for p in plans {
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
                }),
            })
            .await
            .map_err(|s| anyhow!("cannot register {}: {}", p.spec.name, s.message()))?;
    }
    println!(
        "  ✓ entries     {} services registered (launcher:service:NAME)",
        plans.len()
    );

    // --- intentions: the scenario's replace whatever `up` applied before; an operator's stay ---
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
        intentions.push((
            created.id,
            spec.source.clone(),
            spec.destination.clone(),
            spec.action.to_string(),
            spec.description.clone(),
        ));
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

    // --- services and sidecars ---
    for p in plans {
        let stem = p.spec.file_stem();
        let name = &p.spec.name;
        let (app_cmd, app_stdout) = match p.spec.kind {
            ServiceKind::Agent => {
                let path = layout.configs.join(format!("{stem}.agent.toml"));
                write_file(
                    &path,
                    &(agent_toml(p, plans, scenario, layout) + &delegation_toml(scenario, layout)),
                )?;
                let mut cmd = agentmesh_command()?;
                cmd.args(["agent", "run", "--config"]).arg(path);
                (cmd, None)
            }
            ServiceKind::Gateway => {
                let path = layout.configs.join(format!("{stem}.gateway.toml"));
                write_file(
                    &path,
                    &(gateway_toml(p, scenario, llm, model) + &delegation_toml(scenario, layout)),
                )?;
                let mut cmd = agentmesh_command()?;
                cmd.args(["gateway", "run", "--config"]).arg(path);
                (cmd, Some(layout.logs.join(format!("{stem}.audit.jsonl"))))
            }
            ServiceKind::Process => {
                let mut cmd = Recipe::new(&p.spec.command[0]);
                cmd.args(&p.spec.command[1..])
                    .env("AGENTMESH_SERVICE", name)
                    .env("AGENTMESH_LISTEN", p.app.to_string())
                    .env(
                        "PORT",
                        p.app
                            .tcp_socket_addr()
                            .map(|a| a.port().to_string())
                            .unwrap_or_default(),
                    )
                    .env("AGENTMESH_MODEL", MODEL)
                    .envs(&p.spec.env);
                for (dest, listen) in &p.upstreams {
                    cmd.env(
                        format!("AGENTMESH_UPSTREAM_{}", env_var_name(dest)),
                        upstream_url(listen),
                    );
                }
                (cmd, None)
            }
            ServiceKind::Frontend => {
                let path = layout.configs.join(format!("{stem}.frontend.toml"));
                write_file(&path, &frontend_toml(p, plans, layout))?;
                let mut cmd = agentmesh_command()?;
                cmd.args(["frontend", "run", "--config"]).arg(path);
                (cmd, None)
            }
        };
        let pid = sup.spawn(
            name,
            app_cmd,
            &layout.logs.join(format!("{stem}.log")),
            app_stdout.as_deref(),
            Some(name),
        )?;
        register_launch(&mut node, pid, name).await?;
        if !p.spec.sidecar {
            continue;
        }

        let path = layout.configs.join(format!("{stem}.proxy.toml"));
        write_file(&path, &proxy_toml(p, plans, layout))?;
        let mut cmd = agentmesh_command()?;
        cmd.args(["proxy", "run", "--config"]).arg(path);
        let pid = sup.spawn(
            &format!("{name} sidecar"),
            cmd,
            &layout.logs.join(format!("{stem}.proxy.log")),
            Some(&layout.logs.join(format!("{stem}.access.jsonl"))),
            Some(name),
        )?;
        register_launch(&mut node, pid, name).await?;
    }

    // --- ready: every sidecar has its SVID and the intentions, every app answers ---
    for p in plans {
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
            continue;
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
    }
    Ok(Started { intentions })
}

// === after start ===

fn status_table(plans: &[Planned], expiries: &BTreeMap<String, u64>, started: &Started) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "SPIFFE ID".to_owned(),
        "SVID EXPIRES".to_owned(),
        "APP".to_owned(),
        "SIDECAR".to_owned(),
        "UPSTREAMS (local port)".to_owned(),
    ]];
    let now = now_unix();
    for p in plans {
        let expiry = expiries.get(&p.spec.name).map_or("?".to_owned(), |e| {
            format!("{} (in {}m)", rfc3339(*e), e.saturating_sub(now) / 60)
        });
        let ups = p
            .upstreams
            .iter()
            .map(|(d, a)| {
                if p.spec.sidecar {
                    format!("{d}={a}")
                } else {
                    format!("{d}=mTLS")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let (app, sidecar) = if p.spec.sidecar {
            (p.app.to_string(), p.inbound.to_string())
        } else {
            (format!("{} (mTLS)", p.inbound), "none".to_owned())
        };
        rows.push([
            p.spec.name.clone(),
            p.id.clone(),
            expiry,
            app,
            sidecar,
            if ups.is_empty() { "-".into() } else { ups },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    let _ = writeln!(out, "\n  INTENTIONS (everything else is denied)");
    for (id, src, dst, action, desc) in &started.intentions {
        let _ = writeln!(
            out,
            "  {id}  {src} → {dst}  {action}{}",
            if desc.is_empty() {
                String::new()
            } else {
                format!("  ({desc})")
            }
        );
    }
    out
}

/// The self-check: one question through the entry, and the refusal the scenario names.
/// Returns the lines to print and whether both held.
async fn self_check(scenario: &Scenario, plans: &[Planned], started: &Started) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let entry = plans
        .iter()
        .find(|p| p.spec.name == scenario.entry)
        .unwrap_or_else(|| unreachable!("validated"));
    let question = scenario
        .self_check
        .as_ref()
        .and_then(|c| c.question.clone())
        .unwrap_or_else(|| DEFAULT_QUESTION.to_owned());
    let via_frontend = entry.spec.kind == ServiceKind::Frontend;
    let answered = if entry.spec.oidc.is_some() {
        // Only a person can log in at an OIDC issuer; the refusal below still runs.
        let _ = writeln!(
            out,
            "  - ask skipped: the frontend logs in with OIDC ({}); ask from its page",
            entry
                .spec
                .oidc
                .as_ref()
                .and_then(|o| o.get("issuer"))
                .and_then(|i| i.as_str())
                .unwrap_or("?")
        );
        None
    } else {
        Some(
            ask_entry(
                &format!("http://{}", entry.app),
                via_frontend,
                &question,
                None,
                Duration::from_secs(300),
            )
            .await,
        )
    };
    match answered {
        None => {}
        Some(answered) => match answered {
            Ok((200, v)) => {
                let agents = agents_path(&v);
                let _ = writeln!(
                    out,
                    "  ✓ ask {question:?}\n      answered by {agents} (trace {})",
                    v["trace_id"].as_str().unwrap_or("?")
                );
            }
            Ok((status, v)) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "  ✗ ask {question:?}: {status} {}",
                    v.get("error").unwrap_or(&v)
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  ✗ ask {question:?}: {e:#}");
            }
        },
    }
    if let Some(c) = &scenario.self_check {
        let source = plans
            .iter()
            .find(|p| p.spec.name == c.source)
            .unwrap_or_else(|| unreachable!("validated"));
        let port = source
            .upstream(&c.destination)
            .unwrap_or_else(|| unreachable!("planned"));
        // An agent without a sidecar makes the call itself when its admin's probe asks. Both
        // are Unix sockets that only this user can use: the self-check has no back door.
        let (target, prefix, through) = if source.spec.sidecar {
            (
                port.clone(),
                String::new(),
                format!("through {}'s sidecar", c.source),
            )
        } else {
            (
                source.admin.clone(),
                format!("/probe/{}", c.destination),
                format!("{}'s own in-process mTLS", c.source),
            )
        };
        let to_gateway = scenario
            .service(&c.destination)
            .is_some_and(|s| s.kind == ServiceKind::Gateway);
        let (path, body) = if to_gateway {
            (
                "/v1/chat/completions",
                json!({"model": MODEL, "messages": [{"role": "user", "content": "self-check"}]}),
            )
        } else {
            ("/ask", json!({"question": "self-check"}))
        };
        let what = format!("{} → {} ({through})", c.source, c.destination);
        match post_json_local(
            &target,
            &format!("{prefix}{path}"),
            &body,
            Duration::from_secs(30),
        )
        .await
        {
            Ok((403, v)) if v.get("reason").is_some() => {
                let intention = v["intention"].as_str();
                let decided = match intention {
                    Some(id) => {
                        let found = started.intentions.iter().find(|i| i.0 == id);
                        match found {
                            Some((_, s, d, a, desc)) => format!(
                                "intention {id} ({s} → {d} {a}{})",
                                if desc.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {desc}")
                                }
                            ),
                            None => format!("intention {id}"),
                        }
                    }
                    None => "no intention (the default is deny)".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  ✓ refused on purpose: {what}\n      decided by {decided}\n      reason: {}",
                    v["reason"].as_str().unwrap_or_default()
                );
            }
            Ok((status, v)) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "  ✗ {what} should be refused by intentions, but got {status}: {v}"
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  ✗ {what}: {e:#}");
            }
        }
    }
    (out, ok)
}

/// Keeps the mesh running until a signal: a child that exits is started again after its
/// backoff while the rest keep serving; a restarted app or sidecar is registered with the
/// node again, and a restarted node gets every registration back.
async fn supervise(
    sup: &mut Supervisor,
    signals: &mut Signals,
    layout: &Layout,
) -> anyhow::Result<()> {
    // Registrations the node has not taken yet (it may be restarting itself).
    let mut pending: Vec<(u32, String)> = Vec::new();
    loop {
        let next = sup
            .next_due()
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(1));
        tokio::select! {
            s = signals.recv() => {
                println!("\n{s}: stopping the mesh");
                return Ok(());
            }
            exit = sup.wait_exit() => {
                eprintln!(
                    "  ! {} exited ({}); starting it again in {:?}; the end of {}:\n{}",
                    exit.name,
                    exit.status,
                    exit.backoff,
                    exit.log.display(),
                    tail(&exit.log, 5)
                );
            }
            () = tokio::time::sleep(next) => {}
        }
        for index in sup.due() {
            match sup.restart(index) {
                Ok(c) => {
                    println!("  ↻ {} restarted (pid {})", c.name, c.pid);
                    if c.name == "node" {
                        pending = sup
                            .registered()
                            .filter_map(|c| Some((c.pid, c.service.clone()?)))
                            .collect();
                    } else if let Some(service) = &c.service {
                        pending.push((c.pid, service.clone()));
                    }
                }
                Err(e) => eprintln!("  ! {e:#}; trying again later"),
            }
        }
        if !pending.is_empty()
            && let Ok(channel) = agentmesh_proto::unix::connect(&layout.node_admin_socket).await
        {
            let mut node = NodeAdminClient::new(channel);
            let mut still = Vec::new();
            for (pid, service) in pending.drain(..) {
                if let Err(e) = register_launch(&mut node, pid, &service).await {
                    // A process that already exited again has nothing to register.
                    if agentmesh_node::attestor::process_start_time(pid).is_ok() {
                        tracing::debug!(error = %e, "registration retried later");
                        still.push((pid, service));
                    }
                }
            }
            pending = still;
        }
    }
}

/// Runs `agentmesh up` until Ctrl-C.
///
/// # Errors
/// A bad scenario or flag, a port in use, or any part failing to start; every child started
/// so far is stopped first.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let scenario = Scenario::resolve(&args.scenario)?;
    let llm = Llm::parse(&args.llm)?;
    let layout = Layout::new(&args.data_dir)?;
    let (plans, server_addr) = plan(&scenario, &layout)?;
    for dir in [&layout.data, &layout.logs, &layout.configs, &layout.run] {
        create_private_dir(dir)?;
    }
    for p in &plans {
        create_private_dir(&layout.run.join(&p.spec.name))?;
    }
    check_not_running(&layout)?;
    write_file(&layout.pid_file, &format!("{}\n", std::process::id()))?;
    let _ = std::fs::remove_file(&layout.mesh_file);

    println!(
        "agentmesh up: scenario {} ({} services), LLM {}, data dir {}",
        scenario.name,
        plans.len(),
        llm.describe(),
        layout.data.display()
    );
    let mut sup = Supervisor::default();
    let mut signals = Signals::new()?;
    let started = tokio::select! {
        r = start_all(&scenario, &llm, args.model.as_deref(), &layout, &plans, server_addr, &mut sup) => r,
        s = signals.recv() => Err(anyhow!("interrupted by {s} while starting")),
    };
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("  stopping the {} processes started so far", sup.len());
            sup.stop_all().await;
            let _ = std::fs::remove_file(&layout.pid_file);
            return Err(e.context(format!(
                "the mesh did not start (logs in {})",
                layout.logs.display()
            )));
        }
    };

    let mut expiries = BTreeMap::new();
    for p in &plans {
        if let Some((200, body)) = http_get(&p.admin, "/healthz").await
            && let Some(v) = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("expires_unix="))
                .and_then(|v| v.parse().ok())
        {
            expiries.insert(p.spec.name.clone(), v);
        }
    }
    println!("\n{}", status_table(&plans, &expiries, &started));

    let entry = plans
        .iter()
        .find(|p| p.spec.name == scenario.entry)
        .unwrap_or_else(|| unreachable!("validated"));
    let info = MeshInfo {
        scenario: scenario.name.clone(),
        entry: scenario.entry.clone(),
        entry_url: format!("http://{}", entry.app),
        entry_kind: format!("{:?}", entry.spec.kind).to_lowercase(),
        pid: std::process::id(),
        services: plans
            .iter()
            .map(|p| ServiceInfo {
                name: p.spec.name.clone(),
                spiffe_id: p.id.clone(),
                kind: format!("{:?}", p.spec.kind).to_lowercase(),
                app: p.app.to_string(),
                inbound: p.inbound.to_string(),
                admin: p.admin.to_string(),
                upstreams: p
                    .upstreams
                    .iter()
                    .map(|(d, a)| (d.clone(), a.to_string()))
                    .collect(),
            })
            .collect(),
    };
    write_file(
        &layout.mesh_file,
        &serde_json::to_string_pretty(&info).context("mesh.json")?,
    )?;
    let env = format!(
        "export {ADMIN_SOCKET_ENV}={}\nexport {WORKLOAD_SOCKET_ENV}=unix://{}\n",
        layout.admin_socket.display(),
        layout.node_socket.display()
    );
    write_file(&layout.env_file, &env)?;

    println!("  SELF-CHECK");
    let (report, ok) = self_check(&scenario, &plans, &started).await;
    print!("{report}");
    if !ok {
        println!(
            "  the mesh is up, but the self-check failed; the logs are in {}",
            layout.logs.display()
        );
    }
    println!(
        "\n  To use the CLI against this mesh (also in {}):\n{}",
        layout.env_file.display(),
        env.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if entry.spec.kind == ServiceKind::Frontend {
        println!(
            "\n  Open:  http://{}/  (the frontend; {})\n  Inspect: http://{}/inspector  (the Security Inspector: mesh, intentions, live decisions, requests)",
            entry.app,
            if entry.spec.oidc.is_some() {
                "OIDC login"
            } else {
                "dev login, loopback only"
            },
            entry.app
        );
    }
    println!(
        "{}  Ask:   {} ask \"your question\"{}\n  Logs:  {}\n  Ctrl-C stops the mesh.",
        if entry.spec.kind == ServiceKind::Frontend {
            ""
        } else {
            "\n"
        },
        how_to_run_me(),
        if args.data_dir == Path::new(DEFAULT_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", args.data_dir.display())
        },
        layout.logs.display()
    );

    let outcome = supervise(&mut sup, &mut signals, &layout).await;
    sup.stop_all().await;
    let _ = std::fs::remove_file(&layout.mesh_file);
    let _ = std::fs::remove_file(&layout.pid_file);
    if outcome.is_ok() {
        println!("stopped");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_flags_parse_and_unknown_schemes_are_refused() {
        assert_eq!(Llm::parse("offline").unwrap(), Llm::Offline);
        assert_eq!(
            Llm::parse("ollama:http://127.0.0.1:11434/").unwrap(),
            Llm::Ollama("http://127.0.0.1:11434".into())
        );
        assert_eq!(
            Llm::parse("openai:https://api.openai.com/v1").unwrap(),
            Llm::Openai("https://api.openai.com/v1".into())
        );
        for (bad, want) in [
            ("claude:http://x", "unknown scheme \"claude\""),
            ("ollama", "needs an http:// or https:// URL"),
            ("ollama:ftp://host:1", "needs an http:// or https:// URL"),
            ("", "unknown scheme"),
        ] {
            let e = Llm::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn every_port_in_a_plan_is_distinct() {
        let s = Scenario::resolve("threat-pipeline").unwrap();
        let layout = Layout::new(Path::new("/tmp/x")).unwrap();
        let (plans, server) = plan(&s, &layout).unwrap();
        let mut all = vec![LocalAddr::from(server)];
        for p in &plans {
            all.extend([p.app.clone(), p.inbound.into(), p.admin.clone()]);
            all.extend(p.upstreams.iter().map(|(_, a)| a.clone()));
        }
        let n = all.len();
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), n);
        // The self-check's probe gets a port on the orchestrator's sidecar.
        let orch = plans
            .iter()
            .find(|p| p.spec.name == "orchestrator")
            .unwrap();
        assert!(orch.upstream("gateway").is_some());
    }

    /// The hole this layout closes: an app port on loopback TCP is reachable by every local
    /// user past its sidecar, and a sidecar's outbound port lends its identity to anyone.
    #[test]
    fn only_listeners_meant_for_people_are_tcp() {
        for name in ["planner-executor", "research-team", "threat-pipeline"] {
            let s = Scenario::resolve(name).unwrap();
            let layout = Layout::new(Path::new("/tmp/x")).unwrap();
            let (plans, _) = plan(&s, &layout).unwrap();
            for p in &plans {
                assert!(
                    p.admin.is_unix(),
                    "{name}/{}: admin {}",
                    p.spec.name,
                    p.admin
                );
                for (d, a) in &p.upstreams {
                    assert!(a.is_unix(), "{name}/{}: upstream {d} at {a}", p.spec.name);
                }
                let people = p.spec.kind == ServiceKind::Frontend;
                assert_eq!(
                    p.app.is_unix(),
                    !people,
                    "{name}/{}: app {}",
                    p.spec.name,
                    p.app
                );
                if let Some(path) = p.app.unix_path() {
                    assert!(path.starts_with(layout.run.join(&p.spec.name)));
                }
            }
        }
    }

    #[test]
    fn planned_ports_stay_below_the_ephemeral_range() {
        let mut pool = PortPool(Vec::new());
        let floor = ephemeral_floor();
        for _ in 0..20 {
            let port = pool.take().unwrap().port();
            assert!(
                port < floor,
                "{port} is in the ephemeral range from {floor}"
            );
        }
        let mut ports: Vec<u16> = pool
            .0
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 20, "a port was handed out twice");
    }

    #[test]
    fn a_too_long_data_dir_is_one_clear_error() {
        let s = Scenario::resolve("planner-executor").unwrap();
        let deep = format!("/tmp/{}", "d".repeat(100));
        let layout = Layout::new(Path::new(&deep)).unwrap();
        let e = plan(&s, &layout).err().unwrap().to_string();
        assert!(e.contains("choose a shorter --data-dir"), "{e}");
    }

    #[test]
    fn a_fixed_port_in_use_is_found_before_anything_starts() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let text = scenario::BUILT_IN[0].1.replace(
            "name = \"planner\"\nkind = \"agent\"",
            &format!("name = \"planner\"\nkind = \"agent\"\nlisten = \"{addr}\""),
        );
        let s = Scenario::parse(&text, "s.toml").unwrap();
        let layout = Layout::new(Path::new("/tmp/x")).unwrap();
        let e = plan(&s, &layout).err().unwrap().to_string();
        assert!(
            e.contains(&format!(
                "service planner: listen address {addr} is not available"
            )),
            "{e}"
        );
    }

    #[test]
    fn generated_configs_parse_with_the_real_loaders() {
        let s = Scenario::resolve("planner-executor").unwrap();
        let layout = Layout::new(Path::new("/tmp/x")).unwrap();
        let (plans, _) = plan(&s, &layout).unwrap();
        for p in &plans {
            let proxy = proxy_toml(p, &plans, &layout);
            agentmesh_proxy::ProxyConfig::parse(Path::new("p.toml"), &proxy)
                .unwrap_or_else(|e| panic!("{e}\n{proxy}"));
            match p.spec.kind {
                ServiceKind::Agent => {
                    let a = agent_toml(p, &plans, &s, &layout);
                    agentmesh_agents::AgentConfig::parse(&a, Path::new("a.toml"))
                        .unwrap_or_else(|e| panic!("{e}\n{a}"));
                }
                ServiceKind::Gateway => {
                    for llm in [
                        Llm::Offline,
                        Llm::Ollama("http://127.0.0.1:11434".into()),
                        Llm::Openai("https://api.openai.com/v1".into()),
                    ] {
                        let g = gateway_toml(p, &s, &llm, None);
                        agentmesh_gateway::GatewayConfig::parse(&g, Path::new("g.toml"))
                            .unwrap_or_else(|e| panic!("{e}\n{g}"));
                        assert!(g.contains("id = \"executor\""), "{g}");
                        assert!(!g.contains("id = \"planner\""), "{g}");
                    }
                }
                ServiceKind::Frontend => {
                    let f = frontend_toml(p, &plans, &layout);
                    let cfg = agentmesh_frontend::FrontendConfig::parse(&f, Path::new("f.toml"))
                        .unwrap_or_else(|e| panic!("{e}\n{f}"));
                    let ins = cfg.inspector.expect("[inspector]");
                    assert_eq!(ins.proxy.len(), plans.len(), "{f}");
                    assert_eq!(ins.server_admin_socket, Some(layout.admin_socket.clone()));
                    assert!(cfg.oidc.is_none());
                }
                _ => {}
            }
        }
        // research-team's agents have no sidecar: their configs do the mTLS themselves, with
        // the self-check's probe destination as one more pinned upstream.
        let s = Scenario::resolve("research-team").unwrap();
        let (plans, _) = plan(&s, &layout).unwrap();
        for p in plans.iter().filter(|p| !p.spec.sidecar) {
            let a = agent_toml(p, &plans, &s, &layout);
            let cfg = agentmesh_agents::AgentConfig::parse(&a, Path::new("a.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{a}"));
            assert!(cfg.mtls.is_some(), "{a}");
            assert_eq!(cfg.listen, p.inbound.into());
            assert!(
                cfg.upstreams.iter().all(|u| u.url.starts_with("https://")
                    && u.spiffe_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with("spiffe://"))),
                "{a}"
            );
        }
        let researcher = plans.iter().find(|p| p.spec.name == "researcher").unwrap();
        assert!(!researcher.spec.sidecar);
        let a = agent_toml(researcher, &plans, &s, &layout);
        assert!(
            a.contains("name = \"gateway\""),
            "the probe's upstream: {a}"
        );
    }

    #[test]
    fn a_scenario_oidc_table_reaches_the_frontend_config() {
        let text = scenario::BUILT_IN[0].1.replace(
            "upstreams = [\"planner\"]",
            "upstreams = [\"planner\"]\noidc = { issuer = \"http://127.0.0.1:4000\", client_id = \"agentmesh\", client_secret = \"s\" }",
        );
        let s = Scenario::parse(&text, "s.toml").unwrap();
        let layout = Layout::new(Path::new("/tmp/x")).unwrap();
        let (plans, _) = plan(&s, &layout).unwrap();
        let fe = plans
            .iter()
            .find(|p| p.spec.kind == ServiceKind::Frontend)
            .unwrap();
        let f = frontend_toml(fe, &plans, &layout);
        let cfg = agentmesh_frontend::FrontendConfig::parse(&f, Path::new("f.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{f}"));
        let oidc = cfg.oidc.expect("[oidc]");
        assert_eq!(oidc.issuer, "http://127.0.0.1:4000");
        assert_eq!(oidc.client_id, "agentmesh");
    }
}
