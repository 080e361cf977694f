//! axum/tower: [`serve`] accepts mTLS connections and hands each request the verified peer's
//! SPIFFE ID; [`RequireIdentity`] guards a route by that ID; [`PeerIdentity`] extracts it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentmesh_proto::limits::{self, Caller, ConnectionLimiter, Cut, ListenerLimits, RequestBody};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::{AuthorizeError, Authorizer};
use axum::Router;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Request, StatusCode};
use tokio::net::TcpListener;

use crate::local::{LocalAddr, LocalListener};
use crate::source::X509Source;
use crate::tls::{ALPN_HTTP, ServerTls};

/// Why serving failed, or why a request was refused. As a response it is a JSON body with
/// the reason (403 for refusals).
///
/// # Examples
/// ```
/// use axum::response::IntoResponse;
/// let resp = agentmesh_sdk::ServeError::NoPeerIdentity.into_response();
/// assert_eq!(resp.status(), http::StatusCode::FORBIDDEN);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS config could not be built from the source.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// Accepting on the listener failed.
    #[error("accepting connections: {0}")]
    Accept(#[source] std::io::Error),
    /// The request did not arrive over a connection [`serve`] verified.
    #[error("no verified peer identity on this request; serve it with agentmesh_sdk::serve")]
    NoPeerIdentity,
    /// The peer's SPIFFE ID is not admitted on this route.
    #[error("{0}")]
    Forbidden(#[from] AuthorizeError),
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NoPeerIdentity | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Tls(_) | Self::Accept(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        json_error(status, "forbidden", &self.to_string())
    }
}

pub(crate) fn json_error(status: StatusCode, error: &str, reason: &str) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The verified SPIFFE ID of the peer that sent the request; [`serve`] puts it in each
/// request's extensions, and it works as an axum extractor (403 if absent).
///
/// # Examples
/// ```
/// use agentmesh_sdk::PeerIdentity;
/// use axum::{Router, routing::get};
/// let app: Router = Router::new()
///     .route("/whoami", get(|PeerIdentity(id): PeerIdentity| async move { id.to_string() }));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub SpiffeId);

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = ServeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<PeerIdentity>()
            .cloned()
            .ok_or(ServeError::NoPeerIdentity)
    }
}

/// A per-route layer that admits only peers its policy admits; others get a 403 with a JSON
/// body `{"error":"forbidden","reason":...}` saying who was refused and what was expected.
///
/// # Examples
/// ```
/// use agentmesh_sdk::RequireIdentity;
/// use axum::{Router, routing::{get, post}};
/// let app: Router = Router::new()
///     .route("/admin", post(|| async { "ok" })
///         .route_layer(RequireIdentity::exact(["spiffe://example.org/ops".parse().unwrap()])))
///     .route("/read", get(|| async { "ok" })
///         .route_layer(RequireIdentity::member_of("example.org".parse().unwrap())));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct RequireIdentity {
    policy: Arc<dyn Authorizer>,
}

impl RequireIdentity {
    /// Admits only the listed IDs; an empty list admits nobody.
    ///
    /// # Examples
    /// ```
    /// let layer = agentmesh_sdk::RequireIdentity::exact([
    ///     "spiffe://example.org/a".parse().unwrap(),
    ///     "spiffe://example.org/b".parse().unwrap(),
    /// ]);
    /// # let _ = layer;
    /// ```
    pub fn exact(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::new(agentmesh_tls::exact(ids))
    }

    /// Admits any ID in `trust_domain`.
    ///
    /// # Examples
    /// ```
    /// let layer = agentmesh_sdk::RequireIdentity::member_of("example.org".parse().unwrap());
    /// # let _ = layer;
    /// ```
    pub fn member_of(trust_domain: TrustDomain) -> Self {
        Self::new(agentmesh_tls::member_of(trust_domain))
    }

    /// Admits whatever the closure admits; refuse with [`AuthorizeError::denied`].
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{AuthorizeError, RequireIdentity};
    /// let layer = RequireIdentity::from_fn(|peer| {
    ///     if peer.path().starts_with("/agents/") {
    ///         Ok(())
    ///     } else {
    ///         Err(AuthorizeError::denied(peer, "expected a path under /agents/"))
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&SpiffeId) -> Result<(), AuthorizeError> + Send + Sync + 'static,
    {
        Self::new(agentmesh_tls::from_fn(f))
    }

    /// Uses any [`Authorizer`].
    ///
    /// # Examples
    /// ```
    /// let layer = agentmesh_sdk::RequireIdentity::new(agentmesh_tls::any_id());
    /// # let _ = layer;
    /// ```
    pub fn new(policy: Arc<dyn Authorizer>) -> Self {
        Self { policy }
    }

    /// The decision this layer makes for a request's extensions.
    fn check(&self, extensions: &http::Extensions) -> Result<(), ServeError> {
        let peer = extensions
            .get::<PeerIdentity>()
            .ok_or(ServeError::NoPeerIdentity)?;
        self.policy.authorize(&peer.0).map_err(|e| {
            tracing::info!(peer = %peer.0, reason = %e, "request refused by RequireIdentity");
            ServeError::Forbidden(e)
        })
    }
}

impl<S> tower::Layer<S> for RequireIdentity {
    type Service = RequireIdentityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireIdentityService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireIdentity`] wraps a route in.
///
/// # Examples
/// ```
/// use tower::Layer;
/// let svc = agentmesh_sdk::RequireIdentity::member_of("example.org".parse().unwrap())
///     .layer(tower::service_fn(|_req: http::Request<axum::body::Body>| async {
///         Ok::<_, std::convert::Infallible>(axum::response::Response::new(axum::body::Body::empty()))
///     }));
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct RequireIdentityService<S> {
    inner: S,
    layer: RequireIdentity,
}

impl<S, B> tower::Service<Request<B>> for RequireIdentityService<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Err(refusal) = self.layer.check(req.extensions()) {
            return Box::pin(async move { Ok(refusal.into_response()) });
        }
        // Call the instance that was polled ready and leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

/// Serves `router` over mTLS on `listener` until accepting fails.
///
/// Every client must present an SVID that chains to the source's trust bundle (any SPIFFE ID;
/// use [`serve_with`] to narrow it at the handshake). The verified ID goes into each request
/// as a [`PeerIdentity`], for [`RequireIdentity`] and handlers. HTTP/1.1 and HTTP/2 (ALPN).
///
/// # Errors
/// [`ServeError::Tls`] if no config can be built, [`ServeError::Accept`] if the listener fails.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> Result<(), agentmesh_sdk::ServeError> {
/// use agentmesh_sdk::{RequireIdentity, serve};
/// use axum::{Router, routing::get};
/// let app = Router::new().route("/", get(|| async { "hi" })
///     .route_layer(RequireIdentity::member_of("example.org".parse().unwrap())));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await.unwrap();
/// serve(listener, source, app).await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    source: Arc<X509Source>,
    router: Router,
) -> Result<(), ServeError> {
    serve_with(listener, source, agentmesh_tls::any_id(), router).await
}

/// Like [`serve`], but the handshake itself admits only clients `clients` admits.
///
/// # Errors
/// As [`serve`].
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> Result<(), agentmesh_sdk::ServeError> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await.unwrap();
/// let clients = agentmesh_tls::member_of("example.org".parse().unwrap());
/// agentmesh_sdk::http::serve_with(listener, source, clients, axum::Router::new()).await
/// # }
/// ```
pub async fn serve_with(
    listener: TcpListener,
    source: Arc<X509Source>,
    clients: Arc<dyn Authorizer>,
    router: Router,
) -> Result<(), ServeError> {
    serve_inner(listener, source, clients, router, ListenerLimits::default()).await
}

/// Like [`serve`], with the listener limits of `limits` instead of the defaults: the
/// handshake deadline, the head deadline, the body idle timeout, head sizes, and connections
/// per caller (its SPIFFE ID) and in total.
///
/// # Errors
/// As [`serve`].
pub async fn serve_limited(
    listener: TcpListener,
    source: Arc<X509Source>,
    router: Router,
    limits: ListenerLimits,
) -> Result<(), ServeError> {
    serve_inner(listener, source, agentmesh_tls::any_id(), router, limits).await
}

async fn serve_inner(
    listener: TcpListener,
    source: Arc<X509Source>,
    clients: Arc<dyn Authorizer>,
    router: Router,
    limits: ListenerLimits,
) -> Result<(), ServeError> {
    let limits = Arc::new(limits);
    let limiter = ConnectionLimiter::new(&limits);
    let tls = ServerTls::new(source, clients, ALPN_HTTP);
    // Built once up front so a source that can never serve fails here, not per connection.
    tls.config()?;
    loop {
        let (tcp, remote) = listener.accept().await.map_err(ServeError::Accept)?;
        // The caller is known only after the handshake: until then only the total counts.
        let mut slot = match limiter.admit() {
            Ok(slot) => slot,
            Err(cut) => {
                limits::log_cut("mtls", &remote, cut);
                continue;
            }
        };
        let config = match tls.config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no tls config for a new connection; dropping it");
                continue;
            }
        };
        let router = router.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            let stream = match tokio::time::timeout(limits.handshake_timeout, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "mtls handshake refused");
                    return;
                }
                Err(_) => {
                    limits::log_cut("mtls", &remote, Cut::HandshakeTimeout);
                    return;
                }
            };
            // Required client auth means a verified ID is always there; fail closed if not.
            let Some(peer) = agentmesh_tls::peer_identity(stream.get_ref().1) else {
                tracing::warn!(%remote, "handshake finished without a client spiffe id");
                return;
            };
            let who = format!("{peer} at {remote}");
            if let Err(cut) = slot.identify(Caller::Spiffe(peer.to_string())) {
                limits::log_cut("mtls", &who, cut);
                return;
            }
            let peer = PeerIdentity(peer);
            let service = hyper::service::service_fn(move |mut req: Request<RequestBody>| {
                req.extensions_mut().insert(peer.clone());
                let mut router = router.clone();
                async move {
                    let resp = tower::Service::call(&mut router, req).await;
                    Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
                }
            });
            limits::serve_http(
                stream,
                service,
                limits,
                limits::logging("mtls", who),
                std::future::pending(),
            )
            .await;
            drop(slot);
        });
    }
}

/// An axum router being served on a listener until [`Serving::shutdown`]; the gateway and
/// the AI agents both run this way, plain HTTP behind their sidecar.
#[derive(Debug)]
pub struct Serving {
    /// The bound address.
    pub addr: LocalAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Serves `router` on `listener` with `limits` in a task of its own; `what` names the
    /// listener in log lines.
    pub fn spawn(
        listener: LocalListener,
        addr: LocalAddr,
        router: Router,
        what: &'static str,
        limits: ListenerLimits,
    ) -> Self {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            limits::serve_listener(
                listener,
                limits::TowerService(router),
                limits,
                what,
                shutdown,
            )
            .await;
        });
        Self { addr, stop, task }
    }

    /// Stops serving, letting requests in flight finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    fn app() -> Router {
        Router::new()
            .route(
                "/exact",
                get(|PeerIdentity(p): PeerIdentity| async move { p.to_string() }).route_layer(
                    RequireIdentity::exact(["spiffe://td/good".parse().unwrap()]),
                ),
            )
            .route(
                "/td",
                get(|| async { "ok" })
                    .route_layer(RequireIdentity::member_of("td".parse().unwrap())),
            )
            .route(
                "/fn",
                get(|| async { "ok" }).route_layer(RequireIdentity::from_fn(|p| {
                    if p.path() == "/good" {
                        Ok(())
                    } else {
                        Err(AuthorizeError::denied(p, "only /good"))
                    }
                })),
            )
    }

    async fn call(path: &str, peer: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(PeerIdentity(p.parse().unwrap()));
        }
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_policy_admits_its_peer_and_refuses_others_with_a_json_reason() {
        assert_eq!(
            call("/exact", Some("spiffe://td/good")).await,
            (StatusCode::OK, "spiffe://td/good".into())
        );
        assert_eq!(
            call("/td", Some("spiffe://td/other")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call("/fn", Some("spiffe://td/good")).await.0,
            StatusCode::OK
        );
        for (path, peer, want) in [
            ("/exact", "spiffe://td/bad", "spiffe://td/good"),
            ("/td", "spiffe://other/good", "trust domain td"),
            ("/fn", "spiffe://td/bad", "only /good"),
        ] {
            let (status, body) = call(path, Some(peer)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["error"], "forbidden");
            let reason = json["reason"].as_str().unwrap();
            assert!(reason.contains(peer) && reason.contains(want), "{reason}");
        }
    }

    #[tokio::test]
    async fn a_request_without_a_verified_peer_is_refused() {
        let (status, body) = call("/td", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("no verified peer identity"), "{body}");
    }
}
