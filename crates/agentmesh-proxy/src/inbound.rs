//! The public side: TLS 1.3 with a required client SVID, then intentions on the verified
//! peer ID before a byte reaches the app: per connection for raw TCP, per request for HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_policy::{HttpRequest, NormalizeOptions};
use agentmesh_proto::limits::{
    Caller, ConnectionLimiter, ConnectionSlot, Cut, ListenerLimits, RequestBody,
};
use agentmesh_sdk::{LocalAddr, LocalConnector, LocalStream};
use agentmesh_sdk::{RequestRefused, header_pairs, normalize_request};
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::{Span, SpanKind, attr};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Protocol;
use crate::http_util::{BoxBody, XFCC, json_response, strip_hop_by_hop};
use crate::policy::PolicyWatch;
use crate::telemetry::{
    A2aLog, AccessRecord, McpLog, Metrics, TraceContext, access_log, span_identities, span_outcome,
};
use agentmesh_sdk::X509Context;
use agentmesh_sdk::X509Source;
use agentmesh_sdk::tls::ServerTls;

mod a2a_route;
mod mcp_route;

/// What the inbound sends the app: the caller's body as it streams in, or an MCP message
/// that was read whole to be decided.
type AppBody = Either<RequestBody, Full<Bytes>>;

/// An open inbound connection, tracked so an intention change can close it.
#[derive(Debug)]
struct OpenConnection {
    peer: SpiffeId,
    tcp: bool,
    kill: watch::Sender<Option<String>>,
}

/// Every open inbound connection.
#[derive(Debug, Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, OpenConnection>>,
}

/// Removes a connection from [`Connections`] when it ends.
struct Registered {
    conns: Arc<Connections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Connections {
    fn register(
        self: &Arc<Self>,
        peer: SpiffeId,
        tcp: bool,
    ) -> (Registered, watch::Receiver<Option<String>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kill, rx) = watch::channel(None);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, OpenConnection { peer, tcp, kill });
        (
            Registered {
                conns: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Closes every connection whose peer the policy now denies. Returns how many.
    fn revoke_denied(
        &self,
        policy: &agentmesh_policy::PolicySet,
        own: &SpiffeId,
        metrics: &Metrics,
    ) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for c in open.values() {
            let d = if c.tcp {
                policy.check_tcp(&c.peer, own)
            } else {
                policy.check_connection(&c.peer, own)
            };
            if !d.is_allowed() && c.kill.borrow().is_none() {
                tracing::info!(peer = %c.peer, intention = d.intention_id.as_deref().unwrap_or("none"), reason = %d.reason, "closing a connection: an intention change denies its peer");
                metrics.revoked(&c.peer.to_string());
                c.kill.send_replace(Some(d.reason));
                closed += 1;
            }
        }
        closed
    }
}

/// The inbound side of one proxy.
#[derive(Debug, Clone)]
pub struct Inbound {
    identity: Arc<X509Source>,
    policy: Arc<PolicyWatch>,
    metrics: Arc<Metrics>,
    app: LocalAddr,
    protocol: Protocol,
    /// Open connections, for revocation.
    pub connections: Arc<Connections>,
    /// Open MCP and A2A answer streams, re-decided on every policy change.
    call_streams: Arc<mcp_route::CallStreams>,
    app_client: Client<LocalConnector, AppBody>,
    /// Presents the current SVID; rebuilt only when the roots change.
    tls: Arc<ServerTls>,
    /// How HTTP requests are normalised before they are decided and forwarded.
    normalize: NormalizeOptions,
    limits: Arc<ListenerLimits>,
    limiter: Arc<ConnectionLimiter>,
    /// The largest MCP message read on a pair with MCP permissions.
    mcp_max_body: usize,
    /// The largest A2A request read on a pair with A2A permissions.
    a2a_max_body: usize,
    /// Whose user tokens are verified on MCP routes, and for which audience.
    user_tokens: Option<agentmesh_sdk::delegation::UserTokenIssuer>,
}

impl Inbound {
    /// The inbound side in front of `app`.
    pub fn new(
        identity: Arc<X509Source>,
        policy: Arc<PolicyWatch>,
        metrics: Arc<Metrics>,
        app: LocalAddr,
        protocol: Protocol,
    ) -> Self {
        let connector = LocalConnector::to(app.clone());
        let alpn: &[&[u8]] = match protocol {
            Protocol::Http => &[b"h2", b"http/1.1"],
            Protocol::Tcp => &[],
        };
        // Any SVID that chains to the bundle completes the handshake; intentions, not the
        // handshake, decide, so a refusal is logged with the peer's verified ID and a reason.
        let tls = ServerTls::new(identity.clone(), agentmesh_tls::any_id(), alpn);
        Self {
            identity,
            policy,
            metrics,
            app,
            protocol,
            connections: Arc::default(),
            call_streams: Arc::default(),
            // Below the apps' own idle keep-alive close (limits.header_timeout, 10 s by
            // default), so a pooled connection is never reused just as the app closes it.
            app_client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
            tls: Arc::new(tls),
            normalize: NormalizeOptions::default(),
            limits: Arc::default(),
            limiter: ConnectionLimiter::new(&ListenerLimits::default()),
            mcp_max_body: crate::config::DEFAULT_MCP_MAX_BODY_BYTES,
            a2a_max_body: crate::config::DEFAULT_A2A_MAX_BODY_BYTES,
            user_tokens: None,
        }
    }

    /// Verifies user tokens signed by `issuer` (a service name or SPIFFE ID, resolved in the
    /// sidecar's trust domain) for `audience` (default that trust domain) on MCP routes.
    #[must_use]
    pub fn with_user_tokens(mut self, issuer: Option<String>, audience: Option<String>) -> Self {
        self.user_tokens =
            issuer.map(|issuer| agentmesh_sdk::delegation::UserTokenIssuer { issuer, audience });
        self
    }

    /// Reads MCP messages up to `bytes` (from `[inbound] mcp_max_body_bytes`).
    #[must_use]
    pub fn with_mcp_max_body(mut self, bytes: usize) -> Self {
        self.mcp_max_body = bytes;
        self
    }

    /// Reads A2A requests up to `bytes` (from `[inbound] a2a_max_body_bytes`).
    #[must_use]
    pub fn with_a2a_max_body(mut self, bytes: usize) -> Self {
        self.a2a_max_body = bytes;
        self
    }

    /// Normalises HTTP requests with `options` (from `[inbound]`) instead of the defaults.
    pub fn with_normalize_options(mut self, options: NormalizeOptions) -> Self {
        self.normalize = options;
        self
    }

    /// Applies `limits`, counting connections in `limiter` (one per listener, shared by
    /// every worker that accepts on it).
    #[must_use]
    pub fn with_limits(
        mut self,
        limits: Arc<ListenerLimits>,
        limiter: Arc<ConnectionLimiter>,
    ) -> Self {
        self.limits = limits;
        self.limiter = limiter;
        self
    }

    /// Closes connections an intention change denies, whenever the policy changes.
    pub async fn revoke_on_change(self, mut stop: watch::Receiver<bool>) {
        let mut rx = self.policy.subscribe();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let policy = rx.borrow_and_update().clone();
            self.metrics.set_policy_revision(policy.revision);
            let own = self.identity.current();
            self.connections
                .revoke_denied(&policy.set, &own.svid.id, &self.metrics);
            // A change may deny one tool or A2A method while the pair stays allowed: its open
            // streams end.
            self.call_streams.revoke_denied(&policy.set, &self.metrics);
        }
    }

    /// Accepts until `stop` fires.
    pub async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        while let Some((tcp, addr)) = crate::accept(&listener, &mut stop).await {
            // Before the handshake the caller is unknown: only the listener's total counts.
            let slot = match self.limiter.admit() {
                Ok(slot) => slot,
                Err(cut) => {
                    self.metrics.on_cut("inbound", addr)(cut);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().connection(tcp, addr, slot));
        }
    }

    async fn connection(self, tcp: TcpStream, addr: SocketAddr, mut slot: ConnectionSlot) {
        let started = Instant::now();
        let own = self.identity.current();
        let cfg = match self.tls.config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the inbound TLS config");
                return;
            }
        };
        let tls = match tokio::time::timeout(
            self.limits.handshake_timeout,
            tokio_rustls::TlsAcceptor::from(cfg).accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = classify_handshake_error(&e);
                tracing::warn!(peer_addr = %addr, reason, error = %e, "inbound TLS handshake refused; nothing reached the app");
                self.metrics.handshake_failed(reason);
                return;
            }
            Err(_) => {
                tracing::warn!(peer_addr = %addr, reason = "timeout", "inbound TLS handshake timed out; nothing reached the app");
                self.metrics.handshake_failed("timeout");
                self.metrics.cut("inbound", Cut::HandshakeTimeout);
                return;
            }
        };
        let Some(peer) = agentmesh_tls::peer_identity(tls.get_ref().1) else {
            // Unreachable with a required client certificate; refuse rather than assume.
            self.metrics.handshake_failed("no_spiffe_id");
            return;
        };
        if let Err(cut) = slot.identify(Caller::Spiffe(peer.to_string())) {
            self.metrics.on_cut("inbound", format!("{peer} at {addr}"))(cut);
            return;
        }
        match self.protocol {
            Protocol::Tcp => self.tcp_session(tls, peer, own, addr, started).await,
            Protocol::Http => self.http_session(tls, peer, own, addr).await,
        }
        drop(slot);
    }

    async fn tcp_session(
        self,
        mut tls: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SpiffeId,
        own: Arc<X509Context>,
        addr: SocketAddr,
        started: Instant,
    ) {
        // Raw TCP carries no headers, so each connection starts a trace of its own.
        let mut span = Span::start(
            "proxy inbound",
            SpanKind::Server,
            TraceContext::continue_or_start(None),
        );
        let trace_id = span.context().trace_id_hex();
        let policy = self.policy.current();
        let d = policy.set.check_tcp(&peer, &own.svid.id);
        let (source, destination) = (peer.to_string(), own.svid.id.to_string());
        if span.is_recording() {
            span_identities(
                &mut span,
                &destination,
                &source,
                &destination,
                &source,
                "tcp",
                Some(addr),
            );
        }
        self.metrics.decided("inbound", &source, d.is_allowed());
        let log = |span: &mut Span, decision: &str, reason: &str, bytes: Option<(u64, u64)>| {
            span_outcome(span, decision, d.intention_id.as_deref(), reason, None);
            access_log(&AccessRecord {
                ts: agentmesh_telemetry::clock::now_rfc3339_millis(),
                direction: "inbound",
                protocol: "tcp",
                source: &source,
                destination: &destination,
                decision,
                intention: d.intention_id.as_deref(),
                reason,
                trace_id: &trace_id,
                method: None,
                path: None,
                status: None,
                peer_addr: addr.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                bytes_in: bytes.map(|b| b.0),
                bytes_out: bytes.map(|b| b.1),
                mcp: None,
                a2a: None,
            });
        };
        if !d.is_allowed() {
            log(&mut span, "deny", &d.reason, None);
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            return;
        }
        let (_registered, mut kill) = self.connections.register(peer.clone(), true);
        let mut app = match LocalStream::connect(&self.app).await {
            Ok(a) => a,
            Err(e) => {
                let why = format!(
                    "{}; but the app at {} is unreachable: {e}",
                    d.reason, self.app
                );
                log(&mut span, "allow", &why, None);
                span.set_error(&why);
                return;
            }
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut tls, &mut app) => {
                log(&mut span, "allow", &d.reason, r.ok());
            }
            why = async { kill.wait_for(Option::is_some).await.map(|w| w.clone().unwrap_or_default()) } => {
                log(&mut span, "deny", &format!("revoked: {}", why.unwrap_or_default()), None);
            }
        }
    }

    async fn http_session(
        self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SpiffeId,
        own: Arc<X509Context>,
        addr: SocketAddr,
    ) {
        let (_registered, mut kill) = self.connections.register(peer.clone(), false);
        let me = self.clone();
        let on_cut = self.metrics.on_cut("inbound", format!("{peer} at {addr}"));
        let service = hyper::service::service_fn(move |req: Request<RequestBody>| {
            let me = me.clone();
            let peer = peer.clone();
            let own = own.clone();
            async move { Ok::<_, std::convert::Infallible>(me.request(req, &peer, &own, addr).await) }
        });
        let conn = agentmesh_proto::limits::serve_http(
            tls,
            service,
            self.limits.clone(),
            on_cut,
            std::future::pending(),
        );
        tokio::select! {
            () = conn => {}
            // Dropping the connection future closes the socket and every stream on it.
            _ = kill.wait_for(Option::is_some) => {}
        }
    }

    async fn request(
        &self,
        mut req: Request<RequestBody>,
        peer: &SpiffeId,
        own: &X509Context,
        addr: SocketAddr,
    ) -> Response<BoxBody> {
        let started = Instant::now();
        // Whatever a caller sent as its identity is dropped before anything looks at headers.
        req.headers_mut().remove(XFCC);
        // The caller's span (its outbound proxy's) becomes this span's parent; the app gets
        // a traceparent naming this span.
        let mut span = Span::server("proxy inbound", req.headers());
        let trace_id = span.context().trace_id_hex();
        let method = req.method().as_str().to_owned();
        // Decided, logged and forwarded in the normalised form, so the rules judge the path
        // the app will route; a request that cannot be normalised is refused here.
        let normalized = normalize_request(&mut req, &self.normalize);
        let path = req.uri().path().to_owned();
        // On a pair whose intention has MCP permissions, a POST carries an MCP message,
        // which is read and decided per tool, resource and prompt.
        if normalized.is_ok()
            && req.method() == http::Method::POST
            && self.policy.current().set.mcp_applies(peer, &own.svid.id)
        {
            let ctx = mcp_route::Ctx {
                started,
                addr,
                peer,
                own,
                trace_id: &trace_id,
                method: &method,
                path: &path,
            };
            return self.mcp_request(req, ctx, span).await;
        }
        // Likewise an A2A request, decided per method.
        if normalized.is_ok()
            && req.method() == http::Method::POST
            && self.policy.current().set.a2a_applies(peer, &own.svid.id)
        {
            let ctx = mcp_route::Ctx {
                started,
                addr,
                peer,
                own,
                trace_id: &trace_id,
                method: &method,
                path: &path,
            };
            return self.a2a_request(req, ctx, span).await;
        }
        let d = self.decide(&req, &normalized, peer, own, &method, &path);
        let (source, destination) = (peer.to_string(), own.svid.id.to_string());
        if span.is_recording() {
            span_identities(
                &mut span,
                &destination,
                &source,
                &destination,
                &source,
                "http",
                Some(addr),
            );
            span.set_str(attr::HTTP_METHOD, &method);
            span.set_str(attr::URL_PATH, &path);
        }
        self.metrics.decided("inbound", &source, d.is_allowed());
        let record = InboundRecord {
            started,
            addr,
            intention: d.intention_id.as_deref(),
            source: &source,
            destination: &destination,
            trace_id: &trace_id,
            method: &method,
            path: &path,
            mcp: None,
            a2a: None,
        };
        if let Some(refused) = refusal(normalized.is_err(), &d, &record, &mut span) {
            return refused;
        }
        if !self.address_to_app(&mut req, peer, own, &span) {
            record.log(
                &mut span,
                "allow",
                "the request path cannot be forwarded",
                400,
            );
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "bad request path"}),
            );
        }
        match self.app_client.request(req.map(Either::Left)).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                record.log(&mut span, "allow", &d.reason, resp.status().as_u16());
                resp.map(|b| b.boxed_unsync())
            }
            Err(e) => {
                let why = format!("the app at {} is unreachable: {e}", self.app);
                record.log(&mut span, "allow", &why, 502);
                json_response(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": why, "trace_id": trace_id}),
                )
            }
        }
    }

    /// The intentions' answer for this request; one that could not be normalised is denied
    /// without consulting them, since the rules would judge a path the app never sees.
    fn decide(
        &self,
        req: &Request<RequestBody>,
        normalized: &Result<(), RequestRefused>,
        peer: &SpiffeId,
        own: &X509Context,
        method: &str,
        path: &str,
    ) -> agentmesh_policy::Decision {
        let policy = self.policy.current();
        match normalized {
            Ok(()) => policy.set.check_request(
                peer,
                &own.svid.id,
                &HttpRequest {
                    method,
                    path,
                    headers: &header_pairs(req.headers()),
                },
            ),
            Err(refused) => agentmesh_policy::Decision {
                action: agentmesh_policy::Action::Deny,
                intention_id: None,
                reason: format!(
                    "the request is refused before any intention is checked: {refused}"
                ),
            },
        }
    }

    /// Rewrites an allowed request for the plain-HTTP/1.1 app: hop-by-hop headers go, the
    /// verified caller goes in as XFCC, the trace context and Host are set, and the URI points
    /// at the app. False if the path cannot form a URI (the request is then not forwarded).
    fn address_to_app<B>(
        &self,
        req: &mut Request<B>,
        peer: &SpiffeId,
        own: &X509Context,
        span: &Span,
    ) -> bool {
        strip_hop_by_hop(req.headers_mut());
        let xfcc = format!("By={};URI={}", own.svid.id, peer);
        if let Ok(v) = HeaderValue::from_str(&xfcc) {
            req.headers_mut().insert(XFCC, v);
        }
        span.inject(req.headers_mut());
        // HTTP/2 carries the authority in the URI; keep it as Host for the HTTP/1.1 app.
        if !req.headers().contains_key(http::header::HOST)
            && let Some(authority) = req.uri().authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        match format!("{}{}", self.app.http_base(), path_and_query).parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return false,
        }
        *req.version_mut() = http::Version::HTTP_11;
        true
    }
}

/// What the span outcome and access-log line of one inbound request share, whichever way
/// the request ends; borrowed, so the hot path allocates nothing more for it.
struct InboundRecord<'a> {
    started: Instant,
    addr: SocketAddr,
    intention: Option<&'a str>,
    source: &'a str,
    destination: &'a str,
    trace_id: &'a str,
    method: &'a str,
    path: &'a str,
    mcp: Option<McpLog<'a>>,
    a2a: Option<A2aLog<'a>>,
}

impl InboundRecord<'_> {
    fn log(&self, span: &mut Span, decision: &str, reason: &str, status: u16) {
        span_outcome(span, decision, self.intention, reason, Some(status));
        if let Some(m) = &self.mcp
            && span.is_recording()
        {
            // OpenTelemetry's MCP and GenAI names, so trace viewers show the tool.
            span.set_str("mcp.method.name", m.mcp_method);
            for (key, value) in [
                ("gen_ai.tool.name", m.mcp_tool),
                ("mcp.resource.uri", m.mcp_resource),
                ("gen_ai.prompt.name", m.mcp_prompt),
                ("enduser.id", m.user),
            ] {
                if let Some(v) = value {
                    span.set_str(key, v);
                }
            }
        }
        if let Some(a) = &self.a2a
            && span.is_recording()
        {
            span.set_str("a2a.method", a.a2a_method);
            if let Some(u) = a.user {
                span.set_str("enduser.id", u);
            }
        }
        access_log(&AccessRecord {
            ts: agentmesh_telemetry::clock::now_rfc3339_millis(),
            direction: "inbound",
            protocol: "http",
            source: self.source,
            destination: self.destination,
            decision,
            intention: self.intention,
            reason,
            trace_id: self.trace_id,
            method: Some(self.method),
            path: Some(self.path),
            status: Some(status),
            peer_addr: self.addr.to_string(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            bytes_in: None,
            bytes_out: None,
            mcp: self.mcp,
            a2a: self.a2a,
        });
    }
}

/// The logged answer to a request that never reaches the app: 400 if it could not be
/// normalised, 403 if no intention allows it; `None` if it may go on.
fn refusal(
    unnormalized: bool,
    d: &agentmesh_policy::Decision,
    record: &InboundRecord<'_>,
    span: &mut Span,
) -> Option<Response<BoxBody>> {
    let (status, error, intention) = if unnormalized {
        (StatusCode::BAD_REQUEST, "bad request", None)
    } else if !d.is_allowed() {
        (
            StatusCode::FORBIDDEN,
            "denied by intentions",
            d.intention_id.as_deref(),
        )
    } else {
        return None;
    };
    record.log(span, "deny", &d.reason, status.as_u16());
    Some(json_response(
        status,
        &serde_json::json!({
            "error": error,
            "source": record.source,
            "destination": record.destination,
            "intention": intention,
            "reason": d.reason,
            "trace_id": record.trace_id,
        }),
    ))
}

/// A short, stable name for why a handshake failed, for the metric label and the log.
pub fn classify_handshake_error(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsErr};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<TlsErr>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed_during_handshake",
            _ => "io_error",
        };
    };
    match tls {
        TlsErr::NoCertificatesPresented => "no_client_certificate",
        TlsErr::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        TlsErr::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "untrusted_certificate",
        TlsErr::InvalidCertificate(_) => "bad_certificate",
        TlsErr::PeerIncompatible(_) | TlsErr::Other(_) => "protocol_version",
        TlsErr::InvalidMessage(_) => "not_tls",
        TlsErr::AlertReceived(_) => "alert_from_client",
        _ => "other",
    }
}
