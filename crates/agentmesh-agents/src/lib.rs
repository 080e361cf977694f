//! The AI agents of the three scenarios (planner-executor, research-team, threat-pipeline), as
//! small HTTP services.
//!
//! Every agent serves `POST /ask {"question": "...", "context": "..."}` and answers
//! `{"answer": "...", "agents": [...], "trace_id": "..."}`, where `agents` lists who handled
//! the question, in order. By default they speak plain HTTP to their local proxy's outbound
//! ports and never touch a certificate (as in planner-executor): the proxies do mTLS and enforce
//! intentions. With `[mtls]` an agent has no sidecar and does both in-process with the SDK
//! (as in research-team; see [`MtlsConfig`]).
//!
//! - planner-executor: planner → executor → gateway.
//! - research-team: researcher (search) → writer → gateway.
//! - threat-pipeline: orchestrator → classifier, validator, scorer → gateway.
//!
//! Not a framework for writing agents: the roles are fixed ([`Role`]) and their models are
//! the gateway's. Identity and intentions stay with the proxies, or with agentmesh-sdk under
//! `[mtls]`; the agents only ask and answer.
#![forbid(unsafe_code)]

mod a2a;
mod client;
mod config;
mod handle;
mod mtls;
mod role;
mod search;
mod tools;

use agentmesh_sdk::{LocalAddr, LocalListener};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use config::{
    A2aConfig, AgentConfig, ConfigError, DEFAULT_MODEL, MtlsConfig, SearchConfig, SearchKind,
    UpstreamConfig,
};
pub use mtls::MtlsError;
pub use role::{Role, UnknownRole};
pub use search::{Hit, SearchError, TavilySearch};
pub use tools::{MCP_ROLE, ToolUse};

use crate::client::{CallError, Upstreams};
use crate::search::OfflineSearch;
use agentmesh_telemetry::{Span, SpanKind, attr};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The listener could not be bound.
    #[error("cannot listen: {0}")]
    Listen(agentmesh_sdk::LocalError),
    /// The configured search tool cannot run.
    #[error("search: {0}")]
    Search(String),
    /// `[delegation]` cannot be set up (no SVID, a bad issuer).
    #[error("{0}")]
    Delegation(String),
    /// `[mtls]` cannot be set up (no SVID from the node).
    #[error("mtls: {0}")]
    Mtls(#[from] MtlsError),
    /// `[a2a] workload_api` gave no SVID to sign the agent card with.
    #[error("[a2a]: no SVID to sign the agent card with: {0}")]
    A2a(String),
}

/// The largest question (with context) an agent accepts, in bytes.
pub const MAX_ASK_BYTES: usize = 256 * 1024;

/// How many notes the researcher passes on.
const NOTES: usize = 3;

/// `POST /ask` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AskRequest {
    /// The question (for the threat pipeline: the security event).
    pub question: String,
    /// What the caller adds: a task, research notes, earlier findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// `POST /ask` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AskResponse {
    /// The answer.
    pub answer: String,
    /// Who handled it, in order (this agent first).
    pub agents: Vec<String>,
    /// The W3C trace id the question travelled under.
    pub trace_id: String,
    /// The model the gateway was asked for, when this agent or one after it inferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The researcher's sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<search::Hit>,
    /// One compact JWS per agent that handled the question, this agent's first: each signed
    /// with that agent's SVID key (`x5c` = its chain) over `{"agent", "answer_sha256",
    /// "trace_id"}`, so whoever receives the answer can check who produced it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
    /// Where this agent combined the answers of others (the orchestrator's report), their
    /// answers as they signed them; each appears verbatim in `answer`, so a signature over a
    /// part can be checked against the answer it became part of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// The delegation links the request reached its last agent with (the
    /// `x-agentmesh-delegation` value, split at `~`): the frontend verifies and shows the
    /// chain without seeing the calls between agents. Where the request fanned out, the
    /// last branch's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation: Vec<String>,
    /// The MCP tools the executor called on the way, allowed or refused, in order (see
    /// [`ToolUse`]); also listed at the end of `answer`, so the signatures cover them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolUse>,
}

/// An error answer: 400 for a bad request, 502 when something downstream failed.
struct AgentFailure {
    status: StatusCode,
    message: String,
    refusal: Option<Value>,
}

impl AgentFailure {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            refusal: None,
        }
    }
}

impl From<CallError> for AgentFailure {
    fn from(e: CallError) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            refusal: e.refusal(),
            message: e.to_string(),
        }
    }
}

/// One running agent's state.
pub struct Agent {
    cfg: AgentConfig,
    upstreams: Upstreams,
    search: Option<Search>,
    delegation: Option<agentmesh_sdk::delegation::service::Delegation>,
    /// The SVID the agent card is signed with: `[mtls]`'s, `[delegation]`'s or `[a2a]`'s.
    identity: Option<Arc<agentmesh_sdk::X509Source>>,
}

/// What the calls made for one request need to carry the delegation chain on: every call
/// gets the user token and the incoming links plus this agent's link addressed to that
/// call's callee (a fan-out signs one link per callee).
#[derive(Debug, Default)]
struct Onward {
    forward: Option<agentmesh_sdk::delegation::service::Forward>,
    /// The links sent with the latest call: the last agent answers with them.
    last_links: std::sync::Mutex<Option<String>>,
}

impl Onward {
    /// The headers for one call to `next_hop` (none without a verified chain).
    fn headers_for(
        &self,
        next_hop: &agentmesh_sdk::SpiffeId,
    ) -> Result<Vec<(&'static str, String)>, agentmesh_sdk::ChainError> {
        let Some(forward) = &self.forward else {
            return Ok(Vec::new());
        };
        let headers = forward.headers_for(next_hop)?;
        if let Some((_, links)) = headers
            .iter()
            .find(|(h, _)| *h == agentmesh_sdk::DELEGATION_HEADER)
        {
            *self.last_links.lock().unwrap_or_else(|p| p.into_inner()) = Some(links.clone());
        }
        Ok(headers)
    }
}

/// The researcher's search tool.
enum Search {
    Offline(OfflineSearch),
    Tavily(Box<search::TavilySearch>),
}

impl Agent {
    /// Builds the agent described by `cfg`.
    ///
    /// # Errors
    /// The search tool cannot run (tavily without its key).
    pub fn new(cfg: AgentConfig) -> Result<Self, AgentError> {
        let search = match (cfg.role, cfg.search.kind) {
            (Role::Researcher, SearchKind::Offline) => {
                Some(Search::Offline(OfflineSearch::default()))
            }
            (Role::Researcher, SearchKind::Tavily) => {
                let var = cfg
                    .search
                    .api_key_env
                    .as_deref()
                    .unwrap_or("TAVILY_API_KEY");
                let key = std::env::var(var).map_err(|_| {
                    AgentError::Search(format!(
                        "tavily needs its API key in ${var}, which is not set"
                    ))
                })?;
                let t = search::TavilySearch::new(cfg.search.url.as_deref(), key)
                    .map_err(|e| AgentError::Search(e.to_string()))?;
                Some(Search::Tavily(Box::new(t)))
            }
            _ => None,
        };
        let upstreams = Upstreams::for_upstreams(&cfg.upstreams);
        Ok(Self {
            cfg,
            upstreams,
            search,
            delegation: None,
            identity: None,
        })
    }

    /// The HTTP service: `POST /ask`, `GET /healthz`, and A2A: the signed agent card
    /// (`GET /.well-known/agent-card.json`) and JSON-RPC (`POST /a2a`).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/ask", post(ask))
            .route("/healthz", get(healthz))
            .route(a2a::CARD_PATH, get(a2a::card))
            .route(a2a::RPC_PATH, post(a2a::rpc))
            .with_state(self)
    }

    fn name(&self) -> String {
        self.cfg.name().to_owned()
    }

    /// Calls the upstream playing `role` with `/ask`.
    async fn delegate(
        &self,
        role: &str,
        req: &AskRequest,
        parent: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        // Config validation guarantees every role in `needs()` has an upstream.
        let Some(up) = self.cfg.upstream(role) else {
            return Err(AgentFailure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("bug: no upstream for {role}"),
                refusal: None,
            });
        };
        let body = serde_json::to_value(req).unwrap_or(Value::Null);
        let v = self.call(parent, up, "/ask", &body, onward).await?;
        serde_json::from_value(v)
            .map_err(|e| CallError::BadAnswer(up.name.clone(), e.to_string()).into())
    }

    /// The SPIFFE ID an upstream answers as, which this agent's delegation link names: its
    /// `spiffe_id` if configured, else the service-name convention `up` and the intentions
    /// use, `spiffe://<this agent's trust domain>/ns/default/sa/<name>`. A wrong guess fails
    /// closed: the callee refuses a link addressed to someone else.
    fn next_hop(&self, up: &config::UpstreamConfig) -> Result<agentmesh_sdk::SpiffeId, String> {
        let me = self
            .delegation
            .as_ref()
            .map(agentmesh_sdk::delegation::service::Delegation::me)
            .ok_or_else(|| "bug: a delegation chain without [delegation]".to_owned())?;
        next_hop_of(up, &me)
    }

    /// The user token and this agent's delegation link for a call to `up` (none without a
    /// verified chain).
    fn onward_headers(
        &self,
        up: &config::UpstreamConfig,
        onward: &Onward,
    ) -> Result<Vec<(&'static str, String)>, AgentFailure> {
        if onward.forward.is_none() {
            return Ok(Vec::new());
        }
        self.next_hop(up)
            .and_then(|next| onward.headers_for(&next).map_err(|e| e.to_string()))
            .map_err(|e| AgentFailure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("cannot add this agent's delegation link: {e}"),
                refusal: None,
            })
    }

    /// Asks the gateway (OpenAI chat completions) with this agent's role prompt.
    /// One call through the sidecar, as a CLIENT span whose id the next hop sees as its
    /// parent in `traceparent`.
    async fn call(
        &self,
        parent: &Span,
        up: &config::UpstreamConfig,
        path: &'static str,
        body: &Value,
        onward: &Onward,
    ) -> Result<Value, AgentFailure> {
        let extra = self.onward_headers(up, onward)?;
        let mut span = parent.child(format!("call {} {path}", up.name), SpanKind::Client);
        span.set_str(attr::DESTINATION, &up.name);
        span.set_str(attr::HTTP_METHOD, "POST");
        span.set_str(attr::URL_PATH, path);
        let result = self
            .upstreams
            .post_json(up, path, body, &span.context().header(), &extra)
            .await;
        match &result {
            Ok(_) => span.set_http_status(200),
            Err(e) => {
                if let CallError::Refused { intention, .. } = e {
                    span.set_str(attr::DECISION, "denied_by_destination");
                    if let Some(i) = intention {
                        span.set_str(attr::INTENTION_ID, i);
                    }
                }
                span.set_error(&e.to_string());
            }
        }
        result.map_err(Into::into)
    }

    async fn infer(
        &self,
        user: String,
        parent: &Span,
        onward: &Onward,
    ) -> Result<String, AgentFailure> {
        let Some(up) = self.cfg.upstream("gateway") else {
            return Err(AgentFailure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "bug: no gateway upstream".into(),
                refusal: None,
            });
        };
        let body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": self.cfg.role.prompt()},
                {"role": "user", "content": user},
            ],
        });
        let v = self
            .call(parent, up, "/v1/chat/completions", &body, onward)
            .await?;
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                CallError::BadAnswer(up.name.clone(), "no choices[0].message.content".into()).into()
            })
    }
}

async fn healthz(State(agent): State<Arc<Agent>>) -> Response {
    (StatusCode::OK, format!("ok {}\n", agent.cfg.role)).into_response()
}

async fn ask(
    State(agent): State<Arc<Agent>>,
    extensions: http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut trace = Span::server(format!("{} ask", agent.name()), &headers);
    trace.set_str(attr::HTTP_METHOD, "POST");
    trace.set_str(attr::HTTP_ROUTE, "/ask");
    trace.set_str("agentmesh.agent.role", agent.cfg.role.as_str());
    let trace_id = trace.context().trace_id_hex();
    let result = async {
        if body.len() > MAX_ASK_BYTES {
            return Err(AgentFailure::bad_request(format!(
                "the request is {} bytes; the most an agent accepts is {MAX_ASK_BYTES}",
                body.len()
            )));
        }
        let req: AskRequest = serde_json::from_slice(&body).map_err(|e| {
            AgentFailure::bad_request(format!(
                "the body is not {{\"question\": \"...\"}} JSON: {e}"
            ))
        })?;
        agent.answer(req, &extensions, &headers, &mut trace).await
    }
    .await;
    match result {
        Ok(a) => {
            trace.set_http_status(200);
            json_response(StatusCode::OK, &a)
        }
        Err(f) => {
            tracing::warn!(%trace_id, status = f.status.as_u16(), error = %f.message, "could not answer");
            trace.set_http_status(f.status.as_u16());
            trace.set_error(&f.message);
            let mut body = json!({
                "error": f.message,
                "agent": agent.name(),
                "trace_id": trace_id,
            });
            if let Some(r) = f.refusal {
                body["refused"] = r;
            }
            json_response(f.status, &body)
        }
    }
}

impl Agent {
    /// Answers one question as `/ask` does, whichever protocol carried it (`/ask`, or an A2A
    /// `SendMessage`): verifies the delegation chain, hands the question on, and signs the
    /// answer.
    async fn answer(
        &self,
        req: AskRequest,
        extensions: &http::Extensions,
        headers: &HeaderMap,
        trace: &mut Span,
    ) -> Result<AskResponse, AgentFailure> {
        if req.question.trim().is_empty() {
            return Err(AgentFailure::bad_request("the question is empty"));
        }
        let forward = match &self.delegation {
            Some(d) => {
                // In-process mTLS: the caller is who its certificate says, and an XFCC
                // header is just something the caller wrote. Behind a sidecar: the sidecar's.
                // On a TCP listener anyone local could have written the header: no caller.
                let peer = if self.cfg.mtls.is_some() {
                    extensions
                        .get::<agentmesh_sdk::PeerIdentity>()
                        .map(|p| p.0.clone())
                } else if self.cfg.trusts_forwarded_identity() {
                    agentmesh_sdk::xfcc::peer(headers)
                } else {
                    None
                };
                match d.forward(headers, peer.as_ref()) {
                    Ok(Some(f)) => {
                        trace.set_str("enduser.id", &f.chain.user.sub);
                        Some(f)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        return Err(AgentFailure {
                            status: chain_refusal_status(&e),
                            message: format!("delegation chain refused: {e}"),
                            refusal: None,
                        });
                    }
                }
            }
            None => None,
        };
        let onward = Onward {
            forward,
            last_links: std::sync::Mutex::new(None),
        };
        let mut a = self.handle(req, trace, &onward).await?;
        if a.delegation.is_empty() {
            // The last agent: the chain is the one it sent on.
            let sent = onward
                .last_links
                .into_inner()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(links) = sent {
                a.delegation = links
                    .split('~')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        if let Some(d) = &self.delegation {
            let digest = ring::digest::digest(&ring::digest::SHA256, a.answer.as_bytes());
            let payload = json!({
                "agent": d.me().to_string(),
                "answer_sha256": digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "trace_id": a.trace_id,
            });
            match d.sign(payload.to_string().as_bytes()) {
                Ok(jws) => a.signatures.insert(0, jws),
                Err(e) => tracing::warn!(error = %e, "could not sign the answer"),
            }
        }
        tracing::info!(trace_id = %a.trace_id, agents = ?a.agents, "answered");
        Ok(a)
    }
}

/// [`Agent::next_hop`] for an agent whose own ID is `me`.
fn next_hop_of(
    up: &config::UpstreamConfig,
    me: &agentmesh_sdk::SpiffeId,
) -> Result<agentmesh_sdk::SpiffeId, String> {
    if let Some(id) = &up.spiffe_id {
        return id
            .parse()
            .map_err(|e| format!("upstream {:?}: spiffe_id {id:?}: {e}", up.name));
    }
    agentmesh_sdk::SpiffeId::from_service_name(me.trust_domain(), &up.name)
        .map_err(|e| format!("upstream {:?}: no SPIFFE ID for the name: {e}", up.name))
}

/// 401 for a chain that is not good; 503 when this agent cannot remember another token
/// (a good chain, refused only for now).
fn chain_refusal_status(e: &agentmesh_sdk::ChainError) -> StatusCode {
    if matches!(e, agentmesh_sdk::ChainError::ReplayCacheFull { .. }) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNAUTHORIZED
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

/// A started agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The bound address of `listen` (plain, or mTLS with `[mtls]`).
    pub addr: LocalAddr,
    /// The bound admin address (`[mtls] admin`).
    pub admin: Option<LocalAddr>,
    plain: Option<agentmesh_sdk::http::Serving>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    mtls: Option<mtls::MtlsSide>,
}

impl RunningAgent {
    /// Stops serving.
    pub async fn shutdown(self) {
        if let Some(p) = self.plain {
            p.shutdown().await;
        }
        for t in self.tasks {
            t.abort();
        }
        if let Some(m) = &self.mtls {
            m.stop();
        }
    }
}

async fn bind(addr: &LocalAddr) -> Result<(LocalListener, LocalAddr), AgentError> {
    let listener = LocalListener::bind(addr)
        .await
        .map_err(AgentError::Listen)?;
    let bound = listener.local_addr();
    Ok((listener, bound))
}

/// The SVID a sidecar-backed agent signs its card with: `[delegation]`'s, else one from
/// `[a2a] workload_api`, else none (the card is then refused with the reason).
async fn card_identity(
    cfg: &AgentConfig,
    delegation: Option<&agentmesh_sdk::delegation::service::Delegation>,
) -> Result<Option<Arc<agentmesh_sdk::X509Source>>, AgentError> {
    if let Some(d) = delegation {
        return Ok(Some(d.source().clone()));
    }
    let Some(socket) = cfg
        .a2a
        .as_ref()
        .and_then(|a| a.workload_api.as_deref())
        .and_then(|w| w.strip_prefix("unix://"))
    else {
        return Ok(None);
    };
    agentmesh_sdk::X509Source::connect(
        std::path::Path::new(socket),
        std::time::Duration::from_secs(60),
    )
    .await
    .map(Some)
    .map_err(|e| AgentError::A2a(e.to_string()))
}

/// Binds `cfg.listen` and serves until shut down.
///
/// # Errors
/// The listener cannot be bound, the search tool cannot run, or (with `[mtls]`) no SVID
/// came from the node.
pub async fn start(cfg: AgentConfig) -> Result<RunningAgent, AgentError> {
    let listen = cfg.listen.clone();
    let role = cfg.role;
    let delegation = match &cfg.delegation {
        Some(d) => Some(
            agentmesh_sdk::delegation::service::Delegation::connect(d)
                .await
                .map_err(|e| AgentError::Delegation(e.to_string()))?,
        ),
        None => None,
    };
    let (listener, addr) = bind(&listen).await?;
    let limits = cfg.limits.clone();
    let Some(mtls_cfg) = cfg.mtls.clone() else {
        if !addr.is_unix() && delegation.is_some() {
            tracing::warn!(listen = %addr, "the agent listens on TCP: any local process can reach it, so x-forwarded-client-cert is not trusted and a delegation chain has no verified caller; listen on unix:///path behind the sidecar");
        }
        let identity = card_identity(&cfg, delegation.as_ref()).await?;
        let mut agent = Agent::new(cfg)?;
        agent.delegation = delegation;
        agent.identity = identity;
        let agent = Arc::new(agent);
        let serving = agentmesh_sdk::http::Serving::spawn(
            listener,
            addr.clone(),
            agent.router(),
            "agent",
            limits,
        );
        tracing::info!(%role, listen = %addr, "agent ready");
        return Ok(RunningAgent {
            addr,
            admin: None,
            plain: Some(serving),
            tasks: Vec::new(),
            mtls: None,
        });
    };
    let advertise = mtls_cfg
        .advertise
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let side = mtls::MtlsSide::connect(&mtls_cfg, advertise).await?;
    let mut agent = Agent::new(cfg)?;
    agent.delegation = delegation;
    agent.identity = Some(side.source.clone());
    side.pin_upstreams(&agent.cfg, &mut agent.upstreams)?;
    let agent = Arc::new(agent);
    let router = side.guard(agent.clone().router());
    let source = side.source.clone();
    let LocalListener::Tcp(listener) = listener else {
        return Err(AgentError::Listen(agentmesh_sdk::LocalError::Malformed(
            format!("{addr}: with [mtls] listen must be ip:port"),
        )));
    };
    let mtls_limits = limits.clone();
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(e) =
            agentmesh_sdk::http::serve_limited(listener, source, router, mtls_limits).await
        {
            tracing::error!(error = %e, "the agent's mTLS listener stopped");
        }
    })];
    let mut admin = None;
    if let Some(a) = &mtls_cfg.admin {
        let (l, bound) = bind(a).await?;
        // /probe calls upstreams with this agent's identity: only on a socket whose peers
        // the kernel vouches for.
        let app = mtls::admin_router(
            mtls::AdminState {
                agent: agent.clone(),
                source: side.source.clone(),
                policy: side.policy.clone(),
            },
            bound.is_unix(),
        );
        let limits = limits.clone();
        tasks.push(tokio::spawn(agentmesh_proto::limits::serve_listener(
            l,
            agentmesh_proto::limits::TowerService(app),
            limits,
            "agent admin",
            std::future::pending(),
        )));
        admin = Some(bound);
    }
    tracing::info!(%role, listen = %addr, admin = ?admin, spiffe_id = %side.me, "agent ready (in-process mTLS)");
    Ok(RunningAgent {
        addr,
        admin,
        plain: None,
        tasks,
        mtls: Some(side),
    })
}

#[cfg(test)]
mod tests;
