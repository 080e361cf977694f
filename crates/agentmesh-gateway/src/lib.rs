//! The LLM gateway: the protected inference endpoint every scenario's agents call.
//!
//! It sits behind its own inbound proxy, which verifies the caller's SVID, checks intentions
//! and adds the caller's SPIFFE ID in `x-forwarded-client-cert`. The gateway then applies
//! its per-caller policy (models, token budget, request size), runs DLP over the prompt,
//! asks a provider, runs DLP over the answer, and writes one audit line per call. It speaks
//! OpenAI's and Ollama's APIs, so existing clients work unchanged through the mesh.
//!
//! Providers are `offline`, `ollama`, `openai` (any compatible server) and `gemini`, with
//! per-attempt timeouts, retries with backoff, failover along the model's provider list and a
//! circuit breaker per provider; [`ProviderConfig`] lists the keys and their defaults. A
//! caller always gets an answer in its API's own error shape: 502 `provider_failed` or 503
//! `provider_unavailable` when no provider answers.
//!
//! Not an authenticator: who the caller is comes from its sidecar's header, and intentions
//! are the proxy's to enforce. Not a model host either: it only forwards to providers.
#![forbid(unsafe_code)]

mod api;
mod config;
mod dlp;
mod policy;
mod provider;
mod secret_key;

use agentmesh_sdk::LocalListener;
use agentmesh_sdk::delegation::service as delegation;
use agentmesh_sdk::http::Serving;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use agentmesh_telemetry::clock::now_rfc3339;
use agentmesh_telemetry::{Span, attr};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Serialize;

pub use config::{
    ApiKey, CallerConfig, ConfigError, Env, GatewayConfig, ModelConfig, OpenBaoKeyConfig,
    ProcessEnv, ProviderConfig, ProviderKind,
};
pub use dlp::{Action as DlpAction, DlpConfig, normalize as dlp_normalize};
pub use policy::BudgetUsage;

use crate::api::{Answer, Api, ApiError};
use crate::dlp::Counts;
use crate::policy::{Caller, Policies, Refusal};
use crate::provider::Provider;
use crate::provider::resilience::{self, Policy, Upstream};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The listener could not be bound.
    #[error("cannot listen: {0}")]
    Listen(agentmesh_sdk::LocalError),
    /// The TLS client settings for providers could not be built (a bug in the crypto setup).
    #[error("cannot set up TLS for providers: {0}")]
    Tls(rustls::Error),
    /// `[delegation]` cannot be set up.
    #[error(transparent)]
    Delegation(#[from] delegation::DelegationError),
    /// A provider's `api_key_openbao` cannot be used (its address or CA file).
    #[error("provider {0:?}: api_key_openbao: {1}")]
    ProviderKey(String, String),
}

pub use agentmesh_sdk::xfcc::XFCC;

/// One audit line: who called, which model, how many tokens, what DLP found (counts only),
/// the decision and the trace.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC.
    pub ts: String,
    /// The caller's SPIFFE ID, or null when there was no verified identity.
    pub caller: Option<String>,
    /// `openai`, `ollama_chat` or `ollama_generate`.
    pub api: &'static str,
    /// The model asked for.
    pub model: Option<&'a str>,
    /// The provider that answered.
    pub provider: Option<&'a str>,
    /// Requests sent to providers for this call, retries and failover included.
    pub attempts: u32,
    /// Providers that were tried (or skipped by their circuit) and failed, in order.
    pub failed_providers: &'a [String],
    /// `allow`, or the refusal code (`model_not_allowed`, `budget_exhausted`,
    /// `provider_failed`, `provider_unavailable`, ...).
    pub decision: &'a str,
    /// The HTTP status returned.
    pub status: u16,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// DLP findings in the prompt, by kind.
    pub dlp_prompt: &'a Counts,
    /// DLP findings in the response, by kind.
    pub dlp_response: &'a Counts,
    /// The W3C trace id: the caller's from `traceparent`, or a new one. The call's span is
    /// in this trace.
    pub trace_id: Option<&'a str>,
    /// The user the call is made for (the user token's `sub`), when a delegation chain came
    /// with it and verified.
    pub user: Option<&'a str>,
    /// Who signed the verified chain, in order: the frontend, then each agent.
    pub chain: &'a [String],
    /// Wall time of the call.
    pub duration_ms: u64,
}

type LineWriter = dyn Fn(&[u8]) + Send + Sync;

/// Where audit lines go: one JSON object per line, to stdout unless told otherwise.
#[derive(Clone)]
pub struct AuditSink(Arc<LineWriter>);

impl AuditSink {
    /// Standard output, which `agentmesh gateway run` uses.
    pub fn stdout() -> Self {
        Self(Arc::new(|line| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line);
            let _ = out.flush();
        }))
    }

    /// Any writer of lines (a file, a channel, a test's buffer). `f` gets each line with
    /// its newline.
    pub fn new(f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn write(&self, record: &AuditRecord<'_>) {
        if let Ok(mut line) = serde_json::to_vec(record) {
            line.push(b'\n');
            (self.0)(&line);
        }
    }
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    format!(
        "chatcmpl-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// An API's audit name, its route and its GenAI operation name.
fn api_names(api: Api) -> (&'static str, &'static str, &'static str) {
    match api {
        Api::OpenAi => ("openai", "/v1/chat/completions", "chat"),
        Api::OllamaChat => ("ollama_chat", "/api/chat", "chat"),
        Api::OllamaGenerate => ("ollama_generate", "/api/generate", "text_completion"),
    }
}

/// Puts on the call's span what its audit line says (DLP as counts only, like the audit).
fn record_span(
    span: &mut Span,
    rec: &Outcome,
    api: &'static str,
    decision: &str,
    status: StatusCode,
) {
    if !span.is_recording() {
        return;
    }
    if let Some(caller) = &rec.caller {
        span.set_str(attr::SPIFFE_PEER_ID, caller);
    }
    span.set_str(attr::GATEWAY_API, api);
    span.set_str(attr::DECISION, decision);
    // Model, tokens and DLP exist once the request was parsed; before that (no identity,
    // malformed JSON) or for a listing, they would only be zeros.
    if let Some(model) = &rec.model {
        span.set_str(attr::GEN_AI_REQUEST_MODEL, model);
        if let Some(provider) = &rec.provider {
            span.set_str(attr::GATEWAY_PROVIDER, provider);
        }
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        span.set_int(attr::GEN_AI_INPUT_TOKENS, tokens(rec.prompt_tokens));
        span.set_int(attr::GEN_AI_OUTPUT_TOKENS, tokens(rec.completion_tokens));
        let total = |c: &Counts| c.values().map(|n| i64::from(*n)).sum::<i64>();
        span.set_int(attr::DLP_PROMPT_FINDINGS, total(&rec.dlp_prompt));
        span.set_int(attr::DLP_RESPONSE_FINDINGS, total(&rec.dlp_response));
    }
    span.set_http_status(status.as_u16());
}

/// A SERVER span for a call, continuing the gateway proxy's `traceparent`.
fn call_span(headers: &HeaderMap, name: &'static str, route: &'static str) -> Span {
    let mut span = Span::server(name, headers);
    span.set_str(attr::HTTP_ROUTE, route);
    span
}

/// Says where a provider's key came from (never the key), so an operator can see that a key
/// still sits in a config file or the environment.
fn log_key_source(p: &config::ProviderConfig) {
    if p.kind == config::ProviderKind::Offline {
        return;
    }
    let source = match (&p.api_key, &p.api_key_env, &p.resolved_api_key) {
        (Some(k), _, _) if k.is_empty() => "none (api_key = \"\")".to_owned(),
        (Some(_), _, _) => "the config file (api_key)".to_owned(),
        (None, Some(var), _) => format!("the environment variable {var} (api_key_env)"),
        (None, None, Some(_)) => match p.kind.default_key_env() {
            Some(var) => format!("the environment variable {var}"),
            None => "the environment".to_owned(),
        },
        (None, None, None) => "none".to_owned(),
    };
    tracing::info!(provider = %p.name, key_source = %source, "provider key comes from {source}; api_key_openbao keeps it out of files and the environment");
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    cfg: GatewayConfig,
    providers: HashMap<String, Upstream>,
    policies: Policies,
    audit: AuditSink,
    delegation: Option<delegation::Delegation>,
}

impl Gateway {
    /// A gateway for `cfg` (already validated), auditing to stdout.
    ///
    /// # Errors
    /// [`GatewayError::Tls`].
    pub fn new(cfg: GatewayConfig) -> Result<Self, GatewayError> {
        Self::with_audit(cfg, AuditSink::stdout())
    }

    /// A gateway for `cfg` writing its audit lines to `audit`.
    ///
    /// # Errors
    /// [`GatewayError::Tls`].
    pub fn with_audit(cfg: GatewayConfig, audit: AuditSink) -> Result<Self, GatewayError> {
        let tls = agentmesh_proto::https::webpki_tls().map_err(GatewayError::Tls)?;
        let providers = cfg
            .providers
            .iter()
            .map(|p| {
                let provider = match &p.api_key_openbao {
                    Some(bao) => {
                        let cell = secret_key::spawn(&p.name, bao).map_err(|e| {
                            GatewayError::ProviderKey(p.name.clone(), e.to_string())
                        })?;
                        Provider::with_openbao_key(p, &tls, cell)
                    }
                    None => {
                        log_key_source(p);
                        Provider::new(p, &tls)
                    }
                };
                let up = Upstream::new(provider, Policy::from_config(p));
                Ok((p.name.clone(), up))
            })
            .collect::<Result<_, GatewayError>>()?;
        let policies = Policies::new(cfg.callers.clone());
        Ok(Self {
            cfg,
            providers,
            policies,
            audit,
            delegation: None,
        })
    }

    /// Verifies every call's delegation chain with `d` (see [`delegation`]).
    pub(crate) fn with_delegation(mut self, d: delegation::Delegation) -> Self {
        self.delegation = Some(d);
        self
    }

    /// Where the budget of the caller whose `[[caller]]` id is `key` stands (its SPIFFE ID
    /// for callers under `*`); none before its first call or when it has no budget.
    pub fn budget_usage(&self, key: &str) -> Option<BudgetUsage> {
        self.policies.usage(key)
    }

    /// The axum router serving both APIs.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/models", get(openai_models))
            .route("/api/chat", post(ollama_chat))
            .route("/api/generate", post(ollama_generate))
            .route("/api/tags", get(ollama_tags))
            .route("/api/version", get(ollama_version))
            .route("/healthz", get(|| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::max(self.cfg.max_body()))
            .with_state(self)
    }

    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if !self.cfg.listen.is_unix() {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: "no verified caller identity: the gateway listens on TCP, where any local process could write x-forwarded-client-cert; it trusts that header only on a unix:///path listener that only its proxy's user can reach".into(),
                kind: "permission_error",
                code: "no_identity",
            });
        }
        headers
            .get(XFCC)
            .and_then(|v| v.to_str().ok())
            .and_then(policy::parse_xfcc)
            .ok_or_else(|| ApiError {
                status: StatusCode::FORBIDDEN,
                message: "no verified caller identity: the gateway serves only calls that come through its proxy (x-forwarded-client-cert)".into(),
                kind: "permission_error",
                code: "no_identity",
            })
    }

    /// Models `caller` may use, in config order.
    fn visible_models(&self, headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
        let caller = self.caller(headers)?;
        let p = self.policies.resolve(&caller).map_err(refusal)?;
        Ok(self
            .cfg
            .models
            .iter()
            .filter(|m| p.allows_model(&m.name))
            .map(|m| m.name.clone())
            .collect())
    }

    async fn complete(&self, api: Api, headers: &HeaderMap, body: &Bytes) -> Response {
        let started = Instant::now();
        let (api_name, route, operation) = api_names(api);
        // Its trace id is the audit line's, so a trace and an audit line join up.
        let mut span = call_span(headers, "gateway chat", route);
        span.set_str(attr::HTTP_METHOD, "POST");
        span.set_str(attr::GEN_AI_OPERATION, operation);
        let trace = span.context().trace_id_hex();
        let mut rec = Outcome::default();
        let result = self.complete_inner(api, headers, body, &mut rec).await;
        let (status, decision, resp) = match result {
            Ok((stream, answer)) => {
                let (ct, chunks) = api::render(api, stream, &answer);
                let resp = if stream {
                    let s = futures::stream::iter(
                        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
                    );
                    Response::builder()
                        .header(http::header::CONTENT_TYPE, ct)
                        .body(Body::from_stream(s))
                } else {
                    Response::builder()
                        .header(http::header::CONTENT_TYPE, ct)
                        .body(Body::from(chunks.concat()))
                };
                (
                    StatusCode::OK,
                    "allow",
                    resp.unwrap_or_else(|_| Response::new(Body::empty())),
                )
            }
            Err(e) => (e.status, e.code, error_response(api, &e)),
        };
        record_span(&mut span, &rec, api_name, decision, status);
        self.audit.write(&AuditRecord {
            ts: now_rfc3339(),
            caller: rec.caller,
            api: api_name,
            model: rec.model.as_deref(),
            provider: rec.provider.as_deref(),
            attempts: rec.attempts,
            failed_providers: &rec.failed_providers,
            decision,
            status: status.as_u16(),
            prompt_tokens: rec.prompt_tokens,
            completion_tokens: rec.completion_tokens,
            dlp_prompt: &rec.dlp_prompt,
            dlp_response: &rec.dlp_response,
            trace_id: Some(&trace),
            user: rec.user.as_deref(),
            chain: &rec.chain,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        resp
    }

    async fn complete_inner(
        &self,
        api: Api,
        headers: &HeaderMap,
        body: &Bytes,
        rec: &mut Outcome,
    ) -> Result<(bool, Answer), ApiError> {
        let caller = self.caller(headers)?;
        rec.caller = Some(caller.id.to_string());
        self.verify_delegation(headers, &caller, rec)?;
        let policy = self.policies.resolve(&caller).map_err(refusal)?;
        if body.len() > policy.max_request_bytes {
            return Err(refusal(Refusal::TooLarge {
                caller: policy.key.clone(),
                size: body.len(),
                limit: policy.max_request_bytes,
            }));
        }
        let mut chat = api::parse(api, body)?;
        rec.model = Some(chat.model.clone());
        let Some(model) = self.cfg.models.iter().find(|m| m.name == chat.model) else {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("model {:?} not found", chat.model),
                kind: "invalid_request_error",
                code: "model_not_found",
            });
        };
        if !policy.allows_model(&chat.model) {
            return Err(refusal(Refusal::Model {
                caller: policy.key.clone(),
                model: chat.model.clone(),
                allowed: policy_models(&self.cfg, &policy),
            }));
        }
        self.policies.check_budget(&policy).map_err(refusal)?;

        // Every string a provider receives is scanned: a message is its role and its text
        // (content strings and text parts joined, tool results, Ollama's prompt and system,
        // all already in `content` here). Fields the gateway does not forward (`name`,
        // `tool_calls`, `images`, ...) were dropped by the parser and never leave.
        self.scan_prompt(&mut chat, rec)?;

        // Hold the call's worst case before any provider is asked, so concurrent calls
        // cannot all pass a check that none of them has paid for yet.
        let cap = chat
            .max_tokens
            .or(model.max_tokens)
            .unwrap_or(config::DEFAULT_MAX_TOKENS);
        let reservation = self
            .policies
            .reserve(&policy, policy::worst_case_tokens(&chat.messages, cap))
            .map_err(refusal)?;

        let answer = self.ask_providers(model, &chat, rec).await?;
        rec.prompt_tokens = answer.prompt_tokens;
        rec.completion_tokens = answer.completion_tokens;
        // The answer is whole before the first byte goes out (streamed or not), so its real
        // usage is known here; a DLP block below does not undo what the provider spent.
        reservation.settle(
            answer
                .prompt_tokens
                .saturating_add(answer.completion_tokens),
        );

        let s = dlp::scan(&answer.content, &self.cfg.dlp);
        rec.dlp_response = s.counts;
        if let Some(kind) = s.blocked {
            return Err(dlp_blocked("response", kind));
        }
        Ok((
            chat.stream,
            Answer {
                id: request_id(),
                model: chat.model,
                content: s.text,
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                created: unix_now(),
                created_at: now_rfc3339(),
            },
        ))
    }

    /// Records the user and the hops of a delegation chain, if the caller sent one.
    fn verify_delegation(
        &self,
        headers: &HeaderMap,
        caller: &Caller,
        rec: &mut Outcome,
    ) -> Result<(), ApiError> {
        let Some(d) = &self.delegation else {
            return Ok(());
        };
        // The chain must end at the caller the proxy verified: nobody can present a chain
        // that some other service was given.
        match d.verify(headers, Some(&caller.id)) {
            Ok(Some(chain)) => {
                rec.user = Some(chain.user.sub.clone());
                rec.chain = std::iter::once(chain.issuer.to_string())
                    .chain(chain.hops.iter().map(ToString::to_string))
                    .collect();
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                // A full replay cache refuses a good chain only for now.
                let full = matches!(e, agentmesh_sdk::ChainError::ReplayCacheFull { .. });
                Err(ApiError {
                    status: if full {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::UNAUTHORIZED
                    },
                    message: format!("delegation chain refused: {e}"),
                    kind: "authentication_error",
                    code: "invalid_delegation",
                })
            }
        }
    }

    /// Redacts the prompt in place, counting what was found; a blocking finding refuses
    /// the call before any provider sees it.
    fn scan_prompt(&self, chat: &mut api::Chat, rec: &mut Outcome) -> Result<(), ApiError> {
        for m in &mut chat.messages {
            for field in [&mut m.role, &mut m.content] {
                let s = dlp::scan(field, &self.cfg.dlp);
                dlp::add_counts(&mut rec.dlp_prompt, &s.counts);
                if let Some(kind) = s.blocked {
                    return Err(dlp_blocked("request", kind));
                }
                *field = s.text;
            }
        }
        Ok(())
    }

    /// The first answer from the model's providers, in their configured order, recording
    /// which answered and which failed.
    async fn ask_providers(
        &self,
        model: &config::ModelConfig,
        chat: &api::Chat,
        rec: &mut Outcome,
    ) -> Result<provider::ChatResponse, ApiError> {
        let upstreams: Vec<&Upstream> = model
            .providers
            .iter()
            .filter_map(|name| self.providers.get(name))
            .collect();
        match resilience::failover(&upstreams, &chat.model, &chat.messages).await {
            Ok(served) => {
                rec.provider = Some(served.provider);
                rec.attempts = served.attempts;
                rec.failed_providers = served.failed;
                Ok(served.response)
            }
            Err(e) => {
                rec.attempts = e.attempts();
                rec.failed_providers = e.providers();
                let (status, code) = if e.unavailable() {
                    (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable")
                } else {
                    (StatusCode::BAD_GATEWAY, "provider_failed")
                };
                Err(ApiError {
                    status,
                    message: e.to_string(),
                    kind: "api_error",
                    code,
                })
            }
        }
    }
}

/// What the audit line needs, filled in as the call proceeds.
#[derive(Default)]
struct Outcome {
    caller: Option<String>,
    user: Option<String>,
    chain: Vec<String>,
    model: Option<String>,
    provider: Option<String>,
    attempts: u32,
    failed_providers: Vec<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    dlp_prompt: Counts,
    dlp_response: Counts,
}

fn policy_models(cfg: &GatewayConfig, p: &policy::CallerPolicy) -> String {
    let names: Vec<&str> = cfg
        .models
        .iter()
        .filter(|m| p.allows_model(&m.name))
        .map(|m| m.name.as_str())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn dlp_blocked(what: &str, kind: dlp::Kind) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "{what} blocked by the gateway's DLP policy: it contains a {} value",
            kind.as_str()
        ),
        kind: "permission_error",
        code: "dlp_blocked",
    }
}

fn refusal(r: Refusal) -> ApiError {
    let (status, kind, code) = match &r {
        Refusal::UnknownCaller(_) => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "caller_not_allowed",
        ),
        Refusal::Model { .. } => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
        ),
        Refusal::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
        ),
        Refusal::Budget { .. } | Refusal::BudgetReserved { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "budget_exhausted",
        ),
    };
    ApiError {
        status,
        message: r.to_string(),
        kind,
        code,
    }
}

fn error_response(api: Api, e: &ApiError) -> Response {
    let mut resp = Response::new(Body::from(e.body(api).to_string()));
    *resp.status_mut() = e.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_ok(v: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn openai_chat(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    g.complete(Api::OpenAi, &headers, &body).await
}

async fn ollama_chat(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    g.complete(Api::OllamaChat, &headers, &body).await
}

async fn ollama_generate(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    g.complete(Api::OllamaGenerate, &headers, &body).await
}

/// A model listing, with its span: who asked and what was decided.
fn listing(
    g: &Gateway,
    headers: &HeaderMap,
    route: &'static str,
    render: impl FnOnce(&[String]) -> Response,
    api: Api,
) -> Response {
    let mut span = call_span(headers, "gateway models", route);
    let rec = Outcome {
        caller: g.caller(headers).ok().map(|c| c.id.to_string()),
        ..Outcome::default()
    };
    let (decision, status, resp) = match g.visible_models(headers) {
        Ok(names) => ("allow", StatusCode::OK, render(&names)),
        Err(e) => (e.code, e.status, error_response(api, &e)),
    };
    span.set_str(attr::HTTP_METHOD, "GET");
    record_span(&mut span, &rec, "models", decision, status);
    resp
}

async fn openai_models(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    listing(
        &g,
        &headers,
        "/v1/models",
        |names| json_ok(&api::openai_models(names, unix_now())),
        Api::OpenAi,
    )
}

async fn ollama_tags(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    listing(
        &g,
        &headers,
        "/api/tags",
        |names| json_ok(&api::ollama_tags(names, &now_rfc3339())),
        Api::OllamaChat,
    )
}

async fn ollama_version() -> Response {
    json_ok(&serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// A running gateway.
pub type RunningGateway = Serving;

/// Binds `cfg.listen` and serves until shut down.
///
/// # Errors
/// The listener cannot be bound.
pub async fn start(cfg: GatewayConfig) -> Result<RunningGateway, GatewayError> {
    let listener = LocalListener::bind(&cfg.listen)
        .await
        .map_err(GatewayError::Listen)?;
    let addr = listener.local_addr();
    if !addr.is_unix() {
        tracing::warn!(listen = %addr, "the gateway listens on TCP: any local process can reach it, so x-forwarded-client-cert is not trusted and every call is refused with no_identity; listen on unix:///path behind the proxy");
    }
    let delegation = match &cfg.delegation {
        Some(d) => Some(delegation::Delegation::connect(d).await?),
        None => None,
    };
    let mut gateway = Gateway::new(cfg)?;
    if let Some(d) = delegation {
        gateway = gateway.with_delegation(d);
    }
    let limits = gateway.cfg.limits.clone();
    let router = Arc::new(gateway).router();
    tracing::info!(listen = %addr, "gateway ready");
    let serving = Serving::spawn(listener, addr, router, "gateway", limits);
    Ok(serving)
}
