//! What `up` tells once the mesh is up: the status table (services, identities, listeners,
//! intentions), `mesh.json` and `env` for the CLI and scripts, and how to use the mesh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::layout::{Layout, write_file};
use super::plan::{Plan, Planned};
use super::scenario::{Scenario, ServiceKind};
use super::self_check::http_get;
use super::start::AppliedIntention;
use crate::cli::{ADMIN_SOCKET_ENV, DEFAULT_DATA_DIR, WORKLOAD_SOCKET_ENV};

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

impl MeshInfo {
    /// The running mesh as `mesh.json` describes it.
    pub fn new(scenario: &Scenario, plan: &Plan) -> Self {
        let entry = plan.entry(scenario);
        Self {
            scenario: scenario.name.clone(),
            entry: scenario.entry.clone(),
            entry_url: format!("http://{}", entry.app),
            entry_kind: kind_name(entry.spec.kind),
            pid: std::process::id(),
            services: plan.services.iter().map(ServiceInfo::new).collect(),
        }
    }
}

impl ServiceInfo {
    fn new(p: &Planned) -> Self {
        Self {
            name: p.spec.name.clone(),
            spiffe_id: p.id.clone(),
            kind: kind_name(p.spec.kind),
            app: p.app.to_string(),
            inbound: p.inbound.to_string(),
            admin: p.admin.to_string(),
            upstreams: p
                .upstreams
                .iter()
                .map(|(d, a)| (d.clone(), a.to_string()))
                .collect(),
        }
    }
}

fn kind_name(kind: ServiceKind) -> String {
    format!("{kind:?}").to_lowercase()
}

/// Each service's SVID expiry (unix seconds), as its sidecar's (or agent's) admin reports it.
pub async fn svid_expiries(plan: &Plan) -> BTreeMap<String, u64> {
    let mut expiries = BTreeMap::new();
    for p in &plan.services {
        if let Some((200, body)) = http_get(&p.admin, "/healthz").await
            && let Some(v) = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("expires_unix="))
                .and_then(|v| v.parse().ok())
        {
            expiries.insert(p.spec.name.clone(), v);
        }
    }
    expiries
}

/// The status table: one row per service, then the intentions applied.
pub fn status_table(
    plan: &Plan,
    expiries: &BTreeMap<String, u64>,
    intentions: &[AppliedIntention],
) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "SPIFFE ID".to_owned(),
        "SVID EXPIRES".to_owned(),
        "APP".to_owned(),
        "SIDECAR".to_owned(),
        "UPSTREAMS (local port)".to_owned(),
    ]];
    let now = now_unix();
    for p in &plan.services {
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
    for i in intentions {
        let _ = writeln!(
            out,
            "  {}  {} → {}  {}{}",
            i.id,
            i.source,
            i.destination,
            i.action,
            if i.description.is_empty() {
                String::new()
            } else {
                format!("  ({})", i.description)
            }
        );
    }
    out
}

/// Writes `mesh.json` and `env`; returns the text of `env`.
///
/// # Errors
/// A file cannot be written.
pub fn write_mesh_files(
    layout: &Layout,
    scenario: &Scenario,
    plan: &Plan,
) -> anyhow::Result<String> {
    let info = MeshInfo::new(scenario, plan);
    write_file(
        &layout.mesh_file,
        &serde_json::to_string_pretty(&info).context("mesh.json")?,
    )?;
    let env = format!(
        "export {ADMIN_SOCKET_ENV}={}\nexport {WORKLOAD_SOCKET_ENV}={}\n",
        layout.admin_socket.display(),
        layout.workload_api()
    );
    write_file(&layout.env_file, &env)?;
    Ok(env)
}

/// Prints how to use the running mesh: the CLI's environment, where to open or ask, the
/// logs. `data_dir` is `--data-dir` as given, repeated in the `ask` line unless default.
pub fn print_how_to_use(layout: &Layout, entry: &Planned, env: &str, data_dir: &Path) {
    println!(
        "\n  To use the CLI against this mesh (also in {}):\n{}",
        layout.env_file.display(),
        env.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let frontend = entry.spec.kind == ServiceKind::Frontend;
    if frontend {
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
        if frontend { "" } else { "\n" },
        how_to_run_me(),
        if data_dir == Path::new(DEFAULT_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        },
        layout.logs.display()
    );
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

fn rfc3339(unix: u64) -> String {
    crate::cli::output::rfc3339_secs(i64::try_from(unix).unwrap_or(i64::MAX))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
