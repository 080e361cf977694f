//! Listener limits against real processes: `agentmesh proxy run` with a small `[limits]`
//! table in front of an HTTP app in this test process, and the node's Workload API socket.
//! Slow heads and slow bodies are cut, over-large heads get 431, floods of stalled
//! connections are bounded per caller and in total, and each cut is logged and counted,
//! while normal requests keep working.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::*;
use sidecar::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Small enough that every cut happens within seconds; the assertions never depend on how
/// long a cut took, only that it happened and was counted.
const LIMITS: &str = "[limits]
header_timeout = \"2s\"
body_idle_timeout = \"1s\"
handshake_timeout = \"6s\"
max_headers = 20
max_header_bytes = 8192
max_connections_per_caller = 50
max_connections = 1000
";

/// An HTTP app that reads the whole body and answers how many bytes it got.
async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                let text = match n {
                    Ok(n) => format!("app got {n} bytes"),
                    Err(e) => format!("app body error: {e}"),
                };
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    text,
                ))))
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// Every SVID the Workload API gives this test process (one per entry on its path).
async fn own_svids(mesh: &Mesh, want: usize) -> Vec<(String, Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>)> {
    let channel = agentmesh_proto::unix::connect(&mesh.socket())
        .await
        .expect("workload api");
    let mut client =
        agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            channel,
        );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut req = tonic::Request::new(agentmesh_proto::workload::X509svidRequest {});
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        if let Ok(resp) = client.fetch_x509svid(req).await
            && let Ok(Some(msg)) = resp.into_inner().message().await
            && msg.svids.len() >= want
        {
            return msg
                .svids
                .iter()
                .map(|s| {
                    (
                        s.spiffe_id.clone(),
                        agentmesh_tls::split_der_certs(&s.x509_svid).expect("chain"),
                        s.x509_svid_key.clone(),
                        agentmesh_tls::split_der_certs(&s.bundle).expect("bundle"),
                    )
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "the test process got no SVIDs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn client_config(chain: &[Vec<u8>], key: &[u8], roots: &[Vec<u8>]) -> Arc<rustls::ClientConfig> {
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> =
        roots.iter().map(|r| r.clone().into()).collect();
    let creds = agentmesh_tls::SvidCredentials::from_der(chain, key).expect("creds");
    agentmesh_tls::client_config(Some(&creds), &roots, agentmesh_tls::any_id(), &[])
        .expect("client config")
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn mtls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("proxy").expect("name");
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

/// Reads until the server closes (EOF or reset); what arrived before.
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server never closed the connection"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a head one line every 500 ms (each line well inside any per-read timeout) and
/// says how many of 20 header lines went out before the server closed.
async fn trickle_head<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> usize {
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n")
        .await
        .expect("request line");
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
            || s.flush().await.is_err()
        {
            return i;
        }
    }
    // Writes can succeed into a closed socket's buffer; the close shows on read.
    let rest = read_to_close(s).await;
    assert!(
        !rest.contains(" 200 "),
        "a trickled head was answered: {rest}"
    );
    20
}

/// A POST whose body stops after 10 of 100 bytes; what came back before the close.
async fn stalled_body<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    s.flush().await.expect("flush");
    read_to_close(s).await
}

/// A GET with `extra` header lines on a fresh connection; the whole answer.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, extra: &str) -> String {
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .expect("write");
    s.flush().await.expect("flush");
    read_to_close(s).await
}

/// `agentmesh_proxy_connections_closed_total{listener, reason}` from /metrics.
async fn closed(proxy: &ProxyProc, listener: &str, reason: &str) -> u64 {
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let key = format!(
        "agentmesh_proxy_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The sidecar's inbound (mTLS, HTTP) with small limits: a trickled head, a stalled body,
/// too many headers, 2,000 stalled connections from one caller and 2,000 that never finish
/// their handshake; each is cut, logged and counted, and another caller's requests keep
/// working alongside. The node's Workload API closes a client that never sends its preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inbound_cuts_slow_heads_slow_bodies_and_floods_and_counts_them() {
    assert!(
        open_files_limit() >= 4500,
        "this test holds 2,000 connections from each end; raise the open-files limit (ulimit -n 8192) and run it again"
    );
    let mut mesh = Mesh::start();
    register(&mesh, "b", None);
    let exe = std::env::current_exe().expect("current exe");
    let path = format!("unix:path:{}", exe.display());
    let tester = mesh.entry("/ns/default/sa/tester", &[&path], None);
    let flooder = mesh.entry("/ns/default/sa/flooder", &[&path], None);
    for who in [&tester, &flooder] {
        mesh.cli_ok(&["intention", "create", who, "b", "--action", "allow"]);
    }
    let app = http_app().await;
    let listen = loopback_addr();
    let toml = format!(
        "service = \"b\"\n[inbound]\nlisten = \"{listen}\"\napp = \"{app}\"\nprotocol = \"http\"\n{LIMITS}"
    );
    let b = start_proxy_from_toml(&mesh, "b", &toml, Some(listen), Vec::new()).await;
    let svids = own_svids(&mesh, 2).await;
    let config_of = |id: &str| {
        let (_, chain, key, roots) = svids
            .iter()
            .find(|s| s.0 == id)
            .unwrap_or_else(|| panic!("no SVID for {id}"));
        client_config(chain, key, roots)
    };
    let (tester_tls, flooder_tls) = (config_of(&tester), config_of(&flooder));

    // A normal request works.
    let mut c = mtls(listen, &tester_tls).await.expect("handshake");
    let answer = get(&mut c, "").await;
    assert!(answer.contains("app got 0 bytes"), "{answer}");

    // A head trickled one line every 500 ms is cut at the 2 s head deadline.
    let mut c = mtls(listen, &tester_tls).await.expect("handshake");
    assert!(
        trickle_head(&mut c).await < 20,
        "a trickled head kept its connection"
    );
    eventually("the trickled head is counted", || async {
        closed(&b, "inbound", "header_timeout").await >= 1
    })
    .await;

    // A body that stops sending is cut at the 1 s idle timeout; the app never gets it whole.
    let mut c = mtls(listen, &tester_tls).await.expect("handshake");
    let answer = stalled_body(&mut c).await;
    assert!(!answer.contains("app got 100 bytes"), "{answer}");
    eventually("the stalled body is counted", || async {
        closed(&b, "inbound", "body_idle_timeout").await >= 1
    })
    .await;

    // Too many header fields: 431.
    let many: String = (0..30).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let mut c = mtls(listen, &tester_tls).await.expect("handshake");
    let answer = get(&mut c, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    eventually("the 431 is counted", || async {
        closed(&b, "inbound", "headers_too_large").await >= 1
    })
    .await;

    // 2,000 connections from one caller that stall after the handshake: 50 are held (its
    // share), every other one is closed at once, and the 50 are cut at the head deadline.
    let caller_cuts_before = closed(&b, "inbound", "caller_limit").await;
    let head_cuts_before = closed(&b, "inbound", "header_timeout").await;
    let flooding = futures::stream::iter(0..2000)
        .map(|_| mtls(listen, &flooder_tls))
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    // Meanwhile another caller is served.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c = mtls(listen, &tester_tls).await.expect("handshake");
        get(&mut c, "").await
    };
    let (flood, answer) = tokio::join!(flooding, normal);
    assert!(answer.contains("app got 0 bytes"), "{answer}");
    // A refused one may be closed before its handshake reads the server's last flight.
    let mut flood: Vec<Tls> = flood.into_iter().filter_map(Result::ok).collect();
    for s in &mut flood {
        read_to_close(s).await;
    }
    eventually("every flooding connection is counted", || async {
        let caller = closed(&b, "inbound", "caller_limit").await - caller_cuts_before;
        let head = closed(&b, "inbound", "header_timeout").await - head_cuts_before;
        caller + head == 2000
    })
    .await;
    // Held ones are cut at the head deadline while the flood is still arriving, which frees
    // their places for later ones; most are refused either way, none without a limit.
    let caller = closed(&b, "inbound", "caller_limit").await - caller_cuts_before;
    assert!(
        caller >= 1000,
        "only {caller} refused over the caller's share"
    );
    eprintln!(
        "one caller's 2,000 stalled connections: {caller} refused over its share, {} cut at the head deadline",
        2000 - caller
    );
    drop(flood);

    // 2,000 connections that never start a handshake: 1,000 are held (the listener's total)
    // and cut at the handshake deadline, the rest are closed at once.
    let total_before = closed(&b, "inbound", "connection_limit").await;
    let handshake_before = closed(&b, "inbound", "handshake_timeout").await;
    let mut flood: Vec<TcpStream> = futures::stream::iter(0..2000)
        .map(|_| TcpStream::connect(listen))
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|s| s.expect("connect"))
        .collect();
    for s in &mut flood {
        read_to_close(s).await;
    }
    eventually("every silent connection is counted", || async {
        let total = closed(&b, "inbound", "connection_limit").await - total_before;
        let handshake = closed(&b, "inbound", "handshake_timeout").await - handshake_before;
        total + handshake == 2000
    })
    .await;
    let refused = closed(&b, "inbound", "connection_limit").await - total_before;
    assert!(
        refused >= 500,
        "only {refused} refused over the listener's total"
    );
    eprintln!(
        "2,000 silent connections: {refused} refused over the total, {} cut at the handshake deadline",
        2000 - refused
    );
    drop(flood);
    // The listener serves again once the flood is gone.
    let mut c = mtls(listen, &tester_tls).await.expect("handshake");
    assert!(get(&mut c, "").await.contains("app got 0 bytes"));

    let log = b.log_text();
    for limit in [
        "header_timeout",
        "body_idle_timeout",
        "headers_too_large",
        "caller_limit",
        "connection_limit",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("connection cut by a listener limit") && l.contains(limit)),
            "no log line for {limit}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("caller_limit") && l.contains(&flooder)),
        "the caller-limit line does not name the caller"
    );

    // The node's Workload API socket: a client that never sends its HTTP/2 preface is
    // closed (at the default 10 s), and the node logs which limit.
    let mut silent = tokio::net::UnixStream::connect(mesh.socket())
        .await
        .expect("connect to the Workload API");
    read_to_close(&mut silent).await;
    let node_log = mesh.node_log();
    eventually("the node logs the cut", || async {
        std::fs::read_to_string(&node_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("workload API socket") && l.contains("header_timeout"))
    })
    .await;
    mesh.node.take();
}

/// The sidecar's outbound listener (plain, local) with the same limits: a trickled head,
/// a stalled body and too many headers are cut or refused and counted; a normal request
/// reaches the destination's app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbound_cuts_slow_heads_and_slow_bodies_and_counts_them() {
    let mesh = Mesh::start();
    register(&mesh, "a", None);
    register(&mesh, "b", None);
    mesh.cli_ok(&["intention", "create", "a", "b", "--action", "allow"]);
    let app = http_app().await;
    let b = start_proxy(&mesh, "b", Some((app, "http")), &[]).await;
    let inbound = b.inbound.expect("inbound");
    let listen = loopback_addr();
    let toml = format!(
        "service = \"a\"\n[[upstream]]\ndestination = \"b\"\nlisten = \"{listen}\"\naddress = \"{inbound}\"\nprotocol = \"http\"\n{LIMITS}"
    );
    let a = start_proxy_from_toml(&mesh, "a", &toml, None, vec![listen]).await;

    let mut c = TcpStream::connect(listen).await.expect("connect");
    let answer = get(&mut c, "").await;
    assert!(answer.contains("app got 0 bytes"), "{answer}");

    let mut c = TcpStream::connect(listen).await.expect("connect");
    assert!(
        trickle_head(&mut c).await < 20,
        "a trickled head kept its connection"
    );

    let mut c = TcpStream::connect(listen).await.expect("connect");
    let answer = stalled_body(&mut c).await;
    assert!(!answer.contains("app got 100 bytes"), "{answer}");

    let many: String = (0..30).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let mut c = TcpStream::connect(listen).await.expect("connect");
    let answer = get(&mut c, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    eventually("each cut is counted", || async {
        closed(&a, "outbound", "header_timeout").await >= 1
            && closed(&a, "outbound", "body_idle_timeout").await >= 1
            && closed(&a, "outbound", "headers_too_large").await >= 1
    })
    .await;
    // A normal request still works afterwards.
    let mut c = TcpStream::connect(listen).await.expect("connect");
    assert!(get(&mut c, "").await.contains("app got 0 bytes"));
}
