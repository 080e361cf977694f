//! JSON-RPC 2.0 as the mesh reads it on MCP and A2A routes, in the sidecar's inbound and in
//! [`RequireIntention`](crate::RequireIntention) alike: strict parsing (no duplicate keys),
//! the body read up to a limit, the standard error codes, and the mesh's own error answers.
//! The protocols' own rules sit in [`crate::mcp`] and [`crate::a2a`].

use agentmesh_policy::PolicySet;
use agentmesh_spiffe::SpiffeId;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object (also a batch).
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the method is not known.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: the params are not what the method takes.
pub const INVALID_PARAMS: i64 = -32602;

/// Why a request body could not be read as one JSON message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The content type is not JSON (what it was, or `none`).
    #[error("content-type {0:?} is not application/json")]
    NotJson(String),
    /// Over the limit (the limit).
    #[error("the body is over the {0}-byte limit")]
    TooLarge(usize),
    /// The body could not be read to the end.
    #[error("the body could not be read: {0}")]
    Read(String),
}

/// Reads a JSON request body whole, up to `max` bytes: the content type must be JSON, and a
/// declared or actual length over `max` is refused without reading further.
///
/// # Errors
/// [`BodyError`].
pub async fn read_json_body<B>(headers: &HeaderMap, body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !is_json(ct.as_deref()) {
        return Err(BodyError::NotJson(ct.unwrap_or_else(|| "none".into())));
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

// === Strict JSON ===

/// Parses JSON refusing duplicate keys at any depth (serde_json keeps the last copy, some
/// servers the first).
///
/// # Errors
/// Malformed JSON, trailing data, or a duplicate key.
pub fn parse_strict(body: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Strict)?;
            if out.contains_key(&k) {
                return Err(A::Error::custom(format!(
                    "duplicate key {k:?}; parsers disagree on which copy counts"
                )));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Whether a content type is JSON (`application/json`, any case, any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// A JSON-RPC error answer from the mesh; `id` null when the request had none or could
/// not be read.
pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message, "data": data},
    })
}

/// Who refused a call, and in which exchange: the `data` of every refusal on MCP and A2A
/// routes, so a client, a log reader and an operator see the same names whether a sidecar or
/// an in-process service refused.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// What the error message opens with: `agentmesh sidecar` or `agentmesh`.
    pub by: &'a str,
    /// The intention that decided (for a message refused unread: the pair's).
    pub intention: Option<&'a str>,
    /// The caller's SPIFFE ID.
    pub source: &'a str,
    /// The callee's SPIFFE ID.
    pub destination: &'a str,
    /// The request's W3C trace id (empty when none).
    pub trace_id: &'a str,
}

impl Refusal<'_> {
    /// The error's `data`: the intention, the reason and who called whom.
    pub fn data(&self, reason: &str) -> Value {
        json!({
            "intention": self.intention,
            "reason": reason,
            "source": self.source,
            "destination": self.destination,
            "trace_id": self.trace_id,
        })
    }

    /// The JSON-RPC error refusing a call the intentions deny, MCP's and A2A's alike: `code`
    /// (each protocol's own), `denied by intentions: REASON`, and [`Refusal::data`].
    pub fn denied_body(&self, id: Option<&Value>, code: i64, reason: &str) -> Value {
        error_body(
            id,
            code,
            &format!("denied by intentions: {reason}"),
            self.data(reason),
        )
    }
}

/// Why a request on an MCP or A2A route could not be read as a call
/// ([`McpError`](crate::mcp::McpError), [`A2aError`](crate::a2a::A2aError)): what both refuse
/// such a request with, so the two protocols' refusals differ only in their words and codes.
pub trait ReadError: std::fmt::Display {
    /// What the protocol calls one request in a reason: `MCP message`, `A2A request`.
    const REQUEST: &'static str;

    /// The HTTP status and JSON-RPC code of the refusal.
    fn status_and_code(&self) -> (StatusCode, i64);

    /// The reason a refusal logs and names in its `data`.
    fn reason(&self) -> String {
        format!(
            "the {} is refused before any permission is checked: {self}",
            Self::REQUEST
        )
    }

    /// The refusal of a request that was not read as a call: the status and the JSON-RPC
    /// error (with the request's id when it was readable).
    fn answer(&self, id: Option<&Value>, refusal: &Refusal<'_>) -> (StatusCode, Value) {
        let (status, code) = self.status_and_code();
        let message = format!("{}: {self}", refusal.by);
        (
            status,
            error_body(id, code, &message, refusal.data(&self.reason())),
        )
    }
}

/// A request on an MCP or A2A route that could not be read as a call: what the caller is
/// answered and what its decision record says.
#[derive(Debug)]
pub struct Unread {
    /// The pair's intention: no permission was reached, so the rule that admitted the route is
    /// the one an operator is shown.
    pub intention: Option<String>,
    /// Why ([`ReadError::reason`]).
    pub reason: String,
    /// The answer's HTTP status.
    pub status: StatusCode,
    /// The answer: a JSON-RPC error ([`ReadError::answer`]).
    pub body: Value,
}

/// How every request on an MCP or A2A route opens, in the sidecar's inbound and in
/// [`RequireIntention`](crate::RequireIntention) alike: the protocol's reading of the body
/// (`read`) gives the call, or the request is refused as [`Unread`], named with the intention
/// `set` admits the pair `peer` → `me` with.
///
/// # Errors
/// [`Unread`], when `read` failed.
pub fn refuse_unread<C, E: ReadError>(
    read: Result<(C, Bytes), (E, Option<Value>)>,
    set: &PolicySet,
    peer: &SpiffeId,
    me: &SpiffeId,
    refusal: Refusal<'_>,
) -> Result<(C, Bytes), Unread> {
    let (e, id) = match read {
        Ok(read) => return Ok(read),
        Err(unread) => unread,
    };
    let intention = set.check_connection(peer, me).intention_id;
    let refusal = Refusal {
        intention: intention.as_deref(),
        ..refusal
    };
    let (status, body) = e.answer(id.as_ref(), &refusal);
    Err(Unread {
        reason: e.reason(),
        intention,
        status,
        body,
    })
}

/// A JSON response the mesh answers itself (a refusal, or a list it could not filter).
pub fn json_answer(
    status: http::StatusCode,
    body: &Value,
) -> http::Response<http_body_util::Full<Bytes>> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut resp = http::Response::new(http_body_util::Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The body type of an answer the mesh may have rewritten (a filtered list or card): any
/// body, with the error of the body it came from.
pub type AnswerBody<E> = http_body_util::combinators::UnsyncBoxBody<Bytes, E>;

/// [`json_answer`] as an [`AnswerBody`].
pub fn boxed_answer<E: 'static>(
    status: http::StatusCode,
    body: &Value,
) -> http::Response<AnswerBody<E>> {
    json_answer(status, body).map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// Whether a content type is `text/event-stream` (any case, any parameters).
pub fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
}
