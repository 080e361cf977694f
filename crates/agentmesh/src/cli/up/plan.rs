//! The plan of a mesh: every listener's address, every service's identity, and who calls
//! whom, decided before anything starts. It names no process: the same plan could be
//! rendered into Compose or Kubernetes manifests instead of being started here.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

use agentmesh_sdk::LocalAddr;
use anyhow::{Context, anyhow, bail};

use super::layout::Layout;
use super::scenario::{Scenario, ServiceKind, ServiceSpec};

#[cfg(test)]
mod tests;

/// Where inference comes from (`--llm`).
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

    /// How `up` names it in its first line.
    pub fn describe(&self) -> String {
        match self {
            Llm::Offline => "offline (embedded, deterministic)".into(),
            Llm::Ollama(u) => format!("ollama at {u}"),
            Llm::Openai(u) => format!("openai-compatible at {u}"),
        }
    }
}

/// The whole mesh, planned.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's gRPC listener, where the node connects.
    pub server: SocketAddr,
    /// Every service of the scenario, in the scenario's order (the order they start in).
    pub services: Vec<Planned>,
}

/// One service, planned.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The service as the scenario describes it.
    pub spec: ServiceSpec,
    /// Its SPIFFE ID.
    pub id: String,
    /// Where the app listens: a Unix socket only its sidecar's user reaches, or loopback TCP
    /// for the listeners meant for people (the frontend, an entry agent with no frontend)
    /// and for `kind = "process"` apps, which get a port in `$PORT`.
    pub app: LocalAddr,
    /// The sidecar's (or in-process agent's) mTLS listener.
    pub inbound: SocketAddr,
    /// The sidecar's (or in-process agent's) admin: a Unix socket.
    pub admin: LocalAddr,
    /// (destination, local listener); includes the self-check's probe.
    pub upstreams: Vec<(String, LocalAddr)>,
}

impl Planned {
    /// The local listener this service calls `dest` through.
    pub fn upstream(&self, dest: &str) -> Option<&LocalAddr> {
        self.upstreams
            .iter()
            .find(|(d, _)| d == dest)
            .map(|(_, a)| a)
    }
}

impl Plan {
    /// Plans `scenario` under `layout`. Fixed listen addresses are checked and the chosen
    /// ports held until the plan is complete, so no two services get the same one.
    ///
    /// # Errors
    /// A fixed listen address is in use, no port is free, or a socket path is too long.
    #[cfg(test)]
    pub fn new(scenario: &Scenario, layout: &Layout) -> anyhow::Result<Self> {
        Self::holding_ports(scenario, layout).map(|(plan, _)| plan)
    }

    /// Plans `scenario`, and keeps the chosen ports bound: `up` lets go of each just before
    /// the child that listens on it starts, so another process on the host (another `up`,
    /// above all) has milliseconds rather than the whole start to take it.
    ///
    /// # Errors
    /// A fixed listen address is in use, no port is free, or a socket path is too long.
    pub fn holding_ports(
        scenario: &Scenario,
        layout: &Layout,
    ) -> anyhow::Result<(Self, HeldPorts)> {
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
        let has_frontend = scenario
            .services
            .iter()
            .any(|s| s.kind == ServiceKind::Frontend);
        let mut services = Vec::new();
        for s in &scenario.services {
            services.push(plan_service(scenario, s, has_frontend, layout, &mut pool)?);
        }
        Ok((Self { server, services }, HeldPorts(Mutex::new(pool.0))))
    }

    /// A planned service by name.
    pub fn service(&self, name: &str) -> Option<&Planned> {
        self.services.iter().find(|p| p.spec.name == name)
    }

    /// The scenario's entry, where questions go.
    pub fn entry(&self, scenario: &Scenario) -> &Planned {
        self.service(&scenario.entry)
            .unwrap_or_else(|| unreachable!("the scenario's entry is one of its services"))
    }
}

fn plan_service(
    scenario: &Scenario,
    s: &ServiceSpec,
    has_frontend: bool,
    layout: &Layout,
    pool: &mut PortPool,
) -> anyhow::Result<Planned> {
    // People reach the frontend (or, with no frontend, the entry agent) directly; a plain
    // program gets a port. Every other app is reachable only by its sidecar.
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
    Ok(Planned {
        spec: s.clone(),
        id: scenario.id_of(&s.name).to_string(),
        app,
        inbound: pool.take()?,
        admin: socket_in(layout, &s.name, "admin.sock")?,
        upstreams,
    })
}

/// Holds free ports until the plan is complete, so no two services get the same one.
struct PortPool(Vec<TcpListener>);

/// The loopback ports of a plan, still bound until the child that listens on each starts.
#[derive(Debug)]
pub struct HeldPorts(Mutex<Vec<TcpListener>>);

impl HeldPorts {
    /// Lets go of `addr`, so a child can bind it now.
    pub fn release(&self, addr: SocketAddr) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| l.local_addr().ok() != Some(addr));
    }

    /// Lets go of every TCP port of `service`: its app's, its sidecar's and its upstreams'.
    pub fn release_service(&self, service: &Planned) {
        self.release(service.inbound);
        let tcp = std::iter::once(&service.app).chain(service.upstreams.iter().map(|(_, a)| a));
        for addr in tcp {
            if let LocalAddr::Tcp(a) = addr
                && let Ok(a) = a.parse()
            {
                self.release(a);
            }
        }
    }
}

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
    let path = layout.service_run_dir(service).join(file);
    format!("unix://{}", path.display()).parse().map_err(|e| {
        anyhow!(
            "service {service}: {e}; choose a shorter --data-dir (Unix socket paths are limited)"
        )
    })
}

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
