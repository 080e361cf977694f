//! The inbound's MCP route: on a pair whose intention has MCP permissions, each POST's
//! JSON-RPC message is read whole (up to `[inbound] mcp_max_body_bytes`), checked, decided
//! per tool, resource and prompt, and forwarded only when allowed; `*/list` answers are
//! filtered on the way back.
//!
//! A refused call is answered by the sidecar as JSON-RPC, with HTTP 200 and the request's
//! id: the MCP SDKs hand such an error to the caller as the call's result and keep the
//! session, where a 4xx makes some of them drop the whole transport. Messages that cannot be
//! answered as a request (not JSON, too large, a batch, no id, a header that disagrees with
//! the body) get a 4xx with a JSON-RPC error body.

use agentmesh_sdk::header_pairs;
use http_body_util::{BodyStream, Limited, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use super::{AppBody, Inbound, InboundRecord};
use crate::http_util::{BoxBody, json_response, strip_hop_by_hop};
use crate::mcp::{self, Keep, Kind, Listing, McpError, Message};
use crate::telemetry::{McpLog, span_identities};
use agentmesh_policy::{HttpRequest, McpCall};
use agentmesh_proto::limits::RequestBody;
use agentmesh_sdk::X509Context;
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::{Span, attr};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The largest `*/list` answer that is filtered (32 MiB); a thousand tools with their
/// schemas are about 1 MiB. A larger answer is refused with 502 rather than passed unread.
const MAX_LIST_ANSWER: usize = 32 * 1024 * 1024;

/// Where the mesh's user token travels on MCP routes. Not `Authorization`, which belongs to
/// the MCP server's own OAuth (the MCP authorization spec) and passes through untouched; the
/// delegation links travel in `x-agentmesh-delegation`, as on every other route.
pub const USER_TOKEN_HEADER: &str = "x-agentmesh-user-token";

/// `[inbound] user_token_issuer` and `user_token_audience`.
#[derive(Debug, Clone)]
pub(super) struct UserTokens {
    pub issuer: String,
    pub audience: Option<String>,
}

/// The user behind a call: the verified claims, or why there are none.
pub(super) struct User {
    pub(super) claims: Option<agentmesh_sdk::UserClaims>,
    pub(super) refused: Option<String>,
}

/// Re-decides one open MCP stream's call against a new policy.
type Recheck =
    Box<dyn Fn(&agentmesh_policy::PolicySet) -> agentmesh_policy::Decision + Send + Sync>;

/// One open streamed (SSE) answer to an allowed MCP call.
struct OpenStream {
    peer: String,
    recheck: Recheck,
    kill: tokio::sync::watch::Sender<bool>,
}

/// Every open streamed answer to an MCP call on this worker, so that a policy change that
/// denies the call (a tool, resource or prompt; or the user) ends its stream, even while the
/// pair stays allowed and its connection stays open.
#[derive(Default)]
pub(super) struct McpStreams {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, OpenStream>>,
}

impl std::fmt::Debug for McpStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpStreams").finish_non_exhaustive()
    }
}

/// Removes a stream from [`McpStreams`] when its body is dropped.
struct StreamGuard {
    streams: Arc<McpStreams>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl McpStreams {
    fn register(
        self: &Arc<Self>,
        peer: String,
        recheck: Recheck,
    ) -> (StreamGuard, tokio::sync::watch::Receiver<bool>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (kill, rx) = tokio::sync::watch::channel(false);
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            OpenStream {
                peer,
                recheck,
                kill,
            },
        );
        (
            StreamGuard {
                streams: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Ends every open stream whose call `policy` now denies. Returns how many.
    pub(super) fn revoke_denied(
        &self,
        policy: &agentmesh_policy::PolicySet,
        metrics: &crate::telemetry::Metrics,
    ) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for s in open.values() {
            if *s.kill.borrow() {
                continue;
            }
            let d = (s.recheck)(policy);
            if !d.is_allowed() {
                tracing::info!(peer = %s.peer, intention = d.intention_id.as_deref().unwrap_or("none"), reason = %d.reason, "closing an MCP stream: an intention change denies its call");
                metrics.revoked(&s.peer);
                s.kill.send_replace(true);
                closed += 1;
            }
        }
        closed
    }
}

/// What the request path already knows about the request.
pub(super) struct Ctx<'a> {
    pub started: Instant,
    pub addr: SocketAddr,
    pub peer: &'a SpiffeId,
    pub own: &'a X509Context,
    pub trace_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

fn mcp_log<'a>(msg: &'a Message, user: Option<&'a str>) -> McpLog<'a> {
    let (mut tool, mut resource, mut prompt) = (None, None, None);
    match &msg.kind {
        Kind::Tool { name, .. } => tool = Some(name.as_str()),
        Kind::Resource(u) => resource = Some(u.as_str()),
        Kind::Prompt(n) => prompt = Some(n.as_str()),
        _ => {}
    }
    McpLog {
        mcp_method: msg.method.as_deref().unwrap_or("(response)"),
        mcp_tool: tool,
        mcp_resource: resource,
        mcp_prompt: prompt,
        user,
    }
}

impl Inbound {
    pub(super) async fn mcp_request(
        &self,
        req: Request<RequestBody>,
        ctx: Ctx<'_>,
        mut span: Span,
    ) -> Response<BoxBody> {
        let (source, destination) = (ctx.peer.to_string(), ctx.own.svid.id.to_string());
        if span.is_recording() {
            span_identities(
                &mut span,
                &destination,
                &source,
                &destination,
                &source,
                "http",
                Some(ctx.addr),
            );
            span.set_str(attr::HTTP_METHOD, ctx.method);
            span.set_str(attr::URL_PATH, ctx.path);
        }
        let policy = self.policy.current();
        let mut record = InboundRecord {
            started: ctx.started,
            addr: ctx.addr,
            intention: None,
            source: &source,
            destination: &destination,
            trace_id: ctx.trace_id,
            method: ctx.method,
            path: ctx.path,
            mcp: None,
            a2a: None,
        };
        let data = |intention: Option<&str>, reason: &str| {
            json!({
                "intention": intention,
                "reason": reason,
                "source": source,
                "destination": destination,
                "trace_id": ctx.trace_id,
            })
        };
        let (mut parts, body) = req.into_parts();
        let (msg, bytes) = match self.read_message(&parts.headers, body).await {
            Ok(read) => read,
            Err((e, id)) => {
                // Refused before any permission: named with the pair's intention, which
                // admitted the connection, so an operator sees which rule's route it was.
                let pair = policy.set.check_connection(ctx.peer, &ctx.own.svid.id);
                record.intention = pair.intention_id.as_deref();
                let reason =
                    format!("the MCP message is refused before any permission is checked: {e}");
                let (status, code) = e.status_and_code();
                self.metrics.decided("inbound", &source, false);
                record.log(&mut span, "deny", &reason, status.as_u16());
                let message = format!("agentmesh sidecar: {e}");
                return json_response(
                    status,
                    &mcp::error_body(id.as_ref(), code, &message, data(record.intention, &reason)),
                );
            }
        };
        let user = self.user(&parts.headers, ctx.peer, ctx.own);
        let headers = header_pairs(&parts.headers);
        let http = HttpRequest {
            method: ctx.method,
            path: ctx.path,
            headers: &headers,
        };
        let mut d = policy.set.check_mcp(
            ctx.peer,
            &ctx.own.svid.id,
            &http,
            &msg.call(user.claims.as_ref().map(|c| &c.raw)),
        );
        drop(headers);
        if !d.is_allowed()
            && let Some(why) = &user.refused
        {
            d.reason
                .push_str(&format!(" (the user token was not accepted: {why})"));
        }
        record.intention = d.intention_id.as_deref();
        record.mcp = Some(mcp_log(&msg, user.claims.as_ref().map(|c| c.sub.as_str())));
        self.metrics.decided("inbound", &source, d.is_allowed());
        if !d.is_allowed() {
            // A notification has no id to answer, so its refusal is a plain 403.
            let status = if msg.id.is_some() {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            record.log(&mut span, "deny", &d.reason, status.as_u16());
            return json_response(
                status,
                &mcp::error_body(
                    msg.id.as_ref(),
                    mcp::DENIED,
                    &format!("denied by intentions: {}", d.reason),
                    data(record.intention, &d.reason),
                ),
            );
        }
        let listing = match (&msg.kind, &msg.id) {
            (Kind::List(l), Some(id)) => Some((*l, id.clone())),
            _ => None,
        };
        if listing.is_some() {
            // An encoded answer could not be read to filter it.
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let keep = listing
            .as_ref()
            .map(|_| self.keep(&parts.headers, ctx.peer, ctx.own, ctx.method, ctx.path));
        // What a later policy change re-decides a call on, should its answer stream; only
        // calls (not housekeeping) are copied.
        let head = msg.item().is_some().then(|| Head {
            method: ctx.method.to_owned(),
            path: ctx.path.to_owned(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        });
        let mut req: Request<AppBody> = Request::from_parts(parts, Either::Right(Full::new(bytes)));
        if !self.address_to_app(&mut req, ctx.peer, ctx.own, &span) {
            record.log(
                &mut span,
                "allow",
                "the request path cannot be forwarded",
                400,
            );
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad request path"}),
            );
        }
        match self.app_client.request(req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                record.log(&mut span, "allow", &d.reason, resp.status().as_u16());
                match (listing, keep, head) {
                    (Some((listing, id)), Some(keep), _) => {
                        filter_response(resp, listing, id, keep).await
                    }
                    (_, _, Some(head)) if is_sse(resp.headers()) => {
                        let recheck = self.recheck(
                            head,
                            ctx.peer,
                            ctx.own,
                            &msg,
                            user.claims.as_ref().map(|c| c.raw.clone()),
                        );
                        let (guard, kill) = self.mcp_streams.register(source.clone(), recheck);
                        revocable(resp, guard, kill)
                    }
                    _ => resp.map(|b| b.boxed()),
                }
            }
            Err(e) => {
                let why = format!("the app at {} is unreachable: {e}", self.app);
                record.log(&mut span, "allow", &why, 502);
                json_response(
                    StatusCode::BAD_GATEWAY,
                    &json!({"error": why, "trace_id": ctx.trace_id}),
                )
            }
        }
    }

    /// Verifies the user token and delegation chain a call carries, with the verified caller
    /// as the chain's last hop, as the agents and the gateway do. No single-use check: one
    /// question's token rightly drives several tool calls of one MCP session.
    pub(super) fn user(
        &self,
        headers: &http::HeaderMap,
        peer: &SpiffeId,
        own: &X509Context,
    ) -> User {
        let none = |refused: Option<String>| User {
            claims: None,
            refused,
        };
        let Some(token) = headers.get(USER_TOKEN_HEADER) else {
            return none(None);
        };
        let Some(cfg) = &self.user_tokens else {
            return none(Some(
                "this sidecar verifies no user tokens ([inbound] user_token_issuer is not set)"
                    .into(),
            ));
        };
        let td = own.svid.id.trust_domain();
        let issuer = match SpiffeId::from_service_name(td, &cfg.issuer) {
            Ok(id) => id,
            Err(e) => return none(Some(format!("user_token_issuer {:?}: {e}", cfg.issuer))),
        };
        let mut config = agentmesh_sdk::delegation::ChainConfig::new(
            own.bundle.as_ref().clone(),
            issuer,
            cfg.audience.clone().unwrap_or_else(|| td.to_string()),
        );
        config.me = Some(own.svid.id.clone());
        let links = headers
            .get(agentmesh_sdk::delegation::DELEGATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Ok(token) = token.to_str() else {
            return none(Some("the user token header is not ASCII".into()));
        };
        match agentmesh_sdk::delegation::verify_chain(
            token,
            links,
            &config,
            Some(peer),
            std::time::SystemTime::now(),
        ) {
            Ok(chain) => User {
                claims: Some(chain.user),
                refused: None,
            },
            Err(e) => none(Some(e.to_string())),
        }
    }

    /// Reads and checks one message; on error, the request's id when it was readable.
    async fn read_message(
        &self,
        headers: &http::HeaderMap,
        body: RequestBody,
    ) -> Result<(Message, bytes::Bytes), (McpError, Option<Value>)> {
        use crate::jsonrpc::BodyError;
        let bytes = crate::jsonrpc::read_json_body(headers, body, self.mcp_max_body)
            .await
            .map_err(|e| {
                let e = match e {
                    BodyError::NotJson(ct) => McpError::NotJson(ct),
                    BodyError::TooLarge(max) => McpError::TooLarge(max),
                    BodyError::Read(why) => McpError::Read(why),
                };
                (e, None)
            })?;
        let msg = Message::parse(&bytes).map_err(|e| (e, None))?;
        msg.check_headers(headers)
            .map_err(|e| (e, msg.id.clone()))?;
        Ok((msg, bytes))
    }

    /// Re-decides `msg` (with the same request head and user) against a later policy.
    fn recheck(
        &self,
        head: Head,
        peer: &SpiffeId,
        own: &X509Context,
        msg: &Message,
        user: Option<serde_json::Map<String, Value>>,
    ) -> Recheck {
        let msg = msg.clone();
        let (peer, own) = (peer.clone(), own.svid.id.clone());
        Box::new(move |policy| {
            let headers: Vec<(&str, &[u8])> = head
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let http = HttpRequest {
                method: &head.method,
                path: &head.path,
                headers: &headers,
            };
            policy.check_mcp(&peer, &own, &http, &msg.call(user.as_ref()))
        })
    }

    /// Whether a listed item would be allowed for this caller (arguments unknown).
    fn keep(
        &self,
        headers: &http::HeaderMap,
        peer: &SpiffeId,
        own: &X509Context,
        method: &str,
        path: &str,
    ) -> Keep {
        let policy = self.policy.current();
        let (peer, own) = (peer.clone(), own.svid.id.clone());
        let (method, path) = (method.to_owned(), path.to_owned());
        let owned: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        Arc::new(move |item| {
            let headers: Vec<(&str, &[u8])> = owned
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let http = HttpRequest {
                method: &method,
                path: &path,
                headers: &headers,
            };
            let call = McpCall {
                method: "list",
                item: Some(item),
                arguments: None,
                user: None,
            };
            policy.set.check_mcp(&peer, &own, &http, &call).is_allowed()
        })
    }
}

/// An owned copy of a request's head, for deciding it again later.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A streamed answer that ends when `kill` fires (its call was revoked); `guard` keeps it
/// registered until the body is dropped.
fn revocable(
    resp: Response<hyper::body::Incoming>,
    guard: StreamGuard,
    mut kill: tokio::sync::watch::Receiver<bool>,
) -> Response<BoxBody> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let killed = async move {
        let _ = kill.wait_for(|k| *k).await;
    };
    let frames = futures::StreamExt::take_until(BodyStream::new(body), Box::pin(killed));
    let frames = futures::StreamExt::map(frames, move |f| {
        // Moved in, so the stream stays registered exactly as long as the body lives.
        let _registered = &guard;
        f
    });
    Response::from_parts(parts, StreamBody::new(frames).boxed())
}

/// Filters a `*/list` answer: JSON read whole, SSE event by event. An answer that cannot be
/// read as either is refused (502), since passing it would show what the caller may not use.
async fn filter_response(
    resp: Response<hyper::body::Incoming>,
    listing: Listing,
    id: Value,
    keep: Keep,
) -> Response<BoxBody> {
    let refuse = |why: String| {
        tracing::warn!(reason = %why, "an MCP list answer could not be filtered; refused");
        json_response(
            StatusCode::BAD_GATEWAY,
            &mcp::error_body(
                Some(&id),
                mcp::INVALID_REQUEST,
                &format!("agentmesh sidecar: {why}"),
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
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if mcp::is_json(ct.as_deref()) {
        let bytes = match Limited::new(body, MAX_LIST_ANSWER).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return refuse(format!("the list answer could not be read: {e}")),
        };
        let mut msg: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return refuse(format!("the list answer is not JSON: {e}")),
        };
        mcp::filter_answer(&mut msg, &id, listing, &keep);
        let body = Full::new(bytes::Bytes::from(msg.to_string()))
            .map_err(|never| match never {})
            .boxed();
        return Response::from_parts(parts, body);
    }
    let sse = ct.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    });
    if sse {
        let data = futures::StreamExt::filter_map(BodyStream::new(body), |f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        });
        let filtered = mcp::filter_sse(data, id, listing, keep, MAX_LIST_ANSWER);
        let frames = futures::StreamExt::map(filtered, |r| r.map(Frame::data));
        return Response::from_parts(parts, StreamBody::new(frames).boxed());
    }
    if !parts.status.is_success() {
        return Response::from_parts(parts, body.boxed());
    }
    refuse(format!(
        "the list answer is neither JSON nor SSE (content-type {:?})",
        ct.unwrap_or_default()
    ))
}
