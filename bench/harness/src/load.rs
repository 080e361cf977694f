//! The app behind the proxies (which is also the OpenAI-compatible upstream behind the LLM
//! gateways) and the one load tool that drives every target of the `proxy` and `gateway`
//! benchmarks, so differences come from what is measured and not from the tools.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The app's whole response body: small, so the figures are the proxies' per-request cost.
const BODY: &[u8] = b"ok";

/// The model the upstream serves and the gateways expose.
pub const MODEL: &str = "bench-model";

/// What the upstream answers to every `POST /v1/chat/completions`: a small, complete
/// `chat.completion` with usage, as an OpenAI-compatible server sends it.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","system_fingerprint":null,"choices":[{"index":0,"message":{"role":"assistant","content":"The bench upstream answers."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;

/// The size of [`COMPLETION`], for the notes.
pub const COMPLETION_LEN: usize = COMPLETION.len();

/// `GET /v1/models`.
const MODELS: &str = r#"{"object":"list","data":[{"id":"bench-model","object":"model","created":1700000000,"owned_by":"bench"}]}"#;

/// What every gateway target is sent: one short chat turn.
const CHAT_REQUEST: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}]}"#;

/// The words of [`COMPLETION`] that a gateway must pass on.
const ANSWER: &[u8] = b"The bench upstream answers.";

/// The app's answer to `req`: the completion and model list of an OpenAI-compatible server on
/// their paths, `200 ok` on every other.
fn answer(req: &hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let json = match (req.method(), req.uri().path()) {
        (&hyper::Method::POST, "/v1/chat/completions") => COMPLETION,
        (&hyper::Method::GET, "/v1/models") => MODELS,
        _ => return hyper::Response::new(Full::new(Bytes::from_static(BODY))),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(json.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Serves [`answer`] to every HTTP/1.1 request on `listen`, with keep-alive, until killed.
/// A request body is read to the end before the answer, as a real server would.
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
            let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let resp = answer(&req);
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// One `GET path` to `addr` on a new connection (HTTP/1.1, `Connection: close`; Envoy's admin
/// refuses HTTP/1.0): the status and body, or `None` while nothing answers there. For
/// readiness checks, not for timing.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The one request a load run repeats, and what its answer must be.
#[derive(Debug, Clone)]
pub struct Call {
    method: hyper::Method,
    path: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// A good answer is `200` with exactly this body, or a body containing it.
    expect: &'static [u8],
    exact: bool,
}

impl Call {
    /// `GET /`, answered `200 ok` by the app (the `proxy` benchmark).
    pub fn get_ok() -> Self {
        Self {
            method: hyper::Method::GET,
            path: "/",
            headers: Vec::new(),
            body: Bytes::new(),
            expect: BODY,
            exact: true,
        }
    }

    /// `POST /v1/chat/completions` with one short chat turn for [`MODEL`] and `headers`,
    /// whose answer must carry the upstream's words (the `gateway` benchmark).
    pub fn chat(headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        let mut headers = headers;
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        Self {
            method: hyper::Method::POST,
            path: "/v1/chat/completions",
            headers,
            body: Bytes::from_static(CHAT_REQUEST.as_bytes()),
            expect: ANSWER,
            exact: false,
        }
    }

    /// `POST path` with `headers` and `body`, whose answer must be 200 and carry `expect`
    /// (the `mcp` benchmark's JSON-RPC calls).
    pub fn post(
        path: &'static str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        expect: &'static [u8],
    ) -> Self {
        Self {
            method: hyper::Method::POST,
            path,
            headers,
            body,
            expect,
            exact: false,
        }
    }

    fn accepts(&self, status: hyper::StatusCode, body: &[u8]) -> bool {
        status == hyper::StatusCode::OK
            && if self.exact {
                body == self.expect
            } else {
                body.windows(self.expect.len()).any(|w| w == self.expect)
            }
    }
}

/// Where a load run sends its requests: loopback TCP, or a Unix socket (the gateway listens
/// on one behind its sidecar, and trusts `x-forwarded-client-cert` only there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `ip:port`.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(std::path::PathBuf),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One keep-alive HTTP/1.1 client connection.
struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(to: &Endpoint) -> anyhow::Result<Self> {
        let send = match to {
            Endpoint::Tcp(addr) => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                tcp.set_nodelay(true)?;
                Self::handshake(tcp).await?
            }
            Endpoint::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {to}"))?;
                Self::handshake(unix).await?
            }
        };
        Ok(Self { send })
    }

    async fn handshake<S>(
        io: S,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// Sends `call` once; its answer must be what `call` expects.
    async fn call(&mut self, call: &Call) -> anyhow::Result<()> {
        let mut req = hyper::Request::builder()
            .method(call.method.clone())
            .uri(call.path)
            .header(HOST, "app");
        for (k, v) in &call.headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(call.body.clone()))?;
        self.send.ready().await.context("connection closed")?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !call.accepts(status, &body) {
            bail!(
                "unexpected response {status} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
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
    to: impl Into<Endpoint>,
    call: &Call,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Throughput> {
    let to = Arc::new(to.into());
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(&to).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    let call = Arc::new(call.clone());
    for mut client in clients {
        let (done, errors, call, to) = (done.clone(), errors.clone(), call.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match client.call(&call).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        match Client::connect(&to).await {
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
    to: impl Into<Endpoint>,
    call: &Call,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let to = Arc::new(to.into());
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(&to).await?);
    }
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    let call = Arc::new(call.clone());
    for (i, mut client) in clients.into_iter().enumerate() {
        // Stagger the connections evenly over one interval.
        let first = start + interval.mul_f64(i as f64 / connections as f64);
        let (call, to) = (call.clone(), to.clone());
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
                match client.call(&call).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => {
                        errors += 1;
                        if let Ok(c) = Client::connect(&to).await {
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

/// Runs `f` on each target `rounds` times, alternating targets so that a noisy moment on the
/// shared machine does not land on one side only, and keeps for each target the run that
/// `better(run, best_so_far)` prefers. The results are in the order of `targets`.
///
/// # Errors
/// The first error `f` returns.
pub async fn best_of<T, R, F, Fut>(
    targets: &[T],
    rounds: usize,
    mut f: F,
    better: impl Fn(&R, &R) -> bool,
) -> anyhow::Result<Vec<R>>
where
    T: Clone,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut best: Vec<Option<R>> = targets.iter().map(|_| None).collect();
    for _ in 0..rounds.max(1) {
        for (slot, t) in best.iter_mut().zip(targets) {
            let run = f(t.clone()).await?;
            if slot.as_ref().is_none_or(|b| better(&run, b)) {
                *slot = Some(run);
            }
        }
    }
    Ok(best.into_iter().flatten().collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn best_of_alternates_targets_and_keeps_each_ones_best_run() {
        let mut order = Vec::new();
        let mut n = 0;
        let best = best_of(
            &["a", "b"],
            3,
            |t| {
                order.push(t);
                n += 1;
                // a: 1, 3, 5; b: 2, 4, 6, except that b's second run is its worst.
                let v = if n == 4 { 0 } else { n };
                async move { Ok(v) }
            },
            |run, best| run > best,
        )
        .await
        .unwrap();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
        assert_eq!(best, [5, 6]);
    }

    #[test]
    fn a_chat_answer_must_be_200_and_carry_the_upstream_words() {
        let chat = Call::chat(Vec::new());
        assert!(chat.accepts(hyper::StatusCode::OK, COMPLETION.as_bytes()));
        assert!(!chat.accepts(hyper::StatusCode::BAD_GATEWAY, COMPLETION.as_bytes()));
        assert!(!chat.accepts(hyper::StatusCode::OK, b"{}"));
        let get = Call::get_ok();
        assert!(get.accepts(hyper::StatusCode::OK, b"ok"));
        assert!(!get.accepts(hyper::StatusCode::OK, b"okay"));
    }
}
