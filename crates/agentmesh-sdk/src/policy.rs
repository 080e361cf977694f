//! The intentions and service catalog, followed on the node's policy relay, and
//! [`RequireIntention`]: the same per-request decision a sidecar's inbound makes, for a
//! service that terminates mTLS itself (no sidecar), normalised exactly as a sidecar
//! normalises ([`normalize_request`], which the sidecar calls too).
//!
//! Until the first snapshot arrives the set is empty, so everything is denied. When the node
//! or the server is away, the last snapshot stays in force. The sidecar proxy uses this same
//! watch, so an in-process service and a sidecar can never disagree about a call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_policy::{
    HeadersWithUnderscoresAction, HttpRequest, IntentionSpec, NormalizeOptions, PathError,
    PolicySet, header_name_has_underscore, normalize_path,
};
use agentmesh_proto::v1::proxy_api_client::ProxyApiClient;
use agentmesh_proto::v1::{PolicySnapshot, RegisterServiceRequest, WatchPolicyRequest};
use agentmesh_spiffe::TrustDomain;
use tokio::sync::watch;

use crate::delegation::CallUser;
use crate::jsonrpc::{ReadError, Refusal, refuse_unread};

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
/// use agentmesh_sdk::PolicyWatch;
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

/// Why a request is refused before any intention is checked (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRefused {
    /// The path cannot be normalised, or the settings refuse its spelling.
    #[error("path {path:?}: {error}")]
    Path {
        /// The path as sent.
        path: String,
        /// Why it is refused.
        error: PathError,
    },
    /// A header name with `_` under `headers_with_underscores_action = "reject_request"`.
    #[error(
        "header {0:?} has an underscore, which headers_with_underscores_action = \"reject_request\" refuses"
    )]
    UnderscoreHeader(String),
    /// The normalised path does not make a URI again (not expected: it only loses bytes).
    #[error("the normalised path {0:?} cannot be forwarded")]
    Unforwardable(String),
}

/// Puts `req` in the form it is decided on and then handled in: header names with
/// underscores follow `options.headers_with_underscores`, and the URI's path is replaced by
/// [`normalize_path`]'s (the query stays as sent), so the route the app matches is the path
/// the intentions saw. The sidecar's inbound and [`RequireIntention`] both call this.
///
/// # Errors
/// [`RequestRefused`]: the request must be answered 400 and go no further.
///
/// # Examples
/// ```
/// use agentmesh_policy::NormalizeOptions;
/// let mut req = http::Request::get("/v1//x/../admin?q=%2F").body(()).unwrap();
/// agentmesh_sdk::normalize_request(&mut req, &NormalizeOptions::default()).unwrap();
/// assert_eq!(req.uri(), "/v1/admin?q=%2F");
/// ```
pub fn normalize_request<B>(
    req: &mut http::Request<B>,
    options: &NormalizeOptions,
) -> Result<(), RequestRefused> {
    if options.headers_with_underscores != HeadersWithUnderscoresAction::Allow {
        let underscored: Vec<http::HeaderName> = req
            .headers()
            .keys()
            .filter(|n| header_name_has_underscore(n.as_str()))
            .cloned()
            .collect();
        if let Some(first) = underscored.first()
            && options.headers_with_underscores == HeadersWithUnderscoresAction::RejectRequest
        {
            return Err(RequestRefused::UnderscoreHeader(first.to_string()));
        }
        for name in underscored {
            req.headers_mut().remove(&name);
        }
    }
    let sent = req.uri().path();
    let normalized = normalize_path(sent, options).map_err(|error| RequestRefused::Path {
        path: sent.to_owned(),
        error,
    })?;
    if normalized != sent {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let mut parts = req.uri().clone().into_parts();
        let unforwardable = || RequestRefused::Unforwardable(path_and_query.clone());
        parts.path_and_query = Some(path_and_query.parse().map_err(|_| unforwardable())?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| unforwardable())?;
    }
    Ok(())
}

/// Every header field line as `(name, raw value)`, a repeated header once per value, which is
/// what [`HttpRequest::headers`] wants.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect()
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
    /// On a route with MCP permissions: the JSON-RPC method (`tools/call`, `tools/list`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    /// `tools/call`'s tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<String>,
    /// The resource URI read, subscribed or completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_resource: Option<String>,
    /// The prompt got or completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_prompt: Option<String>,
    /// On a route with A2A permissions: the A2A method (`SendMessage`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a2a_method: Option<String>,
}

/// An owned copy of a request's head (method, normalised path, every header line), for
/// deciding it again later: the items of a `*/list` answer, the skills of an extended card,
/// or an open stream's call after a policy change.
///
/// # Examples
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-team", "blue".parse().unwrap());
/// let head = agentmesh_sdk::RequestHead::new("POST", "/mcp", &headers);
/// assert_eq!(head.decide(|req| req.headers.len()), 1);
/// ```
#[derive(Debug, Clone)]
pub struct RequestHead {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// Copies `method`, `path` and every line of `headers`.
    pub fn new(method: &str, path: &str, headers: &http::HeaderMap) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Calls `f` with the head as the rules read it.
    pub fn decide<R>(&self, f: impl FnOnce(&HttpRequest<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        f(&HttpRequest {
            method: &self.method,
            path: &self.path,
            headers: &headers,
        })
    }
}

/// Where [`RequireIntention`] reports each decision (an access log, a live feed).
pub type DecisionSink = Arc<dyn Fn(&DecisionRecord) + Send + Sync>;

/// A layer that admits a request only if an intention allows its verified caller (the
/// [`PeerIdentity`](crate::PeerIdentity) [`serve`](crate::serve) attached) to call `me` with
/// this method and path — exactly the decision the sidecar's inbound makes, from the same
/// policy relay. A refusal is the sidecar's 403: `{"error":"denied by intentions",
/// "source","destination","intention","reason","trace_id"}`. Before the first policy
/// snapshot everything is refused. The request is first normalised with
/// [`normalize_request`] (the sidecar's defaults unless
/// [`with_normalize_options`](RequireIntention::with_normalize_options) says otherwise); one
/// it refuses gets the sidecar's 400, `{"error":"bad request", "reason", …}`, and the inner
/// service receives the normalised URI.
///
/// On a pair whose intention has MCP or A2A permissions, a POST carries a JSON-RPC message,
/// which is read whole ([`mcp::read_message`](crate::mcp::read_message),
/// [`a2a::read_request`](crate::a2a::read_request), the sidecar's own reading) and decided
/// per tool, resource, prompt or A2A method: a refusal is the sidecar's JSON-RPC error (the
/// message opening with `agentmesh` instead of `agentmesh sidecar`), the inner service never
/// sees a refused or unreadable message, and `*/list` and `GetExtendedAgentCard` answers are
/// filtered to what the caller may use. Rules that need a user's claims allow only with
/// [`with_user_tokens`](RequireIntention::with_user_tokens).
///
/// # Examples
/// ```
/// use agentmesh_sdk::{PolicyWatch, RequireIntention};
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
    normalize: NormalizeOptions,
    mcp_max_body: usize,
    a2a_max_body: usize,
    /// This service's SVID and whose user tokens it verifies on MCP and A2A routes.
    user_tokens: Option<(Arc<crate::X509Source>, crate::delegation::UserTokenIssuer)>,
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
    /// let layer = agentmesh_sdk::RequireIntention::new(
    ///     agentmesh_sdk::PolicyWatch::new(),
    ///     "spiffe://example.org/writer".parse().unwrap(),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn new(policy: Arc<PolicyWatch>, me: agentmesh_spiffe::SpiffeId) -> Self {
        Self {
            policy,
            me,
            sink: None,
            normalize: NormalizeOptions::default(),
            mcp_max_body: crate::mcp::DEFAULT_MAX_BODY_BYTES,
            a2a_max_body: crate::a2a::DEFAULT_MAX_BODY_BYTES,
            user_tokens: None,
        }
    }

    /// Verifies the user token and delegation chain of MCP and A2A calls
    /// ([`delegation::call_user`](crate::delegation::call_user), as the sidecar does), with
    /// `source`'s SVID and bundle, so that rules with `user` claims can allow; without this,
    /// they refuse.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let layer = agentmesh_sdk::RequireIntention::new(
    ///     agentmesh_sdk::PolicyWatch::new(),
    ///     "spiffe://example.org/tools".parse().unwrap(),
    /// )
    /// .with_user_tokens(
    ///     ca.source("spiffe://example.org/tools"),
    ///     agentmesh_sdk::delegation::UserTokenIssuer { issuer: "frontend".into(), audience: None },
    /// );
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_user_tokens(
        mut self,
        source: Arc<crate::X509Source>,
        issuer: crate::delegation::UserTokenIssuer,
    ) -> Self {
        self.user_tokens = Some((source, issuer));
        self
    }

    /// Reads MCP messages and A2A requests up to `mcp` and `a2a` bytes (default 4 MiB each,
    /// as the sidecar's `[inbound] mcp_max_body_bytes` and `a2a_max_body_bytes`); a larger
    /// one is refused with 413 and never reaches the service.
    ///
    /// # Examples
    /// ```
    /// let layer = agentmesh_sdk::RequireIntention::new(
    ///     agentmesh_sdk::PolicyWatch::new(),
    ///     "spiffe://example.org/tools".parse().unwrap(),
    /// )
    /// .with_max_body(64 * 1024, 64 * 1024);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_max_body(mut self, mcp: usize, a2a: usize) -> Self {
        self.mcp_max_body = mcp;
        self.a2a_max_body = a2a;
        self
    }

    /// Normalises requests with `options` instead of the defaults (which are the sidecar's:
    /// `reject_request` for both escaped slashes and underscored header names).
    ///
    /// # Examples
    /// ```
    /// use agentmesh_policy::{EscapedSlashesAction, NormalizeOptions};
    /// let layer = agentmesh_sdk::RequireIntention::new(
    ///     agentmesh_sdk::PolicyWatch::new(),
    ///     "spiffe://example.org/writer".parse().unwrap(),
    /// )
    /// .with_normalize_options(NormalizeOptions {
    ///     escaped_slashes: EscapedSlashesAction::UnescapeAndForward,
    ///     ..NormalizeOptions::default()
    /// });
    /// # let _ = layer;
    /// ```
    pub fn with_normalize_options(mut self, options: NormalizeOptions) -> Self {
        self.normalize = options;
        self
    }

    /// Also reports every decision to `sink`.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// let layer = agentmesh_sdk::RequireIntention::new(
    ///     agentmesh_sdk::PolicyWatch::new(),
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

/// What one request's decision record shares, whichever way the request ends.
struct Exchange {
    started: std::time::Instant,
    layer: RequireIntention,
    peer: Option<agentmesh_spiffe::SpiffeId>,
    method: String,
    path: String,
    trace_id: String,
}

/// What an in-process refusal's message opens with (the sidecar's says `agentmesh sidecar`).
const REFUSED_BY: &str = "agentmesh";

/// The call a decision on an MCP or A2A route was about, for its record.
#[derive(Default)]
struct CallNames {
    mcp_method: Option<String>,
    mcp_tool: Option<String>,
    mcp_resource: Option<String>,
    mcp_prompt: Option<String>,
    a2a_method: Option<String>,
}

impl CallNames {
    fn mcp(msg: &crate::mcp::Message) -> Self {
        let (tool, resource, prompt) = msg.names();
        Self {
            mcp_method: Some(msg.method.as_deref().unwrap_or("(response)").to_owned()),
            mcp_tool: tool.map(str::to_owned),
            mcp_resource: resource.map(str::to_owned),
            mcp_prompt: prompt.map(str::to_owned),
            a2a_method: None,
        }
    }
}

impl Exchange {
    fn report(
        &self,
        decision: &'static str,
        intention: Option<&str>,
        reason: &str,
        status: u16,
        call: CallNames,
    ) -> DecisionRecord {
        let record = DecisionRecord {
            direction: "inbound",
            protocol: "http",
            source: self
                .peer
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            destination: self.layer.me.to_string(),
            decision,
            intention: intention.map(str::to_owned),
            reason: reason.to_owned(),
            trace_id: self.trace_id.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            status,
            duration_ms: self.started.elapsed().as_millis() as u64,
            mcp_method: call.mcp_method,
            mcp_tool: call.mcp_tool,
            mcp_resource: call.mcp_resource,
            mcp_prompt: call.mcp_prompt,
            a2a_method: call.a2a_method,
        };
        if let Some(sink) = &self.layer.sink {
            sink(&record);
        }
        record
    }

    /// The user behind a call, verified if the layer verifies user tokens.
    fn user(&self, headers: &http::HeaderMap, peer: &agentmesh_spiffe::SpiffeId) -> CallUser {
        match &self.layer.user_tokens {
            Some((source, issuer)) => {
                crate::delegation::call_user(headers, peer, Some((&source.current(), issuer)))
            }
            None => crate::delegation::call_user(headers, peer, None),
        }
    }

    fn refusal<'a>(&'a self, source: &'a str, destination: &'a str) -> Refusal<'a> {
        Refusal {
            by: REFUSED_BY,
            intention: None,
            source,
            destination,
            trace_id: &self.trace_id,
        }
    }

    /// Opens a POST on a pair with MCP or A2A permissions as the sidecar's inbound opens it
    /// ([`refuse_unread`](crate::jsonrpc::refuse_unread)): the call read, or the request
    /// refused, reported and answered here.
    async fn open<C, E: ReadError>(
        &self,
        read: impl Future<Output = Result<(C, bytes::Bytes), (E, Option<serde_json::Value>)>>,
        peer: &agentmesh_spiffe::SpiffeId,
        policy: &PolicyState,
        refusal: Refusal<'_>,
    ) -> Result<(C, bytes::Bytes), axum::response::Response> {
        let read = read.await;
        refuse_unread(read, &policy.set, peer, &self.layer.me, refusal).map_err(|unread| {
            self.report(
                "deny",
                unread.intention.as_deref(),
                &unread.reason,
                unread.status.as_u16(),
                CallNames::default(),
            );
            json_response(unread.status, &unread.body)
        })
    }

    /// A POST on a pair with MCP permissions: read, checked and decided as the sidecar's
    /// inbound does; only an allowed message reaches `inner`.
    async fn mcp<S, B>(
        self,
        mut inner: S,
        req: http::Request<B>,
        peer: agentmesh_spiffe::SpiffeId,
        policy: Arc<PolicyState>,
    ) -> Result<axum::response::Response, S::Error>
    where
        S: tower::Service<http::Request<axum::body::Body>, Response = axum::response::Response>,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        use crate::mcp::{self, Kind};
        let me = self.layer.me.clone();
        let (source, destination) = (peer.to_string(), me.to_string());
        let mut refusal = self.refusal(&source, &destination);
        let (mut parts, body) = req.into_parts();
        let read = mcp::read_message(&parts.headers, body, self.layer.mcp_max_body);
        let (msg, bytes) = match self.open(read, &peer, &policy, refusal).await {
            Ok(read) => read,
            Err(refused) => return Ok(refused),
        };
        let user = self.user(&parts.headers, &peer);
        let mut d = {
            let headers = header_pairs(&parts.headers);
            let http = HttpRequest {
                method: &self.method,
                path: &self.path,
                headers: &headers,
            };
            policy.set.check_mcp(
                &peer,
                &me,
                &http,
                &msg.call(user.claims.as_ref().map(|c| &c.raw)),
            )
        };
        user.explain(&mut d);
        refusal.intention = d.intention_id.as_deref();
        if !d.is_allowed() {
            let (status, body) = mcp::denied(msg.id.as_ref(), &d.reason, &refusal);
            self.report(
                "deny",
                refusal.intention,
                &d.reason,
                status.as_u16(),
                CallNames::mcp(&msg),
            );
            return Ok(json_response(status, &body));
        }
        let listing = match (&msg.kind, &msg.id) {
            (Kind::List(l), Some(id)) => Some((*l, id.clone())),
            _ => None,
        };
        if listing.is_some() {
            // An encoded answer could not be read to filter it.
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let head = RequestHead::new(&self.method, &self.path, &parts.headers);
        let keep = listing
            .as_ref()
            .map(|_| mcp::keep(policy.clone(), peer.clone(), me.clone(), head.clone()));
        let req = http::Request::from_parts(parts, axum::body::Body::from(bytes));
        let resp = inner.call(req).await?;
        self.report(
            "allow",
            refusal.intention,
            &d.reason,
            resp.status().as_u16(),
            CallNames::mcp(&msg),
        );
        Ok(match (listing, keep) {
            (Some((listing, id)), Some(keep)) => {
                mcp::filter_list_response(resp, listing, id, keep, REFUSED_BY)
                    .await
                    .map(axum::body::Body::new)
            }
            // A call (not housekeeping) whose answer streams is decided again on every change.
            _ if msg.item().is_some() && crate::jsonrpc::is_sse(resp.headers()) => {
                let claims = user.claims.map(|c| c.raw);
                let recheck = move |set: &PolicySet| {
                    head.decide(|http| {
                        set.check_mcp(&peer, &me, http, &msg.call(claims.as_ref()))
                            .is_allowed()
                    })
                };
                self.revocable(resp, recheck)
            }
            _ => resp,
        })
    }

    /// A streamed answer that ends as soon as a policy change makes `allowed` false for its
    /// call, as the sidecar ends its open streams; the caller's connection stays.
    fn revocable(
        &self,
        resp: axum::response::Response,
        allowed: impl Fn(&PolicySet) -> bool + Send + 'static,
    ) -> axum::response::Response {
        let mut rx = self.layer.policy.subscribe();
        let source = self
            .peer
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let denied = async move {
            loop {
                if rx.changed().await.is_err() {
                    // No more changes can come: the answer runs to its end.
                    return std::future::pending().await;
                }
                let state = rx.borrow_and_update().clone();
                if !allowed(&state.set) {
                    tracing::info!(peer = %source, revision = state.revision, "closing an answer stream: an intention change denies its call");
                    return;
                }
            }
        };
        let (parts, body) = resp.into_parts();
        let frames =
            futures::StreamExt::take_until(http_body_util::BodyStream::new(body), Box::pin(denied));
        axum::response::Response::from_parts(
            parts,
            axum::body::Body::new(http_body_util::StreamBody::new(frames)),
        )
    }

    /// A POST on a pair with A2A permissions: read and decided per method as the sidecar's
    /// inbound does; only an allowed request reaches `inner`.
    async fn a2a<S, B>(
        self,
        mut inner: S,
        req: http::Request<B>,
        peer: agentmesh_spiffe::SpiffeId,
        policy: Arc<PolicyState>,
    ) -> Result<axum::response::Response, S::Error>
    where
        S: tower::Service<http::Request<axum::body::Body>, Response = axum::response::Response>,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        use crate::a2a;
        let me = self.layer.me.clone();
        let (source, destination) = (peer.to_string(), me.to_string());
        let mut refusal = self.refusal(&source, &destination);
        let (mut parts, body) = req.into_parts();
        let read = a2a::read_request(&parts.headers, body, self.layer.a2a_max_body);
        let (call, bytes) = match self.open(read, &peer, &policy, refusal).await {
            Ok(read) => read,
            Err(refused) => return Ok(refused),
        };
        let names = || CallNames {
            a2a_method: Some(call.method.clone()),
            ..CallNames::default()
        };
        let user = self.user(&parts.headers, &peer);
        let mut d = {
            let headers = header_pairs(&parts.headers);
            let http = HttpRequest {
                method: &self.method,
                path: &self.path,
                headers: &headers,
            };
            let a2a_call = agentmesh_policy::A2aCall {
                method: &call.method,
                user: user.claims.as_ref().map(|c| &c.raw),
            };
            policy.set.check_a2a(&peer, &me, &http, &a2a_call)
        };
        user.explain(&mut d);
        refusal.intention = d.intention_id.as_deref();
        if !d.is_allowed() {
            let (status, body) = a2a::denied(&call.id, &d.reason, &refusal);
            self.report(
                "deny",
                refusal.intention,
                &d.reason,
                status.as_u16(),
                names(),
            );
            return Ok(json_response(status, &body));
        }
        let card = call.method == "GetExtendedAgentCard";
        if card {
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let head = RequestHead::new(&self.method, &self.path, &parts.headers);
        let claims = user.claims.map(|c| c.raw);
        let allowed = card.then(|| {
            a2a::allowed(
                policy.clone(),
                peer.clone(),
                me.clone(),
                head.clone(),
                claims.clone(),
            )
        });
        let req = http::Request::from_parts(parts, axum::body::Body::from(bytes));
        let resp = inner.call(req).await?;
        self.report(
            "allow",
            refusal.intention,
            &d.reason,
            resp.status().as_u16(),
            names(),
        );
        Ok(match allowed {
            Some(allowed) => a2a::filter_card_response(resp, call.id, allowed, REFUSED_BY)
                .await
                .map(axum::body::Body::new),
            // SendStreamingMessage and SubscribeToTask end when a change denies their method.
            None if a2a::is_streaming(&call.method) && crate::jsonrpc::is_sse(resp.headers()) => {
                let method = call.method;
                let recheck = move |set: &PolicySet| {
                    let call = agentmesh_policy::A2aCall {
                        method: &method,
                        user: claims.as_ref(),
                    };
                    head.decide(|http| set.check_a2a(&peer, &me, http, &call).is_allowed())
                };
                self.revocable(resp, recheck)
            }
            None => resp,
        })
    }
}

/// The layer's own JSON answer.
fn json_response(status: http::StatusCode, body: &serde_json::Value) -> axum::response::Response {
    crate::jsonrpc::json_answer(status, body).map(axum::body::Body::new)
}

/// Which protocol a POST on a pair is read as, if any.
enum Protocol {
    Mcp,
    A2a,
}

impl<S, B> tower::Service<http::Request<B>> for RequireIntentionService<S>
where
    S: tower::Service<http::Request<axum::body::Body>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = std::time::Instant::now();
        let layer = self.layer.clone();
        let peer = req
            .extensions()
            .get::<crate::PeerIdentity>()
            .map(|p| p.0.clone());
        let method = req.method().as_str().to_owned();
        let trace_id = trace_id_of(req.headers());
        let normalized = normalize_request(&mut req, &layer.normalize);
        let path = req.uri().path().to_owned();
        let policy = layer.policy.current();
        let ex = Exchange {
            started,
            layer,
            peer: peer.clone(),
            method,
            path,
            trace_id,
        };
        // The clone is the ready one's twin; take the ready one (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // On a pair whose intention has MCP (or A2A) permissions, a POST carries a message
        // that is decided per tool (or method), as the sidecar's inbound decides it.
        let protocol = match (&peer, &normalized) {
            (Some(p), Ok(())) if req.method() == http::Method::POST => {
                if policy.set.mcp_applies(p, &ex.layer.me) {
                    Some((Protocol::Mcp, p.clone()))
                } else if policy.set.a2a_applies(p, &ex.layer.me) {
                    Some((Protocol::A2a, p.clone()))
                } else {
                    None
                }
            }
            _ => None,
        };
        match protocol {
            Some((Protocol::Mcp, p)) => return Box::pin(ex.mcp(inner, req, p, policy)),
            Some((Protocol::A2a, p)) => return Box::pin(ex.a2a(inner, req, p, policy)),
            None => {}
        }
        let (allowed, intention, reason, status) = match (&peer, normalized) {
            // `serve` always attaches the verified ID; without it nothing is known: refuse.
            (None, _) => (
                false,
                None,
                "no verified caller identity on this request".to_owned(),
                403,
            ),
            (Some(_), Err(refused)) => (
                false,
                None,
                format!("the request is refused before any intention is checked: {refused}"),
                400,
            ),
            (Some(peer), Ok(())) => {
                let headers = header_pairs(req.headers());
                let d = policy.set.check_request(
                    peer,
                    &ex.layer.me,
                    &HttpRequest {
                        method: &ex.method,
                        path: &ex.path,
                        headers: &headers,
                    },
                );
                (d.is_allowed(), d.intention_id, d.reason, 403)
            }
        };
        if !allowed {
            let r = ex.report(
                "deny",
                intention.as_deref(),
                &reason,
                status,
                CallNames::default(),
            );
            let body = serde_json::json!({
                "error": if status == 400 { "bad request" } else { "denied by intentions" },
                "source": r.source,
                "destination": r.destination,
                "intention": r.intention,
                "reason": r.reason,
                "trace_id": r.trace_id,
            });
            let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
            return Box::pin(async move { Ok(json_response(status, &body)) });
        }
        let mut inner = inner;
        let req = req.map(axum::body::Body::new);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            ex.report(
                "allow",
                intention.as_deref(),
                &reason,
                resp.status().as_u16(),
                CallNames::default(),
            );
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests;
