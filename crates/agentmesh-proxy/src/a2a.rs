//! A2A 1.0 over JSON-RPC, as the inbound reads it on a pair whose intention has A2A
//! permissions: one JSON-RPC request per POST is parsed strictly and named by its method for
//! the rules, and a `GetExtendedAgentCard` answer is filtered to the skills the caller's
//! methods allow.
//!
//! Choices: a batch is refused whole (A2A sends one request per POST, and one refused call
//! would need a partial answer); a request without an id is refused (A2A has no client
//! notifications, and a refusal must be answerable); a duplicate key anywhere is refused
//! (parsers disagree on which copy wins); a method A2A 1.0 does not have is refused, since no
//! rule can be about it. The skill mapping is [`agentmesh_policy::skill_methods`]'s: a skill
//! needs the methods its `a2a:METHOD` tags name, or `SendMessage`.

use std::sync::Arc;

use agentmesh_policy::{is_a2a_method, skill_methods};
use http::StatusCode;
use serde_json::Value;

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

impl A2aError {
    /// The HTTP status and JSON-RPC code of the refusal.
    pub fn status_and_code(&self) -> (StatusCode, i64) {
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

#[cfg(test)]
mod tests;
