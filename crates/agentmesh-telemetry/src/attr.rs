//! The span attribute names agentmesh uses. OpenTelemetry's semantic conventions where one
//! exists (HTTP, network, GenAI), `spiffe.*` for identities and `agentmesh.*` for the mesh's
//! own decisions. ARCHITECTURE.md lists which component sets which.

/// The other end's SPIFFE ID: the verified caller on a SERVER span (from its certificate, or
/// at the gateway from the proxy's `x-forwarded-client-cert`), the pinned destination on a
/// proxy's CLIENT span.
pub const SPIFFE_PEER_ID: &str = "spiffe.peer_id";
/// The SPIFFE ID of the workload that recorded the span.
pub const SPIFFE_ID: &str = "spiffe.id";
/// The calling service's SPIFFE ID.
pub const SOURCE: &str = "agentmesh.source";
/// The called service's SPIFFE ID.
pub const DESTINATION: &str = "agentmesh.destination";
/// What was decided: `allow`/`deny` at an inbound proxy; `forwarded`,
/// `denied_by_destination` or `error` at an outbound proxy; `allow` or the refusal code at
/// the gateway.
pub const DECISION: &str = "agentmesh.decision";
/// The id of the intention that decided (absent for the default deny).
pub const INTENTION_ID: &str = "agentmesh.intention_id";
/// Why, in words: the intention evaluator's reason, or the error.
pub const REASON: &str = "agentmesh.reason";
/// `http` or `tcp`: what the proxy carried.
pub const PROTOCOL: &str = "agentmesh.protocol";
/// The gateway API called: `openai`, `ollama_chat`, `ollama_generate`, `models`.
pub const GATEWAY_API: &str = "agentmesh.gateway.api";
/// The gateway provider (its configured name) that answered.
pub const GATEWAY_PROVIDER: &str = "agentmesh.gateway.provider";
/// How many values DLP found in the prompt (counts only, never the values).
pub const DLP_PROMPT_FINDINGS: &str = "agentmesh.dlp.prompt_findings";
/// How many values DLP found in the answer.
pub const DLP_RESPONSE_FINDINGS: &str = "agentmesh.dlp.response_findings";

/// HTTP request method (semconv).
pub const HTTP_METHOD: &str = "http.request.method";
/// The route template the server matched (semconv); the gateway sets it, a proxy does not
/// know routes and sets [`URL_PATH`] instead.
pub const HTTP_ROUTE: &str = "http.route";
/// HTTP response status code (semconv).
pub const HTTP_STATUS: &str = "http.response.status_code";
/// The request path (semconv).
pub const URL_PATH: &str = "url.path";
/// The peer's IP address (semconv).
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// The peer's port (semconv).
pub const NETWORK_PEER_PORT: &str = "network.peer.port";

/// The model asked for (GenAI semconv).
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `chat` or `text_completion` (GenAI semconv).
pub const GEN_AI_OPERATION: &str = "gen_ai.operation.name";
/// Prompt tokens (GenAI semconv).
pub const GEN_AI_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// Completion tokens (GenAI semconv).
pub const GEN_AI_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
