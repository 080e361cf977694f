//! A2A 1.0 for the built-in agents: the signed agent card and the JSON-RPC methods.
//!
//! - `GET /.well-known/agent-card.json`: the card, with a `MutualTls` security scheme that
//!   names the agent's SPIFFE ID, signed with the agent's SVID: a JWS (ES256, `x5c` = the
//!   SVID chain, `kid` = its serial) over the RFC 8785 canonical JSON of the card without
//!   `signatures`, in A2A's `AgentCardSignature` form (`protected`, `signature`). As a2a-sdk
//!   does, empty strings, lists and objects are left out of the signed form, since A2A's
//!   protobuf JSON cannot tell them from absent ones.
//! - `POST /a2a`: `SendMessage` is answered as `/ask` answers (the message's text parts are
//!   the question; the answer is one agent `Message`, with who handled it and their
//!   signatures in its metadata); `GetExtendedAgentCard` answers the card unsigned (the
//!   caller reads it over the mTLS session it verified, and the sidecar filters its skills);
//!   `GetTask` and `CancelTask` answer "task not found", since every message is answered at
//!   once and no task is kept; every other method is "unsupported operation".
//!
//! Each agent has one skill, its role, reached by `SendMessage` (tagged `a2a:SendMessage`,
//! the mapping the sidecar's extended-card filter reads).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use crate::{Agent, AskRequest, MAX_ASK_BYTES, json_response};
use agentmesh_telemetry::{Span, attr};

/// Where the public card is served (A2A's well-known path).
pub(crate) const CARD_PATH: &str = "/.well-known/agent-card.json";
/// Where JSON-RPC requests go; the card's interface URL ends with it.
pub(crate) const RPC_PATH: &str = "/a2a";
/// The A2A protocol version the card names.
const PROTOCOL_VERSION: &str = "1.0";

/// The tag prefix a skill names an A2A method it needs with (`agentmesh_policy`'s
/// `SKILL_METHOD_TAG`, which the sidecar's extended-card filter reads).
const SKILL_METHOD_TAG: &str = "a2a:";

/// A2A: the task does not exist.
const TASK_NOT_FOUND: i64 = -32001;
/// A2A: the agent does not do this.
const UNSUPPORTED_OPERATION: i64 = -32004;
/// JSON-RPC.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// Why a card could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// No SVID to sign with.
    #[error(
        "this agent has no SVID to sign its card with; give it [a2a] workload_api (or [delegation] or [mtls])"
    )]
    NoIdentity,
    /// The Host the card was asked for cannot form the interface URL.
    #[error("the Host header {0:?} cannot name this agent's URL; set [a2a] url")]
    BadHost(String),
    /// A number RFC 8785 serialization here does not cover.
    #[error("the card holds a number that is not an integer, which is not canonicalized")]
    NotCanonical,
    /// Signing failed.
    #[error("signing the card: {0}")]
    Sign(#[from] agentmesh_sdk::JwsError),
}

// === The card ===

impl Agent {
    /// The card without signatures, naming `url` as its JSON-RPC interface.
    fn card(&self, url: &str, me: &str) -> Value {
        let role = self.cfg.role.as_str();
        json!({
            "name": self.name(),
            "description": format!("The agentmesh {role}: {}", self.cfg.role.prompt()),
            "version": env!("CARGO_PKG_VERSION"),
            "supportedInterfaces": [{
                "url": url,
                "protocolBinding": "JSONRPC",
                "protocolVersion": PROTOCOL_VERSION,
            }],
            "capabilities": {"extendedAgentCard": true},
            "securitySchemes": {"spiffe": {"mtlsSecurityScheme": {
                "description": format!(
                    "Mutual TLS with an X.509-SVID of this trust domain; this agent is {me}. \
                     Callers reach it through the mesh, and intentions decide each A2A method."
                ),
            }}},
            "securityRequirements": [{"schemes": {"spiffe": {}}}],
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": [{
                "id": role,
                "name": role,
                "description": self.cfg.role.prompt(),
                "tags": [role, format!("{SKILL_METHOD_TAG}SendMessage")],
                "examples": ["What does agentmesh do?"],
            }],
        })
    }

    /// The card's interface URL: `[a2a] url`, else from the Host the card was asked for.
    fn card_url(&self, headers: &HeaderMap) -> Result<String, CardError> {
        if let Some(url) = self.cfg.a2a.as_ref().and_then(|a| a.url.clone()) {
            return Ok(url);
        }
        let host = headers
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        let plausible = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !plausible {
            return Err(CardError::BadHost(host));
        }
        Ok(format!("http://{host}{RPC_PATH}"))
    }

    /// The public card, signed.
    fn signed_card(&self, headers: &HeaderMap) -> Result<Value, CardError> {
        let source = self.identity.as_ref().ok_or(CardError::NoIdentity)?;
        let me = source.current().svid.id.to_string();
        let mut card = self.card(&self.card_url(headers)?, &me);
        let signature = sign_card(source, &card)?;
        card["signatures"] = json!([signature]);
        Ok(card)
    }
}

/// Signs `card` (without `signatures`) as A2A's `AgentCardSignature`: the protected header
/// and the signature of a detached JWS over the card's canonical JSON.
///
/// # Errors
/// A number that is not an integer, or a key that cannot sign.
pub(crate) fn sign_card(
    source: &agentmesh_sdk::X509Source,
    card: &Value,
) -> Result<Value, CardError> {
    let mut unsigned = card.clone();
    if let Some(o) = unsigned.as_object_mut() {
        o.remove("signatures");
    }
    let canonical = canonical(&without_empty(unsigned).unwrap_or(Value::Null))?;
    let jws = agentmesh_sdk::jws::sign_detached(source, canonical.as_bytes())?;
    let (protected, signature) = jws.split_once("..").unwrap_or_default();
    Ok(json!({"protected": protected, "signature": signature}))
}

/// The value without empty strings, lists and objects (recursively), nor nulls; `None` when
/// nothing is left.
fn without_empty(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(without_empty).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(o) => {
            let o: Map<String, Value> = o
                .into_iter()
                .filter_map(|(k, v)| without_empty(v).map(|v| (k, v)))
                .collect();
            (!o.is_empty()).then_some(Value::Object(o))
        }
        other => Some(other),
    }
}

/// RFC 8785 (JCS) for JSON with integer numbers: keys sorted by UTF-16 code units, no
/// whitespace, strings escaped only where JSON requires (serde_json's escaping is JCS's).
///
/// # Errors
/// A number that is not an integer in JSON's exact range.
pub(crate) fn canonical(v: &Value) -> Result<String, CardError> {
    let mut out = String::new();
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut String) -> Result<(), CardError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            const SAFE: u64 = (1 << 53) - 1;
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) if i.unsigned_abs() <= SAFE => out.push_str(&i.to_string()),
                (_, Some(u)) if u <= SAFE => out.push_str(&u.to_string()),
                _ => return Err(CardError::NotCanonical),
            }
        }
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(e, out)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&o[k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

// === Handlers ===

/// `GET /.well-known/agent-card.json`.
pub(crate) async fn card(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    match agent.signed_card(&headers) {
        Ok(card) => json_response(StatusCode::OK, &card),
        Err(e) => {
            tracing::warn!(error = %e, "could not serve the agent card");
            let status = match e {
                CardError::BadHost(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            json_response(
                status,
                &json!({"error": e.to_string(), "agent": agent.name()}),
            )
        }
    }
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
}

/// `POST /a2a`: one JSON-RPC request.
pub(crate) async fn rpc(
    State(agent): State<Arc<Agent>>,
    extensions: http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_ASK_BYTES {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": INVALID_REQUEST,
                "message": format!("the request is over the {MAX_ASK_BYTES}-byte limit")}}),
        );
    }
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": PARSE_ERROR,
                "message": "the body is not one JSON-RPC request object"}}),
        );
    };
    let id = req.remove("id").unwrap_or(Value::Null);
    let method = req
        .remove("method")
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_default();
    let params = req.remove("params").unwrap_or(Value::Null);
    match method.as_str() {
        "SendMessage" => send_message(&agent, &extensions, &headers, &id, &params).await,
        "GetExtendedAgentCard" => match agent.identity.as_ref() {
            Some(source) => match agent.card_url(&headers) {
                Ok(url) => {
                    let me = source.current().svid.id.to_string();
                    json_response(
                        StatusCode::OK,
                        &json!({"jsonrpc": "2.0", "id": id, "result": agent.card(&url, &me)}),
                    )
                }
                Err(e) => rpc_error(&id, INVALID_REQUEST, &e.to_string()),
            },
            None => rpc_error(&id, INTERNAL_ERROR, &CardError::NoIdentity.to_string()),
        },
        "GetTask" | "CancelTask" => rpc_error(
            &id,
            TASK_NOT_FOUND,
            "no such task: this agent answers every message at once and keeps no tasks",
        ),
        "" => rpc_error(&id, INVALID_REQUEST, "no \"method\""),
        other => rpc_error(
            &id,
            UNSUPPORTED_OPERATION,
            &format!("{other} is not supported by this agent; it answers SendMessage"),
        ),
    }
}

async fn send_message(
    agent: &Agent,
    extensions: &http::Extensions,
    headers: &HeaderMap,
    id: &Value,
    params: &Value,
) -> Response {
    let message = params.get("message");
    let text: Vec<&str> = message
        .and_then(|m| m.get("parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if text.is_empty() {
        return rpc_error(
            id,
            INVALID_PARAMS,
            "params.message has no text part; this agent answers text",
        );
    }
    let mut trace = Span::server(format!("{} a2a SendMessage", agent.name()), headers);
    trace.set_str(attr::HTTP_METHOD, "POST");
    trace.set_str(attr::HTTP_ROUTE, RPC_PATH);
    trace.set_str("a2a.method", "SendMessage");
    trace.set_str("agentmesh.agent.role", agent.cfg.role.as_str());
    let req = AskRequest {
        question: text.join("\n"),
        context: None,
    };
    match agent.answer(req, extensions, headers, &mut trace).await {
        Ok(a) => {
            trace.set_http_status(200);
            let context = message
                .and_then(|m| m.get("contextId"))
                .and_then(Value::as_str)
                .unwrap_or(&a.trace_id)
                .to_owned();
            let mut metadata = json!({"agents": a.agents, "traceId": a.trace_id});
            if !a.signatures.is_empty() {
                metadata["signatures"] = json!(a.signatures);
            }
            let reply = json!({
                "messageId": format!("{}-{}", a.trace_id, agent.name()),
                "contextId": context,
                "role": "ROLE_AGENT",
                "parts": [{"text": a.answer}],
                "metadata": metadata,
            });
            json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": {"message": reply}}),
            )
        }
        Err(f) => {
            trace.set_http_status(f.status.as_u16());
            trace.set_error(&f.message);
            tracing::warn!(error = %f.message, "could not answer an A2A message");
            rpc_error(id, INTERNAL_ERROR, &f.message)
        }
    }
}

#[cfg(test)]
mod tests;
