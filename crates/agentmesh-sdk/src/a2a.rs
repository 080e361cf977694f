//! A2A 1.0 over JSON-RPC, as the mesh reads it on a pair whose intention has A2A
//! permissions (the sidecar's inbound and [`RequireIntention`](crate::RequireIntention) share
//! this one reading): one JSON-RPC request per POST is parsed strictly and named by its
//! method for the rules, and a `GetExtendedAgentCard` answer is filtered to the skills the
//! caller's methods allow.
//!
//! A refused call is answered as JSON-RPC with HTTP 200 and the request's id, so an A2A
//! client hands the caller the error's message (which names the intention) instead of a bare
//! HTTP status. Requests that cannot be answered as one (not JSON, too large, a batch, no id)
//! get a 4xx with a JSON-RPC error body.
//!
//! Choices: a batch is refused whole (A2A sends one request per POST, and one refused call
//! would need a partial answer); a request without an id is refused (A2A has no client
//! notifications, and a refusal must be answerable); a duplicate key anywhere is refused
//! (parsers disagree on which copy wins); a method A2A 1.0 does not have is refused, since no
//! rule can be about it. The skill mapping is [`agentmesh_policy::skill_methods`]'s: a skill
//! needs the methods its `a2a:METHOD` tags name, or `SendMessage`.

use std::sync::Arc;

use agentmesh_policy::{A2aCall, is_a2a_method, skill_methods};
use agentmesh_spiffe::SpiffeId;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};

use crate::jsonrpc::{AnswerBody, ReadError, Refusal, boxed_answer, error_body};
use crate::policy::{PolicyState, RequestHead};

pub use crate::jsonrpc::{INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};

/// agentmesh: the intentions refuse the call. Outside A2A's own codes (-32001 to -32009, such
/// as -32003 push notifications not supported) so that no A2A client reads a refusal as one
/// of them; the client shows the message, which names the intention.
pub const DENIED: i64 = -32040;

/// Why an A2A request is refused before any permission is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum A2aError {
    /// The request's content type is not JSON.
    #[error(
        "the body is not JSON (content-type {0:?}); this route has A2A permissions and takes one JSON-RPC request as application/json"
    )]
    NotJson(String),
    /// Over `[inbound] a2a_max_body_bytes`.
    #[error(
        "the body is over the {0}-byte limit for an A2A request ([inbound] a2a_max_body_bytes)"
    )]
    TooLarge(usize),
    /// The body could not be read to the end.
    #[error("the body could not be read: {0}")]
    Read(String),
    /// Not JSON, or a duplicate key.
    #[error("malformed JSON-RPC: {0}")]
    Malformed(String),
    /// A JSON array.
    #[error("a JSON-RPC batch is refused whole: send one A2A request per POST")]
    Batch,
    /// A JSON value that is not a JSON-RPC 2.0 request.
    #[error("not a JSON-RPC 2.0 request: {0}")]
    Invalid(String),
    /// A method A2A 1.0 does not have.
    #[error("method {0:?} is not an A2A 1.0 method, so it cannot be authorized")]
    UnknownMethod(String),
    /// `params` that is not an object.
    #[error("{0}: params must be an object")]
    InvalidParams(String),
}

impl ReadError for A2aError {
    const REQUEST: &'static str = "A2A request";

    fn status_and_code(&self) -> (StatusCode, i64) {
        match self {
            A2aError::NotJson(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, PARSE_ERROR),
            A2aError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST),
            A2aError::Read(_) => (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            A2aError::Malformed(_) => (StatusCode::BAD_REQUEST, PARSE_ERROR),
            A2aError::Batch | A2aError::Invalid(_) => (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            // Well-formed requests: answered as JSON-RPC with the client's id.
            A2aError::UnknownMethod(_) => (StatusCode::OK, METHOD_NOT_FOUND),
            A2aError::InvalidParams(_) => (StatusCode::OK, INVALID_PARAMS),
        }
    }
}

impl From<crate::jsonrpc::BodyError> for A2aError {
    fn from(e: crate::jsonrpc::BodyError) -> Self {
        use crate::jsonrpc::BodyError;
        match e {
            BodyError::NotJson(ct) => A2aError::NotJson(ct),
            BodyError::TooLarge(max) => A2aError::TooLarge(max),
            BodyError::Read(why) => A2aError::Read(why),
        }
    }
}

/// The refusal of a call the intentions deny: HTTP 200 with the JSON-RPC error [`DENIED`]
/// naming the intention and the reason.
pub fn denied(id: &Value, reason: &str, refusal: &Refusal<'_>) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        refusal.denied_body(Some(id), DENIED, reason),
    )
}

/// The default largest A2A request read (4 MiB; the sidecar's `[inbound]
/// a2a_max_body_bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The largest extended card answer that is filtered (4 MiB); a larger one is refused with
/// 502 rather than passed unread.
pub const MAX_CARD_ANSWER: usize = 4 * 1024 * 1024;

/// Reads one request (body up to `max` bytes, then [`Request::parse`]); on error, the
/// request's id when it was readable.
///
/// # Errors
/// [`A2aError`], with the id if known.
pub async fn read_request<B>(
    headers: &HeaderMap,
    body: B,
    max: usize,
) -> Result<(Request, Bytes), (A2aError, Option<Value>)>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match crate::jsonrpc::read_json_body(headers, body, max).await {
        Ok(bytes) => Request::parse(&bytes).map(|r| (r, bytes)),
        Err(e) => Err((A2aError::from(e), None)),
    }
}

/// Whether this caller (with this request head and user) may call each A2A method under
/// `policy`: what its extended card shows it.
pub fn allowed(
    policy: Arc<PolicyState>,
    peer: SpiffeId,
    me: SpiffeId,
    head: RequestHead,
    user: Option<Map<String, Value>>,
) -> Allowed {
    Arc::new(move |a2a_method| {
        let call = A2aCall {
            method: a2a_method,
            user: user.as_ref(),
        };
        head.decide(|http| policy.set.check_a2a(&peer, &me, http, &call).is_allowed())
    })
}

/// Whether an A2A method answers with a stream (SSE) that stays open: what a policy change
/// that denies the method must end.
pub fn is_streaming(method: &str) -> bool {
    matches!(method, "SendStreamingMessage" | "SubscribeToTask")
}

/// One parsed A2A request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request's id (a string or an integer).
    pub id: Value,
    /// The A2A method, one of [`agentmesh_policy::A2A_METHODS`].
    pub method: String,
}

impl Request {
    /// Reads one JSON-RPC request. On an error after the id was read, the id comes back with
    /// it, so the refusal can answer the request.
    ///
    /// # Errors
    /// Malformed JSON, a batch, a non-request, an unknown method or params not an object.
    pub fn parse(body: &[u8]) -> Result<Self, (A2aError, Option<Value>)> {
        let v = crate::jsonrpc::parse_strict(body)
            .map_err(|e| (A2aError::Malformed(e.to_string()), None))?;
        let mut obj = match v {
            Value::Object(o) => o,
            Value::Array(_) => return Err((A2aError::Batch, None)),
            _ => {
                return Err((
                    A2aError::Invalid("the body is not a JSON object".into()),
                    None,
                ));
            }
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err((
                A2aError::Invalid("\"jsonrpc\" must be \"2.0\"".into()),
                None,
            ));
        }
        let id = match obj.remove("id") {
            Some(id @ Value::String(_)) => id,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
            None => {
                return Err((
                    A2aError::Invalid(
                        "no \"id\": A2A requests carry one, and a refusal must answer it".into(),
                    ),
                    None,
                ));
            }
            Some(_) => {
                return Err((
                    A2aError::Invalid("\"id\" must be a string or an integer".into()),
                    None,
                ));
            }
        };
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => {
                return Err((
                    A2aError::Invalid("\"method\" must be a string".into()),
                    Some(id),
                ));
            }
        };
        if !is_a2a_method(&method) {
            return Err((A2aError::UnknownMethod(method), Some(id)));
        }
        match obj.remove("params") {
            None | Some(Value::Object(_)) => {}
            Some(_) => return Err((A2aError::InvalidParams(method), Some(id))),
        }
        Ok(Self { id, method })
    }
}

/// Decides whether a caller may call an A2A method.
pub type Allowed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Removes from a `GetExtendedAgentCard` answer to request `id` every skill whose methods
/// ([`skill_methods`]) `allowed` does not all allow. A card that lost a skill also loses its
/// `signatures`, which covered the whole card and no longer verify; the caller reads the
/// card over the mTLS session whose peer it verified. Anything else (another id, an error)
/// is left alone. Returns how many skills were removed.
pub fn filter_card(msg: &mut Value, id: &Value, allowed: &Allowed) -> usize {
    if msg.get("id") != Some(id) {
        return 0;
    }
    let Some(card) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return 0;
    };
    let removed = match card.get_mut("skills").and_then(Value::as_array_mut) {
        Some(skills) => {
            let before = skills.len();
            skills.retain(|s| skill_allowed(s, allowed));
            before - skills.len()
        }
        None => 0,
    };
    if removed > 0 {
        card.remove("signatures");
    }
    removed
}

fn skill_allowed(skill: &Value, allowed: &Allowed) -> bool {
    // A skill that is not an object, or with tags that are not strings, cannot be judged.
    let Some(skill) = skill.as_object() else {
        return false;
    };
    let tags = match skill.get("tags") {
        None => Vec::new(),
        Some(Value::Array(t)) => match t.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(t) => t,
            None => return false,
        },
        Some(_) => return false,
    };
    skill_methods(tags).into_iter().all(|m| allowed(m))
}

/// A `GetExtendedAgentCard` answer body, filtered; `Err` when it is not JSON.
///
/// # Errors
/// The answer is not JSON.
pub fn filter_card_answer(body: &[u8], id: &Value, allowed: &Allowed) -> Result<Vec<u8>, String> {
    let mut msg: Value =
        serde_json::from_slice(body).map_err(|e| format!("the card answer is not JSON: {e}"))?;
    filter_card(&mut msg, id, allowed);
    Ok(msg.to_string().into_bytes())
}

/// Filters a `GetExtendedAgentCard` answer. An answer that cannot be read as JSON is refused
/// (502, the error opening with `by`), since passing it would show skills the caller may not
/// use; a failed (non-2xx) answer passes as sent.
pub async fn filter_card_response<B>(
    resp: Response<B>,
    id: Value,
    allowed: Allowed,
    by: &str,
) -> Response<AnswerBody<B::Error>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let refuse = |why: String| {
        tracing::warn!(reason = %why, "an A2A extended card answer could not be filtered; refused");
        boxed_answer(
            StatusCode::BAD_GATEWAY,
            &error_body(
                Some(&id),
                INVALID_REQUEST,
                &format!("{by}: {why}"),
                Value::Null,
            ),
        )
    };
    if !resp.status().is_success() {
        return resp.map(BodyExt::boxed_unsync);
    }
    if resp.headers().contains_key(http::header::CONTENT_ENCODING) {
        return refuse("the agent encoded its card answer, so it cannot be filtered".into());
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = match Limited::new(body, MAX_CARD_ANSWER).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return refuse(format!("the card answer could not be read: {e}")),
    };
    match filter_card_answer(&bytes, &id, &allowed) {
        Ok(filtered) => {
            let body = Full::new(Bytes::from(filtered))
                .map_err(|never| match never {})
                .boxed_unsync();
            Response::from_parts(parts, body)
        }
        Err(why) => refuse(why),
    }
}

#[cfg(test)]
mod tests;
