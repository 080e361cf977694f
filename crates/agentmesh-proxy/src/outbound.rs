//! The local side: plain listeners for the app, each sending to one destination service over
//! mutual TLS, accepting only a server whose SVID carries exactly the destination's SPIFFE ID.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_proto::limits::{ConnectionLimiter, ListenerLimits, RequestBody};
use agentmesh_sdk::{LocalListener, LocalPeer, LocalStream};
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::{Span, SpanKind, attr};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Protocol;
use crate::http_util::{BoxBody, json_response, strip_hop_by_hop};
use crate::policy::PolicyWatch;
use crate::telemetry::{
    AccessRecord, Metrics, TraceContext, access_log, span_identities, span_outcome,
};
use agentmesh_sdk::X509Source;
use agentmesh_sdk::tls::ClientTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the destination could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// No address configured and none in the catalog.
    #[error(
        "{0} is not in the service catalog (no proxy has registered it) and the upstream has no address"
    )]
    NotInCatalog(SpiffeId),
    /// TCP connect failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// The TLS handshake failed (wrong server identity, untrusted chain, or refused by the peer).
    #[error("mTLS handshake with {0} failed: {1}")]
    Handshake(String, std::io::Error),
    /// Building the TLS config failed.
    #[error("tls config: {0}")]
    Tls(#[from] agentmesh_sdk::tls::TlsConfigError),
    /// HTTP/2 setup failed.
    #[error("HTTP/2 with {0}: {1}")]
    Http(String, hyper::Error),
    /// Timed out.
    #[error("connecting to {0} timed out")]
    Timeout(String),
}

/// One `[[upstream]]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    destination: SpiffeId,
    address: Option<String>,
    protocol: Protocol,
    identity: Arc<X509Source>,
    policy: Arc<PolicyWatch>,
    metrics: Arc<Metrics>,
    /// Presents the current SVID; rebuilt only when the roots change.
    tls: Arc<ClientTls>,
    pool: Arc<tokio::sync::Mutex<Option<SendRequest<RequestBody>>>>,
    limits: Arc<ListenerLimits>,
    limiter: Arc<ConnectionLimiter>,
}

impl Upstream {
    /// An upstream to `destination`.
    pub fn new(
        destination: SpiffeId,
        address: Option<String>,
        protocol: Protocol,
        identity: Arc<X509Source>,
        policy: Arc<PolicyWatch>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let alpn: &[&[u8]] = match protocol {
            Protocol::Http => &[b"h2"],
            Protocol::Tcp => &[],
        };
        let tls = ClientTls::new(
            identity.clone(),
            agentmesh_tls::exact([destination.clone()]),
            alpn,
        );
        Self {
            destination,
            address,
            protocol,
            identity,
            policy,
            metrics,
            tls: Arc::new(tls),
            pool: Arc::default(),
            limits: Arc::default(),
            limiter: ConnectionLimiter::new(&ListenerLimits::default()),
        }
    }

    /// Applies `limits`, counting connections in `limiter` (one per listener, shared by
    /// every worker that accepts on it). The caller is the local peer's address.
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

    fn client_config(&self) -> Result<Arc<ClientConfig>, OutboundError> {
        Ok(self.tls.config()?)
    }

    fn address(&self) -> Result<String, OutboundError> {
        if let Some(a) = &self.address {
            return Ok(a.clone());
        }
        self.policy
            .current()
            .catalog
            .get(&self.destination.to_string())
            .cloned()
            .ok_or_else(|| OutboundError::NotInCatalog(self.destination.clone()))
    }

    async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OutboundError> {
        let addr = self.address()?;
        let cfg = self.client_config()?;
        let fut = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| OutboundError::Connect(addr.clone(), e))?;
            let _ = tcp.set_nodelay(true);
            // The name is not checked: the verifier pins the destination's SPIFFE ID.
            let name = ServerName::try_from("agentmesh-upstream")
                .unwrap_or_else(|_| unreachable!("a valid constant name"));
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| OutboundError::Handshake(addr.clone(), e))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| OutboundError::Timeout(addr.clone()))?
    }

    /// A multiplexed HTTP/2 sender to the destination, reusing the pooled connection while
    /// it is open.
    async fn sender(&self) -> Result<SendRequest<RequestBody>, OutboundError> {
        let mut pooled = self.pool.lock().await;
        if let Some(s) = pooled.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tls = self.connect_tls().await?;
        let addr = self.address().unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| OutboundError::Http(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "pooled upstream connection ended");
            }
        });
        *pooled = Some(sender.clone());
        Ok(sender)
    }

    /// Accepts local connections until `stop` fires.
    pub async fn serve(self, listener: LocalListener, mut stop: watch::Receiver<bool>) {
        while let Some((tcp, addr)) = crate::accept_local(&listener, &mut stop).await {
            let slot = match self.limiter.admit_caller(crate::local_caller(&addr)) {
                Ok(slot) => slot,
                Err(cut) => {
                    self.metrics.on_cut("outbound", addr)(cut);
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                match me.protocol {
                    Protocol::Tcp => me.tcp_session(tcp, addr).await,
                    Protocol::Http => me.http_session(tcp, addr).await,
                }
                drop(slot);
            });
        }
    }

    fn own_id(&self) -> String {
        self.identity.current().svid.id.to_string()
    }

    async fn tcp_session(self, mut local: LocalStream, addr: LocalPeer) {
        let started = Instant::now();
        let mut span = Span::start(
            "proxy outbound",
            SpanKind::Client,
            TraceContext::continue_or_start(None),
        );
        let trace_id = span.context().trace_id_hex();
        let (source, destination) = (self.own_id(), self.destination.to_string());
        if span.is_recording() {
            span_identities(
                &mut span,
                &source,
                &source,
                &destination,
                &destination,
                "tcp",
                None,
            );
        }
        let log = |span: &mut Span, decision: &str, reason: &str, bytes: Option<(u64, u64)>| {
            span_outcome(span, decision, None, reason, None);
            access_log(&AccessRecord {
                ts: agentmesh_telemetry::clock::now_rfc3339_millis(),
                direction: "outbound",
                protocol: "tcp",
                source: &source,
                destination: &destination,
                decision,
                intention: None,
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
        match self.connect_tls().await {
            Ok(mut tls) => {
                let r = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
                log(
                    &mut span,
                    "forwarded",
                    "the destination decides by its intentions",
                    r.ok(),
                );
            }
            Err(e) => {
                self.metrics.decided("outbound", &destination, false);
                log(&mut span, "error", &e.to_string(), None);
            }
        }
    }

    async fn http_session(self, local: LocalStream, addr: LocalPeer) {
        let me = self.clone();
        let peer = addr.clone();
        let service = hyper::service::service_fn(move |req: Request<RequestBody>| {
            let me = me.clone();
            let peer = peer.clone();
            async move { Ok::<_, std::convert::Infallible>(me.request(req, &peer).await) }
        });
        agentmesh_proto::limits::serve_http(
            local,
            service,
            self.limits.clone(),
            self.metrics.on_cut("outbound", addr),
            std::future::pending(),
        )
        .await;
    }

    async fn request(&self, mut req: Request<RequestBody>, addr: &LocalPeer) -> Response<BoxBody> {
        let started = Instant::now();
        // The app's span (if it sent traceparent) is this span's parent; the destination's
        // proxy gets a traceparent naming this span.
        let mut span = Span::start(
            "proxy outbound",
            SpanKind::Client,
            agentmesh_telemetry::extract(req.headers()),
        );
        let trace_id = span.context().trace_id_hex();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let (source, destination) = (self.own_id(), self.destination.to_string());
        if span.is_recording() {
            span_identities(
                &mut span,
                &source,
                &source,
                &destination,
                &destination,
                "http",
                None,
            );
            span.set_str(attr::HTTP_METHOD, &method);
            span.set_str(attr::URL_PATH, &path);
        }
        let log = |span: &mut Span, decision: &str, reason: &str, status: u16| {
            span_outcome(span, decision, None, reason, Some(status));
            access_log(&AccessRecord {
                ts: agentmesh_telemetry::clock::now_rfc3339_millis(),
                direction: "outbound",
                protocol: "http",
                source: &source,
                destination: &destination,
                decision,
                intention: None,
                reason,
                trace_id: &trace_id,
                method: Some(&method),
                path: Some(&path),
                status: Some(status),
                peer_addr: addr.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                bytes_in: None,
                bytes_out: None,
                mcp: None,
                a2a: None,
            });
        };
        strip_hop_by_hop(req.headers_mut());
        span.inject(req.headers_mut());
        let authority = req
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| h.to_str().ok().map(str::to_owned))
            .unwrap_or_else(|| "upstream".into());
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        match format!("http://{authority}{path_and_query}").parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                log(
                    &mut span,
                    "error",
                    "the request cannot be forwarded (bad Host or path)",
                    400,
                );
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "bad Host or path"}),
                );
            }
        }
        *req.version_mut() = http::Version::HTTP_2;
        let result = async {
            let mut sender = self.sender().await?;
            sender
                .ready()
                .await
                .map_err(|e| OutboundError::Http(destination.clone(), e))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| OutboundError::Http(destination.clone(), e))
        }
        .await;
        match result {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                let status = resp.status().as_u16();
                let decision = if status == 403 {
                    "denied_by_destination"
                } else {
                    "forwarded"
                };
                log(
                    &mut span,
                    decision,
                    &format!("the destination answered {status}"),
                    status,
                );
                resp.map(|b| b.boxed_unsync())
            }
            Err(e) => {
                self.metrics.decided("outbound", &destination, false);
                let why = e.to_string();
                log(&mut span, "error", &why, 502);
                json_response(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": why, "destination": destination, "trace_id": trace_id}),
                )
            }
        }
    }
}
