//! The app behind the proxies and the one load tool that drives every target of the `proxy`
//! benchmark (the app directly, the agentmesh pair, the Envoy pair), so differences come
//! from the proxies and not from the tools.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The app's whole response body: small, so the figures are the proxies' per-request cost.
const BODY: &[u8] = b"ok";

/// Serves `200 ok` to every HTTP/1.1 request on `listen`, with keep-alive, until killed.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve_app(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the app to {listen}"))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// One keep-alive HTTP/1.1 client connection.
struct Client {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    /// One `GET /` that must come back `200 ok`.
    async fn get(&mut self) -> anyhow::Result<()> {
        let req = hyper::Request::get("/")
            .header(hyper::header::HOST, "app")
            .body(Empty::new())?;
        self.send.ready().await.context("connection closed")?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != hyper::StatusCode::OK || body != BODY {
            bail!("unexpected response {status} {body:?}");
        }
        Ok(())
    }
}

/// What a timed run counted.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Completed requests (or connections) per second.
    pub per_second: f64,
    /// Requests (or connections) that failed.
    pub errors: u64,
}

/// Closed loop: `connections` keep-alive connections each send the next request as soon as
/// the last answer arrives, for `duration`.
///
/// # Errors
/// A connection cannot be opened at the start.
pub async fn saturate(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Throughput> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(addr).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for mut client in clients {
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match client.get().await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        match Client::connect(addr).await {
                            Ok(c) => client = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                        0
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.context("a load task panicked")?;
    }
    Ok(Throughput {
        per_second: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Open loop: `rate` requests per second in total, spread over `connections` keep-alive
/// connections on a fixed schedule, for `duration`. Returns every latency, sorted, and the
/// number of failed requests.
///
/// Latency runs from the moment a request is written, not from its scheduled time: tokio's
/// timer has 1 ms granularity, which would otherwise be counted as latency. Below saturation
/// requests leave on schedule, so nothing queues unseen.
///
/// # Errors
/// A connection cannot be opened at the start.
pub async fn fixed_rate(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(addr).await?);
    }
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for (i, mut client) in clients.into_iter().enumerate() {
        // Stagger the connections evenly over one interval.
        let first = start + interval.mul_f64(i as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut latencies = Vec::new();
            let mut errors = 0_u64;
            loop {
                let tick = ticks.tick().await;
                if tick >= end {
                    break;
                }
                let sent = Instant::now();
                match client.get().await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => {
                        errors += 1;
                        if let Ok(c) = Client::connect(addr).await {
                            client = c;
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.context("a load task panicked")?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    Ok((all, errors))
}

/// `concurrency` loops, each opening a new mTLS connection with `tls` (full handshake, no
/// resumption), sending one `GET /` with `Connection: close` and reading the answer to the
/// end, for `duration`.
///
/// # Errors
/// Never for a failed connection (those are counted); only for a panicked task.
pub async fn new_connections(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Throughput> {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls::pki_types::ServerName::try_from("app")
        .context("the server name")?
        .to_owned();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (done, errors) = (done.clone(), errors.clone());
        let (connector, name) = (connector.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match one_connection(addr, &connector, name.clone()).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.context("a load task panicked")?;
    }
    Ok(Throughput {
        per_second: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    })
}

async fn one_connection(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    // A peer may close without close_notify once it has answered; the answer is what counts.
    if let Err(e) = tls.read_to_end(&mut buf).await
        && (e.kind() != std::io::ErrorKind::UnexpectedEof || buf.is_empty())
    {
        return Err(e.into());
    }
    if !buf.starts_with(b"HTTP/1.1 200") || !buf.ends_with(BODY) {
        bail!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        );
    }
    Ok(())
}
