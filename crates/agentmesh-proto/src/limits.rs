//! The limits every agentmesh listener applies, in one place: a deadline for the whole
//! request head, a body idle timeout, the largest head, and how many connections one caller
//! and the whole listener may hold. The HTTP listeners (sidecar, gateway, agents, frontend)
//! serve each connection with [`serve_http`]; the gRPC ones build their server with
//! [`grpc_server`] and accept through [`unix_incoming`] on Unix sockets and [`tls_incoming`]
//! over TCP.
//!
//! A cut connection (or HTTP/2 stream) is reported once through the listener's [`OnCut`],
//! which logs one line naming the peer and the limit and, where the component has metrics,
//! counts it by [`Cut::as_str`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// The smallest head buffer hyper accepts (`max_buf_size` panics below it).
pub const MIN_HEADER_BYTES: usize = 8192;

/// hyper's own default header count; setting it explicitly moves the parser's header array
/// from the stack to the heap, so the default is left to hyper.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/2 client preface every gRPC connection starts with.
const H2_PREFACE_LEN: usize = 24;

/// A `[limits]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A value is out of range.
    #[error("limits.{key}: {why}")]
    Invalid {
        /// The key, without the `limits.` prefix.
        key: &'static str,
        /// What is wrong and what would be accepted.
        why: String,
    },
}

/// The `[limits]` table of a component's config. Every key is optional; unknown keys are
/// refused. Durations are written like `10s` or `500ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// The whole request head (request line and every header) must arrive within this, counted
    /// from when the server starts waiting for it, however slowly it trickles in; a new
    /// connection must also deliver its first request (HTTP/2 and gRPC: its preface) by then.
    /// Default 10 s. An idle HTTP/1.1 keep-alive connection is closed after it too.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub header_timeout: Duration,
    /// A request body that sends nothing for this long is cut (HTTP/1.1: the connection;
    /// HTTP/2: the stream). gRPC listeners ping idle connections at this interval instead.
    /// Default 30 s.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub body_idle_timeout: Duration,
    /// The TLS handshake must finish within this. Default 10 s.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub handshake_timeout: Duration,
    /// The largest request head, in bytes (HTTP/1.1: the read buffer, at least 8192;
    /// HTTP/2 and gRPC: `SETTINGS_MAX_HEADER_LIST_SIZE`). Larger heads get 431.
    /// Default 64 KiB.
    pub max_header_bytes: usize,
    /// The most header fields in one request; more get 431. Default 100.
    pub max_headers: usize,
    /// Open connections one caller may hold on this listener: the caller is the SPIFFE ID
    /// behind mTLS, the uid on a Unix socket, the peer IP on plain TCP. Default 512.
    pub max_connections_per_caller: usize,
    /// Open connections on this listener, all callers together, counting those still in the
    /// TLS handshake. Default 4096.
    pub max_connections: usize,
    /// Concurrent HTTP/2 (and gRPC) streams on one connection. Default 100.
    pub max_streams_per_connection: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_connections_per_caller: 512,
            max_connections: 4096,
            max_streams_per_connection: 100,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is not a duration like 10s or 500ms: {e}"))
    })
}

/// The form [`duration`] reads back, so a written config loads to the same limits.
fn write_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl ListenerLimits {
    /// Whether every limit is the default, so a written config can leave `[limits]` out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks that every value can be applied.
    ///
    /// # Errors
    /// [`LimitsError::Invalid`] naming the first key out of range.
    pub fn check(&self) -> Result<(), LimitsError> {
        let invalid = |key, why: &str| {
            Err(LimitsError::Invalid {
                key,
                why: why.to_owned(),
            })
        };
        for (key, d) in [
            ("header_timeout", self.header_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be longer than 0s");
            }
        }
        if self.max_header_bytes < MIN_HEADER_BYTES || self.max_header_bytes > u32::MAX as usize {
            return Err(LimitsError::Invalid {
                key: "max_header_bytes",
                why: format!(
                    "{} is out of range: at least {MIN_HEADER_BYTES} (hyper's smallest head buffer), at most {}",
                    self.max_header_bytes,
                    u32::MAX
                ),
            });
        }
        if self.max_headers == 0 {
            return invalid("max_headers", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_connections_per_caller == 0 {
            return invalid("max_connections_per_caller", "must be at least 1");
        }
        if self.max_streams_per_connection == 0 {
            return invalid("max_streams_per_connection", "must be at least 1");
        }
        Ok(())
    }
}

// === Callers and connection counting ===

mod count;
pub use count::{
    CUT_LINES_PER_SECOND, Caller, ConnectionLimiter, ConnectionSlot, Cut, OnCut, log_cut, logging,
};

// === HTTP ===

/// A request body that fails once its sender has been silent for `body_idle_timeout`.
/// The timer runs only while the reader waits for the next frame, so a reader that is slow
/// itself (backpressure) never trips it.
pub struct IdleBody<B = Incoming> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    on_stall: Option<Box<dyn FnOnce() + Send + Sync>>,
    stalled: bool,
}

impl<B> fmt::Debug for IdleBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleBody")
            .field("idle", &self.idle)
            .field("stalled", &self.stalled)
            .finish_non_exhaustive()
    }
}

impl<B> IdleBody<B> {
    /// Wraps `inner`; `on_stall` runs once if the timeout fires.
    pub fn new(inner: B, idle: Duration, on_stall: Box<dyn FnOnce() + Send + Sync>) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            on_stall: Some(on_stall),
            stalled: false,
        }
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The sender was silent for too long.
    #[error("the request body sent nothing for {0:?} (limits.body_idle_timeout)")]
    Idle(Duration),
    /// Reading failed.
    #[error(transparent)]
    Read(Box<dyn std::error::Error + Send + Sync>),
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame.map(|r| r.map_err(|e| BodyError::Read(e.into()))));
        }
        let idle = this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(timer.as_mut().poll(cx));
        this.stalled = true;
        if let Some(f) = this.on_stall.take() {
            f();
        }
        Poll::Ready(Some(Err(BodyError::Idle(idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.stalled || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body every [`serve_http`] service receives.
pub type RequestBody = IdleBody<Incoming>;

/// What [`serve_http`] answers with: the service's body, or its own 431.
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

/// One connection's watch: whether a request has arrived, whether bytes of a next head are
/// waiting, and the signal that cuts it.
#[derive(Default)]
struct Watch {
    seen_request: AtomicBool,
    in_flight: AtomicUsize,
    /// Bytes arrived while no request was in flight: a head has started. hyper's head
    /// deadline also closes an idle keep-alive connection, which is no attack and is not
    /// reported; a started head that misses it is.
    head_started: AtomicBool,
    kill: Notify,
}

/// Ends a request's in-flight count when its response future is done or dropped.
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's reads, noting when a new head starts.
struct WatchedIo<I> {
    inner: I,
    watch: Arc<Watch>,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && this.watch.in_flight.load(Ordering::Relaxed) == 0 {
            this.watch.head_started.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The service [`serve_http`] wraps around the caller's: it notes the first request, bounds
/// the header count on HTTP/2 (HTTP/1.1's is hyper's) and wraps the body.
struct Guarded<S> {
    inner: S,
    watch: Arc<Watch>,
    limits: Arc<ListenerLimits>,
    on_cut: OnCut,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Guarded<S>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.watch.seen_request.store(true, Ordering::Relaxed);
        self.watch.in_flight.fetch_add(1, Ordering::Relaxed);
        self.watch.head_started.store(false, Ordering::Relaxed);
        let in_flight = InFlight(self.watch.clone());
        if req.headers().len() > self.limits.max_headers {
            (self.on_cut)(Cut::HeadersTooLarge);
            let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
                b"request header fields too large\n",
            ))));
            *resp.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return Box::pin(async move {
                drop(in_flight);
                Ok(resp)
            });
        }
        let http1 = req.version() < hyper::Version::HTTP_2;
        let watch = self.watch.clone();
        let on_cut = self.on_cut.clone();
        let on_stall = Box::new(move || {
            on_cut(Cut::BodyIdleTimeout);
            // HTTP/1.1 cannot resync after an unfinished body, so the connection goes; on
            // HTTP/2 only the stream ends (the handler sees the error and the stream resets).
            if http1 {
                watch.kill.notify_one();
            }
        });
        let idle = self.limits.body_idle_timeout;
        let req = req.map(|b| IdleBody::new(b, idle, on_stall));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(in_flight);
            r.map(|r| r.map(Either::Left))
        })
    }
}

/// A connection builder with the limits applied (HTTP/1.1 and HTTP/2, by ALPN or preface).
fn builder(limits: &ListenerLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = b.http1();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(limits.max_headers);
        }
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(limits.body_idle_timeout)
        .keep_alive_timeout(limits.header_timeout);
    b
}

/// What ended a connection hyper gave up on, if it was a limit.
fn classify(e: &(dyn std::error::Error + 'static)) -> Option<Cut> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return Some(Cut::HeaderTimeout);
            }
            if h.is_parse_too_large() {
                return Some(Cut::HeadersTooLarge);
            }
        }
        cur = err.source();
    }
    None
}

/// Serves one accepted connection with `limits` until it ends, a limit cuts it, or
/// `shutdown` resolves (then in-flight requests finish). Each cut is reported once through
/// `on_cut`.
pub async fn serve_http<I, S, B>(
    io: I,
    service: S,
    limits: Arc<ListenerLimits>,
    on_cut: OnCut,
    shutdown: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let watch = Arc::new(Watch::default());
    let guarded = Guarded {
        inner: service,
        watch: watch.clone(),
        limits: limits.clone(),
        on_cut: on_cut.clone(),
    };
    let builder = builder(&limits);
    let io = WatchedIo {
        inner: io,
        watch: watch.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), guarded);
    tokio::pin!(conn);
    tokio::pin!(shutdown);
    let first_request = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(first_request);
    let mut waiting_for_first = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    match classify(e.as_ref()) {
                        Some(Cut::HeaderTimeout)
                            if watch.seen_request.load(Ordering::Relaxed)
                                && !watch.head_started.load(Ordering::Relaxed) =>
                        {
                            tracing::debug!("idle keep-alive connection closed at limits.header_timeout");
                        }
                        Some(cut) => on_cut(cut),
                        None => tracing::debug!(error = %e, "connection ended with an error"),
                    }
                }
                return;
            }
            // hyper bounds every HTTP/1.1 head itself; this also bounds a connection that
            // never sends a byte, a partial HTTP/2 preface, or an HTTP/2 connection that opens
            // no stream.
            () = &mut first_request, if waiting_for_first => {
                waiting_for_first = false;
                if !watch.seen_request.load(Ordering::Relaxed) {
                    on_cut(Cut::HeaderTimeout);
                    return;
                }
            }
            () = watch.kill.notified() => return,
            () = &mut shutdown => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                return;
            }
        }
    }
}

/// A tower service (an axum `Router`) as a hyper service for [`serve_http`].
#[derive(Debug, Clone)]
pub struct TowerService<T>(pub T);

impl<T> hyper::service::Service<Request<RequestBody>> for TowerService<T>
where
    T: tower::Service<Request<RequestBody>> + Clone + Send + 'static,
    T::Future: Send,
{
    type Response = T::Response;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<T::Response, T::Error>> + Send>>;

    fn call(&self, req: Request<RequestBody>) -> Self::Future {
        let mut svc = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            svc.call(req).await
        })
    }
}

/// A listener whose connections [`serve_listener`] serves: it says, for each connection, who
/// the caller is (for the per-caller limit) and how to name the peer in log lines.
pub trait Accept: Send + 'static {
    /// The connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer, as log lines name it.
    type Peer: fmt::Display + Send + Sync + 'static;
    /// The next connection.
    fn accept_caller(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Io, Self::Peer, Caller)>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;

    async fn accept_caller(&self) -> std::io::Result<(Self::Io, Self::Peer, Caller)> {
        let (tcp, addr) = self.accept().await?;
        let _ = tcp.set_nodelay(true);
        Ok((tcp, addr, Caller::Ip(addr.ip())))
    }
}

/// Serves plain HTTP on a TCP `listener` with `limits` (the caller is the peer's IP); see
/// [`serve_listener`].
pub async fn serve_tcp<S, B>(
    listener: TcpListener,
    service: S,
    limits: ListenerLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_listener(listener, service, limits, name, shutdown).await;
}

/// Serves plain HTTP on `listener` with `limits` until `shutdown` resolves, then lets the
/// requests in flight finish. `name` names the listener in log lines.
pub async fn serve_listener<L, S, B>(
    listener: L,
    service: S,
    limits: ListenerLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: Accept,
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = Arc::new(limits);
    let limiter = ConnectionLimiter::new(&limits);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept_caller() => a,
            () = &mut shutdown => break,
        };
        while open.try_join_next().is_some() {}
        let (io, peer, caller) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: pause rather than spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let on_cut = logging(name, peer);
        let slot = match limiter.admit_caller(caller) {
            Ok(slot) => slot,
            Err(cut) => {
                on_cut(cut);
                continue;
            }
        };
        let mut stopped = stopped.clone();
        let service = service.clone();
        let limits = limits.clone();
        open.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            serve_http(io, service, limits, on_cut, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    while open.join_next().await.is_some() {}
}

// === gRPC ===

mod grpc;
mod tls;
pub use grpc::{LimitedStream, grpc_server, unix_incoming};
pub use tls::{TlsConn, tls_incoming};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
#[path = "limits/tests.rs"]
mod tests;
