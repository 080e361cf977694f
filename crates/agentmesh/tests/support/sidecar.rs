//! `agentmesh proxy run` processes for the process-level tests: writes a proxy.toml, starts
//! the proxy as a launcher-registered child, waits until it is healthy, and reads its logs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mesh::{Mesh, PATIENCE, Proc, TD, free_port, register_launch};

/// One `agentmesh proxy run` process.
pub struct ProxyProc {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub log: PathBuf,
    pub access_log: PathBuf,
}

pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl ProxyProc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every access log line, parsed.
    pub fn access(&self) -> Vec<serde_json::Value> {
        // The proxy batches access lines (ACCESS_LOG_FLUSH_INTERVAL, 100 ms); let them land.
        std::thread::sleep(Duration::from_millis(400));
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).await
    }
}

pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `(destination, protocol)` of an upstream.
pub type UpstreamSpec<'a> = (&'a str, &'a str);

/// Writes a proxy.toml, starts the proxy as launcher child `service`, and waits until
/// `/healthz` says it has an SVID and intentions.
pub async fn start_proxy(
    mesh: &Mesh,
    service: &str,
    inbound: Option<(SocketAddr, &str)>,
    upstreams: &[UpstreamSpec<'_>],
) -> ProxyProc {
    start_proxy_with_env(mesh, service, inbound, upstreams, &[]).await
}

/// [`start_proxy`] with extra environment variables (such as `OTEL_*`) for the process.
pub async fn start_proxy_with_env(
    mesh: &Mesh,
    service: &str,
    inbound: Option<(SocketAddr, &str)>,
    upstreams: &[UpstreamSpec<'_>],
    env: &[(&str, &str)],
) -> ProxyProc {
    let inbound = inbound.map(|(a, p)| (a.to_string(), p));
    start_proxy_to(mesh, service, inbound, upstreams, env).await
}

/// [`start_proxy`] in front of an app at any local address (`unix:///path` or `host:port`).
pub async fn start_proxy_to(
    mesh: &Mesh,
    service: &str,
    inbound: Option<(String, &str)>,
    upstreams: &[UpstreamSpec<'_>],
    env: &[(&str, &str)],
) -> ProxyProc {
    let admin = loopback_addr();
    let mut toml = format!("service = \"{service}\"\n");
    let mut inbound_addr = None;
    if let Some((app, protocol)) = inbound {
        let listen = loopback_addr();
        inbound_addr = Some(listen);
        toml.push_str(&format!(
            "[inbound]\nlisten = \"{listen}\"\napp = \"{app}\"\nprotocol = \"{protocol}\"\n"
        ));
    }
    let mut upstream_addrs = Vec::new();
    for (dest, protocol) in upstreams {
        let listen = loopback_addr();
        upstream_addrs.push(listen);
        toml.push_str(&format!(
            "[[upstream]]\ndestination = \"{dest}\"\nlisten = \"{listen}\"\nprotocol = \"{protocol}\"\n"
        ));
    }
    spawn_proxy(
        mesh,
        service,
        toml,
        admin,
        inbound_addr,
        upstream_addrs,
        env,
    )
    .await
}

/// Starts a proxy from a proxy.toml body of the caller's (say, with an upstream `address`),
/// as launcher child `service`; `[admin]` is added here. `inbound` and `upstreams` are the
/// listeners the body declares, for the caller's convenience.
pub async fn start_proxy_from_toml(
    mesh: &Mesh,
    service: &str,
    toml: &str,
    inbound: Option<SocketAddr>,
    upstreams: Vec<SocketAddr>,
) -> ProxyProc {
    let admin = loopback_addr();
    spawn_proxy(
        mesh,
        service,
        toml.to_owned(),
        admin,
        inbound,
        upstreams,
        &[],
    )
    .await
}

async fn spawn_proxy(
    mesh: &Mesh,
    service: &str,
    mut toml: String,
    admin: SocketAddr,
    inbound_addr: Option<SocketAddr>,
    upstream_addrs: Vec<SocketAddr>,
    env: &[(&str, &str)],
) -> ProxyProc {
    toml.push_str(&format!("[admin]\nlisten = \"{admin}\"\n"));
    let config = mesh.dir.join(format!("proxy-{service}.toml"));
    std::fs::write(&config, toml).expect("write proxy.toml");
    let log = mesh.dir.join(format!("proxy-{service}.log"));
    let access_log = mesh.dir.join(format!("proxy-{service}.access.jsonl"));
    let child = mesh
        .command()
        .args(["proxy", "run", "--config"])
        .arg(&config)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&access_log).expect("access log"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn agentmesh proxy run");
    let pid = child.id();
    let mut proxy = ProxyProc {
        proc: Proc(child),
        admin,
        inbound: inbound_addr,
        upstreams: upstream_addrs,
        log,
        access_log,
    };
    register_launch(mesh, pid, service).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = proxy.proc.0.try_wait() {
            panic!(
                "proxy {service} exited with {status}; its log:\n{}",
                proxy.log_text()
            );
        }
        if proxy.admin_get("/healthz").await.0 == 200 {
            return proxy;
        }
        assert!(
            Instant::now() < deadline,
            "proxy {service} not healthy in time; its log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `check` holds, or fails with `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many services the server's catalog holds.
pub async fn catalog_size(mesh: &Mesh) -> usize {
    let Ok(channel) = agentmesh_proto::unix::connect(&mesh.admin_socket()).await else {
        return 0;
    };
    agentmesh_proto::v1::admin_client::AdminClient::new(channel)
        .list_services(agentmesh_proto::v1::ListServicesRequest {})
        .await
        .map(|r| r.into_inner().services.len())
        .unwrap_or(0)
}

pub fn id(service: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{service}")
}

pub fn register(mesh: &Mesh, service: &str, ttl: Option<Duration>) {
    mesh.entry(
        &format!("/ns/default/sa/{service}"),
        &[&format!("launcher:service:{service}")],
        ttl,
    );
}
