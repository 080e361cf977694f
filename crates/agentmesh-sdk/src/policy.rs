//! The intentions and service catalog, followed on the node's policy relay, and
//! [`RequireIntention`]: the same per-request decision a sidecar's inbound makes, for a
//! service that terminates mTLS itself (seed 001: no sidecar).
//!
//! Until the first snapshot arrives the set is empty, so everything is denied. When the node
//! or the server is away, the last snapshot stays in force. The sidecar proxy uses this same
//! watch, so an in-process service and a sidecar can never disagree about a call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_policy::{HttpRequest, IntentionSpec, PolicySet};
use agentmesh_proto::v1::proxy_api_client::ProxyApiClient;
use agentmesh_proto::v1::{PolicySnapshot, RegisterServiceRequest, WatchPolicyRequest};
use agentmesh_spiffe::TrustDomain;
use tokio::sync::watch;

/// One version of the policy.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// The intentions.
    pub set: PolicySet,
    /// SPIFFE ID -> proxy address.
    pub catalog: HashMap<String, String>,
    /// The server's revision; 0 before the first snapshot.
    pub revision: u64,
    /// Whether a snapshot has arrived at all.
    pub received: bool,
}

impl PolicyState {
    /// Builds the state from a snapshot. An intention that does not parse is dropped and
    /// logged: dropping an allow denies, which is the safe direction, and the server validated
    /// every intention with the same code, so this only happens across incompatible versions.
    pub fn from_snapshot(snapshot: &PolicySnapshot, td: &TrustDomain) -> Self {
        let mut intentions = Vec::with_capacity(snapshot.intentions.len());
        for i in &snapshot.intentions {
            match IntentionSpec::from_json(&i.spec_json)
                .and_then(|s| s.validate(td, i.id.clone(), i.created_at))
            {
                Ok(v) => intentions.push(v),
                Err(e) => {
                    tracing::error!(intention = %i.id, error = %e, "ignoring an intention this proxy cannot parse")
                }
            }
        }
        Self {
            set: PolicySet::new(intentions),
            catalog: snapshot
                .services
                .iter()
                .map(|s| (s.spiffe_id.clone(), s.address.clone()))
                .collect(),
            revision: snapshot.revision,
            received: true,
        }
    }
}

/// Follows the node's policy relay, and registers this service's mTLS address in the
/// catalog.
///
/// # Examples
/// ```
/// use agentmesh_sdk::policy::PolicyWatch;
/// let watch = PolicyWatch::new();
/// // Nothing received yet: the empty set, which denies everything.
/// assert!(!watch.current().received);
/// ```
#[derive(Debug)]
pub struct PolicyWatch {
    tx: watch::Sender<Arc<PolicyState>>,
}

/// What a service registers in the catalog.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Our SPIFFE ID.
    pub spiffe_id: String,
    /// Where callers reach our mTLS listener.
    pub address: String,
}

impl PolicyWatch {
    /// A watch holding the empty (deny-all) policy.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: watch::channel(Arc::new(PolicyState::default())).0,
        })
    }

    /// Follows every policy change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicyState>> {
        self.tx.subscribe()
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<PolicyState> {
        self.tx.borrow().clone()
    }

    /// Replaces the policy in force; used by the stream and by in-process tests.
    pub fn set(&self, state: PolicyState) {
        self.tx.send_replace(Arc::new(state));
    }

    /// Follows the relay on `socket` until `stop` fires. After each (re)connection the
    /// registration, if any, is sent again, so a restarted node or server learns it anew.
    pub async fn run(
        self: Arc<Self>,
        socket: PathBuf,
        td: TrustDomain,
        registration: Option<Registration>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut delay = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.follow(&socket, &td, registration.as_ref()) => r,
            };
            if started.elapsed() > Duration::from_secs(10) {
                delay = Duration::from_millis(100);
            }
            tracing::warn!(error = %result, revision = self.current().revision, "policy stream ended; enforcing the last policy received and retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(
        &self,
        socket: &Path,
        td: &TrustDomain,
        registration: Option<&Registration>,
    ) -> String {
        let channel = match agentmesh_proto::unix::connect(socket).await {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let mut client = ProxyApiClient::new(channel)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
        let mut stream = match client
            .watch_policy(workload_request(WatchPolicyRequest {}))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return format!("{:?}: {}", s.code(), s.message()),
        };
        if let Some(reg) = registration {
            tokio::spawn(register(client.clone(), reg.clone()));
        }
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    let state = PolicyState::from_snapshot(&snapshot, td);
                    tracing::debug!(
                        revision = state.revision,
                        intentions = state.set.intentions().len(),
                        "policy updated"
                    );
                    self.set(state);
                }
                Ok(None) => return "the node closed the policy stream".into(),
                Err(s) => return format!("{:?}: {}", s.code(), s.message()),
            }
        }
    }
}

/// Registers until it succeeds or is refused for good.
async fn register(mut client: ProxyApiClient<tonic::transport::Channel>, reg: Registration) {
    let mut delay = Duration::from_millis(200);
    loop {
        let req = RegisterServiceRequest {
            spiffe_id: reg.spiffe_id.clone(),
            address: reg.address.clone(),
        };
        match client.register_service(workload_request(req)).await {
            Ok(_) => {
                tracing::info!(service = %reg.spiffe_id, address = %reg.address, "registered in the service catalog");
                return;
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ) =>
            {
                tracing::error!(service = %reg.spiffe_id, error = %s.message(), "the service catalog refused this registration");
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "registration failed; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn workload_request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// One decision [`RequireIntention`] made, in the shape of a sidecar's access-log object so
/// the same readers (the inspector, `jq`) take both.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    /// Always `inbound`: the service decides about its callers.
    pub direction: &'static str,
    /// Always `http`.
    pub protocol: &'static str,
    /// The caller's verified SPIFFE ID.
    pub source: String,
    /// This service's SPIFFE ID.
    pub destination: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The intention that decided; `None` for the default deny.
    pub intention: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The W3C trace id of the request, when it carried a `traceparent`.
    pub trace_id: String,
    /// HTTP method.
    pub method: String,
    /// HTTP path.
    pub path: String,
    /// The status answered (for an allow: the handler's).
    pub status: u16,
    /// Milliseconds from the decision to the response.
    pub duration_ms: u64,
}

/// Where [`RequireIntention`] reports each decision (an access log, a live feed).
pub type DecisionSink = Arc<dyn Fn(&DecisionRecord) + Send + Sync>;

/// A layer that admits a request only if an intention allows its verified caller (the
/// [`PeerIdentity`](crate::PeerIdentity) [`serve`](crate::serve) attached) to call `me` with
/// this method and path — exactly the decision the sidecar's inbound makes, from the same
/// policy relay. A refusal is the sidecar's 403: `{"error":"denied by intentions",
/// "source","destination","intention","reason","trace_id"}`. Before the first policy
/// snapshot everything is refused.
///
/// # Examples
/// ```
/// use agentmesh_sdk::policy::{PolicyWatch, RequireIntention};
/// use axum::{Router, routing::post};
/// let watch = PolicyWatch::new();
/// let me = "spiffe://example.org/writer".parse().unwrap();
/// let app: Router = Router::new()
///     .route("/ask", post(|| async { "ok" }))
///     .layer(RequireIntention::new(watch, me));
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct RequireIntention {
    policy: Arc<PolicyWatch>,
    me: agentmesh_spiffe::SpiffeId,
    sink: Option<DecisionSink>,
}

impl std::fmt::Debug for RequireIntention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireIntention")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl RequireIntention {
    /// Decides for the service `me` with the intentions `policy` follows.
    ///
    /// # Examples
    /// ```
    /// let layer = agentmesh_sdk::policy::RequireIntention::new(
    ///     agentmesh_sdk::policy::PolicyWatch::new(),
    ///     "spiffe://example.org/writer".parse().unwrap(),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn new(policy: Arc<PolicyWatch>, me: agentmesh_spiffe::SpiffeId) -> Self {
        Self {
            policy,
            me,
            sink: None,
        }
    }

    /// Also reports every decision to `sink`.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// let layer = agentmesh_sdk::policy::RequireIntention::new(
    ///     agentmesh_sdk::policy::PolicyWatch::new(),
    ///     "spiffe://example.org/writer".parse().unwrap(),
    /// )
    /// .with_sink(Arc::new(|d| println!("{} {}", d.decision, d.reason)));
    /// # let _ = layer;
    /// ```
    pub fn with_sink(mut self, sink: DecisionSink) -> Self {
        self.sink = Some(sink);
        self
    }
}

impl<S> tower::Layer<S> for RequireIntention {
    type Service = RequireIntentionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireIntentionService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`RequireIntention`] wraps around a route.
#[derive(Clone, Debug)]
pub struct RequireIntentionService<S> {
    layer: RequireIntention,
    inner: S,
}

/// The trace id in a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
fn trace_id_of(headers: &http::HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_owned()
}

impl<S, B> tower::Service<http::Request<B>> for RequireIntentionService<S>
where
    S: tower::Service<http::Request<B>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use axum::response::IntoResponse as _;
        let started = std::time::Instant::now();
        let layer = self.layer.clone();
        let peer = req
            .extensions()
            .get::<crate::PeerIdentity>()
            .map(|p| p.0.clone());
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let trace_id = trace_id_of(req.headers());
        let (allowed, intention, reason) = match &peer {
            // `serve` always attaches the verified ID; without it nothing is known: refuse.
            None => (
                false,
                None,
                "no verified caller identity on this request".to_owned(),
            ),
            Some(peer) => {
                let headers: Vec<(&str, &str)> = req
                    .headers()
                    .iter()
                    .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
                    .collect();
                let d = layer.policy.current().set.check_request(
                    peer,
                    &layer.me,
                    &HttpRequest {
                        method: &method,
                        path: &path,
                        headers: &headers,
                    },
                );
                (d.is_allowed(), d.intention_id.clone(), d.reason.clone())
            }
        };
        let record = move |decision: &'static str, status: u16| DecisionRecord {
            direction: "inbound",
            protocol: "http",
            source: peer.as_ref().map(ToString::to_string).unwrap_or_default(),
            destination: layer.me.to_string(),
            decision,
            intention: intention.clone(),
            reason: reason.clone(),
            trace_id: trace_id.clone(),
            method: method.clone(),
            path: path.clone(),
            status,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let sink = self.layer.sink.clone();
        if !allowed {
            let r = record("deny", 403);
            if let Some(sink) = &sink {
                sink(&r);
            }
            let body = serde_json::json!({
                "error": "denied by intentions",
                "source": r.source,
                "destination": r.destination,
                "intention": r.intention,
                "reason": r.reason,
                "trace_id": r.trace_id,
            });
            return Box::pin(async move {
                Ok((
                    http::StatusCode::FORBIDDEN,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response())
            });
        }
        // The clone is the ready one's twin; take the ready one (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            if let Some(sink) = &sink {
                sink(&record("allow", resp.status().as_u16()));
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::v1::{Intention, PolicySnapshot};
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use http_body_util::BodyExt as _;
    use std::sync::Mutex;
    use tower::ServiceExt as _;

    fn snapshot(action: &str) -> PolicySnapshot {
        PolicySnapshot {
            revision: 3,
            intentions: vec![Intention {
                id: "int-1".into(),
                spec_json: format!(
                    r#"{{"source":"spiffe://td/researcher","destination":"spiffe://td/writer","action":"{action}"}}"#
                ),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    async fn call(
        watch: &Arc<PolicyWatch>,
        peer: Option<&str>,
    ) -> (u16, serde_json::Value, Vec<DecisionRecord>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = Router::new().route("/ask", post(|| async { "ok" })).layer(
            RequireIntention::new(watch.clone(), "spiffe://td/writer".parse().unwrap())
                .with_sink(Arc::new(move |d| s.lock().unwrap().push(d.clone()))),
        );
        let mut req = http::Request::post("/ask")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(Body::empty())
            .unwrap();
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(crate::PeerIdentity(p.parse().unwrap()));
        }
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let seen = seen.lock().unwrap().clone();
        (status, json, seen)
    }

    #[tokio::test]
    async fn requests_follow_the_intentions_and_deny_before_the_first_snapshot() {
        let td: TrustDomain = "td".parse().unwrap();
        let watch = PolicyWatch::new();
        let (status, body, seen) = call(&watch, Some("spiffe://td/researcher")).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "denied by intentions");
        assert_eq!(seen[0].decision, "deny");

        watch.set(PolicyState::from_snapshot(&snapshot("allow"), &td));
        let (status, _, seen) = call(&watch, Some("spiffe://td/researcher")).await;
        assert_eq!(status, 200);
        assert_eq!(seen[0].decision, "allow");
        assert_eq!(seen[0].intention.as_deref(), Some("int-1"));
        assert_eq!(seen[0].trace_id, "0af7651916cd43dd8448eb211c80319c");

        // Someone the intention does not name: the default deny, no intention.
        let (status, body, _) = call(&watch, Some("spiffe://td/frontend")).await;
        assert_eq!(status, 403);
        assert!(body["intention"].is_null(), "{body}");

        // The intention turned to deny: the next request is refused by it.
        watch.set(PolicyState::from_snapshot(&snapshot("deny"), &td));
        let (status, body, _) = call(&watch, Some("spiffe://td/researcher")).await;
        assert_eq!(status, 403);
        assert_eq!(body["intention"], "int-1");

        // No verified identity at all: refused, whatever the policy.
        watch.set(PolicyState::from_snapshot(&snapshot("allow"), &td));
        let (status, body, _) = call(&watch, None).await;
        assert_eq!(status, 403);
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("no verified caller")
        );
    }
}
