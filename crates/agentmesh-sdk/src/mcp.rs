//! MCP over Streamable HTTP, as the mesh reads it on a pair whose intention has MCP
//! permissions (the sidecar's inbound and [`RequireIntention`](crate::RequireIntention) share
//! this one reading): one JSON-RPC message per POST is parsed strictly, its `Mcp-Method` and
//! `Mcp-Name` headers (2026-07-28) are checked against the body, the call is named for the
//! rules, and `*/list` answers (JSON or SSE) are filtered to what the caller may use.
//!
//! A refused call is answered as JSON-RPC, with HTTP 200 and the request's id: the MCP SDKs
//! hand such an error to the caller as the call's result and keep the session, where a 4xx
//! makes some of them drop the whole transport. Messages that cannot be answered as a request
//! (not JSON, too large, a batch, no id, a header that disagrees with the body) get a 4xx
//! with a JSON-RPC error body.
//!
//! Choices: a JSON-RPC batch (an array, allowed only by 2025-03-26) is refused whole, since
//! one refused call would otherwise need a partial answer the client cannot match; a
//! duplicate key anywhere in a message is refused, because parsers disagree on which copy
//! wins and the rules must judge the copy the server reads; a method this module does not
//! know is refused, since it cannot be named for the rules.

use std::pin::Pin;
use std::sync::Arc;

use agentmesh_policy::{McpCall, McpItem};
use agentmesh_spiffe::SpiffeId;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full, Limited, StreamBody};
use serde_json::{Map, Value};

use crate::jsonrpc::{AnswerBody, BodyError, ReadError, Refusal, boxed_answer};
pub use crate::jsonrpc::{
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, error_body, is_json,
};
use crate::policy::{PolicyState, RequestHead};
/// MCP 2026-07-28: an `Mcp-*` header is missing or does not match the body (the code the
/// TypeScript and Ruby SDKs answer with).
pub const HEADER_MISMATCH: i64 = -32020;
/// agentmesh: the intentions refuse the call. In JSON-RPC's range for server errors, and not
/// one the MCP SDKs use (-32000 connection closed, -32001 timeout, -32002 not found).
pub const DENIED: i64 = -32003;

/// The first protocol revision whose requests must carry `Mcp-Method` (and `Mcp-Name`).
const STATELESS_REVISION: &str = "2026-07-28";
/// The `_meta` key a 2026-07-28 request names its revision in.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Why an MCP message is refused before any permission is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The request's content type is not JSON.
    #[error(
        "the body is not JSON (content-type {0:?}); this route has MCP permissions and takes one JSON-RPC message as application/json"
    )]
    NotJson(String),
    /// Over `[inbound] mcp_max_body_bytes`.
    #[error(
        "the body is over the {0}-byte limit for an MCP message ([inbound] mcp_max_body_bytes)"
    )]
    TooLarge(usize),
    /// The body could not be read to the end.
    #[error("the body could not be read: {0}")]
    Read(String),
    /// Not JSON, or a duplicate key.
    #[error("malformed JSON-RPC: {0}")]
    Malformed(String),
    /// A JSON array.
    #[error("a JSON-RPC batch is refused whole: send one message per POST (MCP since 2025-06-18)")]
    Batch,
    /// A JSON value that is not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(String),
    /// A method that cannot be named for the rules.
    #[error("method {0:?} is not an MCP method this sidecar knows, so it cannot be authorized")]
    UnknownMethod(String),
    /// Params the method does not take.
    #[error("{method}: {why}")]
    InvalidParams {
        /// The method.
        method: String,
        /// What is wrong.
        why: String,
    },
    /// An `Mcp-*` header that disagrees with the body.
    #[error("header {header} is {sent:?} but the body says {body:?}; both must name the same call")]
    HeaderMismatch {
        /// `Mcp-Method` or `Mcp-Name`.
        header: &'static str,
        /// The header's (decoded) value.
        sent: String,
        /// What the body has (empty when nothing).
        body: String,
    },
    /// An `Mcp-*` header that a 2026-07-28 request must carry, or one sent twice.
    #[error("header {0}")]
    HeaderBad(String),
}

impl ReadError for McpError {
    const REQUEST: &'static str = "MCP message";

    fn status_and_code(&self) -> (StatusCode, i64) {
        match self {
            McpError::NotJson(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, PARSE_ERROR),
            McpError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST),
            McpError::Read(_) => (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            McpError::Malformed(_) => (StatusCode::BAD_REQUEST, PARSE_ERROR),
            McpError::Batch | McpError::Invalid(_) => (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            // The request itself is well formed: answered as JSON-RPC with the client's id.
            McpError::UnknownMethod(_) => (StatusCode::OK, METHOD_NOT_FOUND),
            McpError::InvalidParams { .. } => (StatusCode::OK, INVALID_PARAMS),
            McpError::HeaderMismatch { .. } | McpError::HeaderBad(_) => {
                (StatusCode::BAD_REQUEST, HEADER_MISMATCH)
            }
        }
    }
}

impl From<BodyError> for McpError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::NotJson(ct) => McpError::NotJson(ct),
            BodyError::TooLarge(max) => McpError::TooLarge(max),
            BodyError::Read(why) => McpError::Read(why),
        }
    }
}

/// The refusal of a call the intentions deny: HTTP 200 with the JSON-RPC error [`DENIED`]
/// naming the intention and the reason, or 403 for a notification (it has no id to answer).
pub fn denied(id: Option<&Value>, reason: &str, refusal: &Refusal<'_>) -> (StatusCode, Value) {
    let status = if id.is_some() {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    (status, refusal.denied_body(id, DENIED, reason))
}

/// The default largest MCP message read (4 MiB; the sidecar's `[inbound]
/// mcp_max_body_bytes`): a tool call's arguments, with room to spare.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The largest `*/list` answer that is filtered (32 MiB); a thousand tools with their
/// schemas are about 1 MiB. A larger answer is refused with 502 rather than passed unread.
pub const MAX_LIST_ANSWER: usize = 32 * 1024 * 1024;

/// Reads and checks one message (body up to `max` bytes, then [`Message::parse`] and
/// [`Message::check_headers`]); on error, the request's id when it was readable.
///
/// # Errors
/// [`McpError`], with the id if known.
pub async fn read_message<B>(
    headers: &HeaderMap,
    body: B,
    max: usize,
) -> Result<(Message, Bytes), (McpError, Option<Value>)>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = crate::jsonrpc::read_json_body(headers, body, max)
        .await
        .map_err(|e| (McpError::from(e), None))?;
    let msg = Message::parse(&bytes).map_err(|e| (e, None))?;
    msg.check_headers(headers)
        .map_err(|e| (e, msg.id.clone()))?;
    Ok((msg, bytes))
}

/// Parses JSON refusing duplicate keys at any depth ([`crate::jsonrpc::parse_strict`]).
///
/// # Errors
/// Malformed JSON, trailing data, or a duplicate key.
pub fn parse_strict(body: &[u8]) -> Result<Value, McpError> {
    crate::jsonrpc::parse_strict(body).map_err(|e| McpError::Malformed(e.to_string()))
}

// === Messages ===

/// Which list a `*/list` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `tools/list`: `result.tools[].name`.
    Tools,
    /// `resources/list`: `result.resources[].uri`.
    Resources,
    /// `resources/templates/list`: `result.resourceTemplates[].uriTemplate`.
    ResourceTemplates,
    /// `prompts/list`: `result.prompts[].name`.
    Prompts,
}

impl Listing {
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Listing::Tools => ("tools", "name"),
            Listing::Resources => ("resources", "uri"),
            Listing::ResourceTemplates => ("resourceTemplates", "uriTemplate"),
            Listing::Prompts => ("prompts", "name"),
        }
    }

    fn item(self, name: &str) -> McpItem<'_> {
        match self {
            Listing::Tools => McpItem::Tool(name),
            Listing::Resources | Listing::ResourceTemplates => McpItem::Resource(name),
            Listing::Prompts => McpItem::Prompt(name),
        }
    }
}

/// What a message is, for the rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The protocol's own traffic: passes for an allowed pair.
    Housekeeping,
    /// The client answering a request of the server (sampling, elicitation, roots).
    Response,
    /// A `*/list`: passes for an allowed pair, and the answer is filtered.
    List(Listing),
    /// `tools/call`.
    Tool {
        /// `params.name`.
        name: String,
        /// `params.arguments` (empty when absent).
        arguments: Map<String, Value>,
    },
    /// `resources/read|subscribe|unsubscribe`, or a completion for a resource.
    Resource(String),
    /// `prompts/get`, or a completion for a prompt.
    Prompt(String),
}

/// One parsed client-to-server message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The request's id; `None` for a notification or a response.
    pub id: Option<Value>,
    /// The JSON-RPC method; `None` for a response.
    pub method: Option<String>,
    /// What the rules look at.
    pub kind: Kind,
    /// `params._meta`'s protocol revision (2026-07-28 requests carry it).
    meta_version: Option<String>,
}

const HOUSEKEEPING: &[&str] = &[
    "initialize",
    "ping",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
];

impl Message {
    /// Reads one JSON-RPC message.
    ///
    /// # Errors
    /// Malformed JSON, a batch, a non-message, an unknown method or bad params.
    pub fn parse(body: &[u8]) -> Result<Self, McpError> {
        let v = parse_strict(body)?;
        let mut obj = match v {
            Value::Object(o) => o,
            Value::Array(_) => return Err(McpError::Batch),
            _ => return Err(McpError::Invalid("the body is not a JSON object".into())),
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(McpError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
        }
        let id = match obj.remove("id") {
            None => None,
            Some(id @ Value::String(_)) => Some(id),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
            Some(_) => {
                return Err(McpError::Invalid(
                    "\"id\" must be a string or an integer (MCP forbids null)".into(),
                ));
            }
        };
        let Some(method) = obj.remove("method") else {
            // A response from the client: an id and exactly one of result and error.
            let answers =
                usize::from(obj.contains_key("result")) + usize::from(obj.contains_key("error"));
            if id.is_none() || answers != 1 {
                return Err(McpError::Invalid(
                    "no \"method\", and not a response (an id and one of result or error)".into(),
                ));
            }
            return Ok(Self {
                id: None,
                method: None,
                kind: Kind::Response,
                meta_version: None,
            });
        };
        let Value::String(method) = method else {
            return Err(McpError::Invalid("\"method\" must be a string".into()));
        };
        let params = match obj.remove("params") {
            None => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => {
                return Err(McpError::InvalidParams {
                    method,
                    why: "params must be an object".into(),
                });
            }
        };
        let meta_version = params
            .get("_meta")
            .and_then(|m| m.get(META_VERSION))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let notification = method.starts_with("notifications/");
        if notification != id.is_none() {
            return Err(McpError::Invalid(if notification {
                format!("{method} is a notification and carries no id")
            } else {
                format!("{method} is a request and needs an id")
            }));
        }
        let kind = Self::kind(&method, params)?;
        Ok(Self {
            id,
            method: Some(method),
            kind,
            meta_version,
        })
    }

    fn kind(method: &str, mut params: Map<String, Value>) -> Result<Kind, McpError> {
        let bad = |why: &str| McpError::InvalidParams {
            method: method.to_owned(),
            why: why.to_owned(),
        };
        let mut string = |key: &str| match params.remove(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad(&format!("params.{key} must be a string"))),
        };
        Ok(match method {
            m if m.starts_with("notifications/") || HOUSEKEEPING.contains(&m) => Kind::Housekeeping,
            "tools/list" => Kind::List(Listing::Tools),
            "resources/list" => Kind::List(Listing::Resources),
            "resources/templates/list" => Kind::List(Listing::ResourceTemplates),
            "prompts/list" => Kind::List(Listing::Prompts),
            "tools/call" => {
                let name = string("name")?;
                let arguments = match params.remove("arguments") {
                    None => Map::new(),
                    Some(Value::Object(a)) => a,
                    Some(_) => return Err(bad("params.arguments must be an object")),
                };
                Kind::Tool { name, arguments }
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Kind::Resource(string("uri")?)
            }
            "prompts/get" => Kind::Prompt(string("name")?),
            "completion/complete" => {
                let r = params.get("ref").and_then(Value::as_object);
                let field = |k: &str| r.and_then(|r| r.get(k)).and_then(Value::as_str);
                match (field("type"), field("name"), field("uri")) {
                    (Some("ref/prompt"), Some(n), _) => Kind::Prompt(n.to_owned()),
                    (Some("ref/resource"), _, Some(u)) => Kind::Resource(u.to_owned()),
                    _ => {
                        return Err(bad(
                            "params.ref must be a ref/prompt with a name or a ref/resource with a uri",
                        ));
                    }
                }
            }
            other => return Err(McpError::UnknownMethod(other.to_owned())),
        })
    }

    /// The item the rules decide on, if any.
    pub fn item(&self) -> Option<McpItem<'_>> {
        match &self.kind {
            Kind::Tool { name, .. } => Some(McpItem::Tool(name)),
            Kind::Resource(u) => Some(McpItem::Resource(u)),
            Kind::Prompt(n) => Some(McpItem::Prompt(n)),
            _ => None,
        }
    }

    /// The tool, resource and prompt the message names, for logs and spans.
    pub fn names(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match &self.kind {
            Kind::Tool { name, .. } => (Some(name), None, None),
            Kind::Resource(u) => (None, Some(u), None),
            Kind::Prompt(n) => (None, None, Some(n)),
            _ => (None, None, None),
        }
    }

    /// The message as the rules see it.
    pub fn call<'a>(&'a self, user: Option<&'a Map<String, Value>>) -> McpCall<'a> {
        McpCall {
            method: self.method.as_deref().unwrap_or("(response)"),
            item: self.item(),
            arguments: match &self.kind {
                Kind::Tool { arguments, .. } => Some(arguments),
                _ => None,
            },
            user,
        }
    }

    /// What `Mcp-Name` mirrors: `params.name` or `params.uri` of the methods that name one
    /// thing (not of a completion, whose name sits in `ref`).
    fn mirrored_name(&self) -> Option<&str> {
        match (self.method.as_deref(), &self.kind) {
            (Some("tools/call"), Kind::Tool { name, .. }) => Some(name),
            (Some("prompts/get"), Kind::Prompt(n)) => Some(n),
            (
                Some("resources/read" | "resources/subscribe" | "resources/unsubscribe"),
                Kind::Resource(u),
            ) => Some(u),
            _ => None,
        }
    }

    /// Checks the 2026-07-28 `Mcp-Method` and `Mcp-Name` headers against the body. When
    /// sent (by any revision) they must match it exactly; a 2026-07-28 request (by its
    /// `MCP-Protocol-Version` header or `_meta`) must send `Mcp-Method`, and `Mcp-Name` for
    /// `tools/call`, `resources/read` and `prompts/get`.
    ///
    /// # Errors
    /// A header missing, repeated, undecodable or naming another call than the body.
    pub fn check_headers(&self, headers: &HeaderMap) -> Result<(), McpError> {
        let one = |name: &'static str| -> Result<Option<String>, McpError> {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(McpError::HeaderBad(format!(
                    "{name} is sent more than once"
                )));
            }
            first
                .to_str()
                .map(|s| Some(s.to_owned()))
                .map_err(|_| McpError::HeaderBad(format!("{name} is not visible ASCII")))
        };
        let version = one("mcp-protocol-version")?;
        let stateless = [version.as_deref(), self.meta_version.as_deref()]
            .into_iter()
            .flatten()
            .any(|v| v >= STATELESS_REVISION);
        match (one("mcp-method")?, self.method.as_deref()) {
            (Some(sent), Some(body)) if sent != body => {
                return Err(McpError::HeaderMismatch {
                    header: "Mcp-Method",
                    sent,
                    body: body.to_owned(),
                });
            }
            (Some(sent), None) => {
                return Err(McpError::HeaderMismatch {
                    header: "Mcp-Method",
                    sent,
                    body: String::new(),
                });
            }
            (None, Some(_)) if stateless => {
                return Err(McpError::HeaderBad(
                    "Mcp-Method is missing; a 2026-07-28 request must carry it".into(),
                ));
            }
            _ => {}
        }
        match (one("mcp-name")?, self.mirrored_name()) {
            (Some(raw), body) => {
                let sent = decode_name(&raw)?;
                if Some(sent.as_str()) != body {
                    return Err(McpError::HeaderMismatch {
                        header: "Mcp-Name",
                        sent,
                        body: body.unwrap_or_default().to_owned(),
                    });
                }
            }
            (None, Some(_))
                if stateless
                    && matches!(
                        self.method.as_deref(),
                        Some("tools/call" | "resources/read" | "prompts/get")
                    ) =>
            {
                return Err(McpError::HeaderBad(
                    "Mcp-Name is missing; a 2026-07-28 tools/call, resources/read or prompts/get must carry it".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// An `Mcp-Name` value: as is, or `=?base64?…?=` (standard alphabet, UTF-8) for names that
/// cannot ride in a header as they are.
fn decode_name(raw: &str) -> Result<String, McpError> {
    let Some(b64) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Ok(raw.to_owned());
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| McpError::HeaderBad(format!("Mcp-Name {raw:?} is not valid =?base64?…?=")))
}

// === Filtering answers ===

/// Decides whether a listed item is shown.
pub type Keep = Arc<dyn Fn(McpItem<'_>) -> bool + Send + Sync>;

/// Removes from a JSON-RPC answer to request `id` the items `keep` refuses; anything else
/// (another id, an error, a notification) is left alone. Returns how many were removed.
pub fn filter_answer(msg: &mut Value, id: &Value, listing: Listing, keep: &Keep) -> usize {
    if msg.get("id") != Some(id) {
        return 0;
    }
    let (list_key, name_key) = listing.keys();
    let Some(items) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut(list_key))
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let before = items.len();
    // An item without a readable name cannot be judged, so it is not shown.
    items.retain(|item| {
        item.get(name_key)
            .and_then(Value::as_str)
            .is_some_and(|n| keep(listing.item(n)))
    });
    before - items.len()
}

/// Filters one SSE event (without its terminating blank line). Events without data pass
/// as sent; a data event that is not JSON is dropped, since it could hide a list.
fn filter_event(event: &[u8], id: &Value, listing: Listing, keep: &Keep) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = Vec::new();
    let mut other = Vec::new();
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        } else {
            other.push(line);
        }
    }
    if data.is_empty() {
        return Some(event.to_vec());
    }
    let mut msg: Value = serde_json::from_str(&data.join("\n")).ok()?;
    if filter_answer(&mut msg, id, listing, keep) == 0 {
        return Some(event.to_vec());
    }
    let mut out = other.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&msg.to_string());
    Some(out.into_bytes())
}

/// Where the first event in `buf` ends: (end of the event, start of the next).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match &buf[i..] {
            [b'\n', b'\n', ..] => return Some((i, i + 2)),
            [b'\r', b'\n', b'\r', b'\n', ..] => return Some((i, i + 4)),
            _ => i += 1,
        }
    }
    None
}

/// The filtered SSE stream of a `*/list` answer: events are re-emitted one by one as they
/// complete. A stream whose pending event grows past `max` is ended (a list cannot be
/// judged unread).
pub fn filter_sse<S, E>(
    body: S,
    id: Value,
    listing: Listing,
    keep: Keep,
    max: usize,
) -> impl futures::Stream<Item = Result<Bytes, E>> + Send
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    struct State<S> {
        body: Pin<Box<S>>,
        buf: BytesMut,
        done: bool,
    }
    let state = State {
        body: Box::pin(body),
        buf: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut st| {
        let (id, keep) = (id.clone(), keep.clone());
        async move {
            loop {
                if let Some((end, next)) = event_end(&st.buf) {
                    let event = st.buf.split_to(next);
                    let mut out = match filter_event(&event[..end], &id, listing, &keep) {
                        Some(out) => out,
                        None => {
                            tracing::warn!(
                                "dropped an SSE event of an MCP list answer that is not JSON"
                            );
                            continue;
                        }
                    };
                    out.extend_from_slice(b"\n\n");
                    return Some((Ok(Bytes::from(out)), st));
                }
                if st.done {
                    if st.buf.is_empty() {
                        return None;
                    }
                    // A last event without its blank line.
                    let event = std::mem::take(&mut st.buf);
                    let out = filter_event(&event, &id, listing, &keep)?;
                    return Some((Ok(Bytes::from(out)), st));
                }
                if st.buf.len() > max {
                    tracing::warn!(
                        max,
                        "an MCP list answer's SSE event is over the limit; the stream is ended"
                    );
                    return None;
                }
                match futures::StreamExt::next(&mut st.body).await {
                    Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        st.done = true;
                        st.buf.clear();
                        return Some((Err(e), st));
                    }
                    None => st.done = true,
                }
            }
        }
    })
}

/// Whether a listed item would be allowed for this caller under `policy` (arguments
/// unknown, no user): what a `*/list` answer shows it.
pub fn keep(
    policy: std::sync::Arc<PolicyState>,
    peer: SpiffeId,
    me: SpiffeId,
    head: RequestHead,
) -> Keep {
    std::sync::Arc::new(move |item| {
        let call = McpCall {
            method: "list",
            item: Some(item),
            arguments: None,
            user: None,
        };
        head.decide(|http| policy.set.check_mcp(&peer, &me, http, &call).is_allowed())
    })
}

/// Filters a `*/list` answer: JSON read whole, SSE event by event. An answer that cannot be
/// read as either is refused (502, the error opening with `by`), since passing it would show
/// what the caller may not use; a failed (non-2xx) answer passes as sent.
pub async fn filter_list_response<B>(
    resp: Response<B>,
    listing: Listing,
    id: Value,
    keep: Keep,
    by: &str,
) -> Response<AnswerBody<B::Error>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let refuse = |why: String| {
        tracing::warn!(reason = %why, "an MCP list answer could not be filtered; refused");
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
    if resp.headers().contains_key(http::header::CONTENT_ENCODING) {
        return refuse("the server encoded its list answer, so it cannot be filtered".into());
    }
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sse = crate::jsonrpc::is_sse(resp.headers());
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if is_json(ct.as_deref()) {
        let bytes = match Limited::new(body, MAX_LIST_ANSWER).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return refuse(format!("the list answer could not be read: {e}")),
        };
        let mut msg: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return refuse(format!("the list answer is not JSON: {e}")),
        };
        filter_answer(&mut msg, &id, listing, &keep);
        let body = Full::new(Bytes::from(msg.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync();
        return Response::from_parts(parts, body);
    }
    if sse {
        let data = futures::StreamExt::filter_map(BodyStream::new(body), |f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        });
        let filtered = filter_sse(data, id, listing, keep, MAX_LIST_ANSWER);
        let frames = futures::StreamExt::map(filtered, |r| r.map(hyper::body::Frame::data));
        return Response::from_parts(parts, StreamBody::new(frames).boxed_unsync());
    }
    if !parts.status.is_success() {
        return Response::from_parts(parts, body.boxed_unsync());
    }
    refuse(format!(
        "the list answer is neither JSON nor SSE (content-type {:?})",
        ct.unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests;
