//! The inbound's MCP route: on a pair whose intention has MCP permissions, each POST's
//! JSON-RPC message is read whole (up to `[inbound] mcp_max_body_bytes`), checked, decided
//! per tool, resource and prompt, and forwarded only when allowed; `*/list` answers are
//! filtered on the way back. The reading, the refusals and the filtering are the SDK's
//! ([`agentmesh_sdk::mcp`]), which `RequireIntention` uses too, so an in-process service and
//! a sidecar answer alike; this module adds the access log, spans, user tokens and the
//! revocation of open answer streams.

use agentmesh_sdk::delegation::{CallUser, call_user};
use agentmesh_sdk::header_pairs;
use agentmesh_sdk::jsonrpc::{ReadError, Refusal, refuse_unread};
use agentmesh_sdk::mcp::{self, Kind, Message};
use agentmesh_sdk::{PolicyState, RequestHead, X509Context};
use bytes::Bytes;
use http_body_util::{BodyStream, StreamBody};
use serde_json::{Value, json};

use super::{AppBody, Inbound, InboundRecord};
use crate::http_util::{BoxBody, json_response, strip_hop_by_hop};
use crate::telemetry::{McpLog, span_identities};
use agentmesh_policy::HttpRequest;
use agentmesh_proto::limits::RequestBody;
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::{Span, attr};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the sidecar's refusals open with.
pub(super) const REFUSED_BY: &str = "agentmesh sidecar";

/// Re-decides one open stream's call against a new policy.
pub(super) type Recheck =
    Box<dyn Fn(&agentmesh_policy::PolicySet) -> agentmesh_policy::Decision + Send + Sync>;

/// One open streamed (SSE) answer to an allowed MCP or A2A call.
struct OpenStream {
    peer: String,
    /// `MCP` or `A2A`, for the log line.
    protocol: &'static str,
    recheck: Recheck,
    kill: tokio::sync::watch::Sender<bool>,
}

/// Every open streamed answer to an MCP call (a tool, resource or prompt) or an A2A call
/// (`SendStreamingMessage`, `SubscribeToTask`) on this worker, so that a policy change that
/// denies the call (or the user) ends its stream, even while the pair stays allowed and its
/// connection stays open.
#[derive(Default)]
pub(super) struct CallStreams {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, OpenStream>>,
}

impl std::fmt::Debug for CallStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStreams").finish_non_exhaustive()
    }
}

/// Removes a stream from [`CallStreams`] when its body is dropped.
pub(super) struct StreamGuard {
    streams: Arc<CallStreams>,
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

impl CallStreams {
    pub(super) fn register(
        self: &Arc<Self>,
        peer: String,
        protocol: &'static str,
        recheck: Recheck,
    ) -> (StreamGuard, tokio::sync::watch::Receiver<bool>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (kill, rx) = tokio::sync::watch::channel(false);
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            OpenStream {
                peer,
                protocol,
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
                let intention = d.intention_id.as_deref().unwrap_or("none");
                // One message per protocol, so a log search finds either by its words.
                if s.protocol == "A2A" {
                    tracing::info!(peer = %s.peer, intention, reason = %d.reason, "closing an A2A stream: an intention change denies its method");
                } else {
                    tracing::info!(peer = %s.peer, intention, reason = %d.reason, "closing an MCP stream: an intention change denies its call");
                }
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
    let (tool, resource, prompt) = msg.names();
    McpLog {
        mcp_method: msg.method.as_deref().unwrap_or("(response)"),
        mcp_tool: tool,
        mcp_resource: resource,
        mcp_prompt: prompt,
        user,
    }
}

impl Ctx<'_> {
    /// The caller's and this workload's SPIFFE IDs as text: what an MCP or A2A request's
    /// record and refusals borrow.
    pub(super) fn ids(&self) -> (String, String) {
        (self.peer.to_string(), self.own.svid.id.to_string())
    }
}

/// An MCP or A2A request [`Inbound::open`] read as a call.
pub(super) struct Opened<'a, C> {
    /// The policy it is decided under (taken before its body was read).
    pub policy: Arc<PolicyState>,
    /// Its access record, the intention still unset.
    pub record: InboundRecord<'a>,
    /// What its refusals name, the intention still unset.
    pub refusal: Refusal<'a>,
    /// The call.
    pub call: C,
    /// The body it was read from, forwarded as it came.
    pub bytes: Bytes,
}

impl Inbound {
    /// Opens an MCP or A2A request alike: names the span, takes the policy, begins the record
    /// and reads the call with `read` (the protocol's reading of the body); a request that
    /// cannot be read as one is refused here, logged and answered.
    pub(super) async fn open<'a, C, E: ReadError>(
        &self,
        ctx: &Ctx<'a>,
        (source, destination): &'a (String, String),
        span: &mut Span,
        read: impl Future<Output = Result<(C, Bytes), (E, Option<Value>)>>,
    ) -> Result<Opened<'a, C>, Response<BoxBody>> {
        if span.is_recording() {
            span_identities(
                span,
                destination,
                source,
                destination,
                source,
                "http",
                Some(ctx.addr),
            );
            span.set_str(attr::HTTP_METHOD, ctx.method);
            span.set_str(attr::URL_PATH, ctx.path);
        }
        let policy = self.policy.current();
        let record = InboundRecord {
            started: ctx.started,
            addr: ctx.addr,
            intention: None,
            source,
            destination,
            trace_id: ctx.trace_id,
            method: ctx.method,
            path: ctx.path,
            mcp: None,
            a2a: None,
        };
        let refusal = Refusal {
            by: REFUSED_BY,
            intention: None,
            source,
            destination,
            trace_id: ctx.trace_id,
        };
        let read = read.await;
        match refuse_unread(read, &policy.set, ctx.peer, &ctx.own.svid.id, refusal) {
            Ok((call, bytes)) => Ok(Opened {
                policy,
                record,
                refusal,
                call,
                bytes,
            }),
            Err(unread) => {
                let record = InboundRecord {
                    intention: unread.intention.as_deref(),
                    ..record
                };
                self.metrics.decided("inbound", source, false);
                record.log(span, "deny", &unread.reason, unread.status.as_u16());
                Err(json_response(unread.status, &unread.body))
            }
        }
    }

    pub(super) async fn mcp_request(
        &self,
        req: Request<RequestBody>,
        ctx: Ctx<'_>,
        mut span: Span,
    ) -> Response<BoxBody> {
        let ids = ctx.ids();
        let (mut parts, body) = req.into_parts();
        let read = mcp::read_message(&parts.headers, body, self.mcp_max_body);
        let Opened {
            policy,
            mut record,
            mut refusal,
            call: msg,
            bytes,
        } = match self.open(&ctx, &ids, &mut span, read).await {
            Ok(opened) => opened,
            Err(refused) => return refused,
        };
        let source = &ids.0;
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
        user.explain(&mut d);
        record.intention = d.intention_id.as_deref();
        refusal.intention = record.intention;
        record.mcp = Some(mcp_log(&msg, user.claims.as_ref().map(|c| c.sub.as_str())));
        self.metrics.decided("inbound", source, d.is_allowed());
        if !d.is_allowed() {
            let (status, body) = mcp::denied(msg.id.as_ref(), &d.reason, &refusal);
            record.log(&mut span, "deny", &d.reason, status.as_u16());
            return json_response(status, &body);
        }
        let listing = match (&msg.kind, &msg.id) {
            (Kind::List(l), Some(id)) => Some((*l, id.clone())),
            _ => None,
        };
        if listing.is_some() {
            // An encoded answer could not be read to filter it.
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let head = RequestHead::new(ctx.method, ctx.path, &parts.headers);
        let keep = listing.as_ref().map(|_| {
            mcp::keep(
                policy.clone(),
                ctx.peer.clone(),
                ctx.own.svid.id.clone(),
                head.clone(),
            )
        });
        let req: Request<AppBody> = Request::from_parts(parts, Either::Right(Full::new(bytes)));
        match self
            .forward_call(req, &ctx, &mut span, &record, &d.reason)
            .await
        {
            Ok(resp) => {
                match (listing, keep) {
                    (Some((listing, id)), Some(keep)) => {
                        mcp::filter_list_response(resp, listing, id, keep, REFUSED_BY).await
                    }
                    // Only calls (not housekeeping) are re-decided should their answer stream.
                    _ if msg.item().is_some() && agentmesh_sdk::jsonrpc::is_sse(resp.headers()) => {
                        let recheck = recheck_mcp(
                            head,
                            ctx.peer,
                            ctx.own,
                            &msg,
                            user.claims.as_ref().map(|c| c.raw.clone()),
                        );
                        let (guard, kill) =
                            self.call_streams.register(source.clone(), "MCP", recheck);
                        revocable(resp, guard, kill)
                    }
                    _ => resp.map(|b| b.boxed_unsync()),
                }
            }
            Err(answered) => answered,
        }
    }

    /// Sends an admitted MCP or A2A call on to the app. `Ok` is the app's answer, its
    /// hop-by-hop headers stripped and the allow logged with `reason`; `Err` is the answer
    /// already logged when the path cannot be forwarded (400) or the app is unreachable (502).
    pub(super) async fn forward_call(
        &self,
        mut req: Request<AppBody>,
        ctx: &Ctx<'_>,
        span: &mut Span,
        record: &InboundRecord<'_>,
        reason: &str,
    ) -> Result<Response<hyper::body::Incoming>, Response<BoxBody>> {
        if !self.address_to_app(&mut req, ctx.peer, ctx.own, span) {
            record.log(span, "allow", "the request path cannot be forwarded", 400);
            return Err(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad request path"}),
            ));
        }
        match self.app_client.request(req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                record.log(span, "allow", reason, resp.status().as_u16());
                Ok(resp)
            }
            Err(e) => {
                let why = format!("the app at {} is unreachable: {e}", self.app);
                record.log(span, "allow", &why, 502);
                Err(json_response(
                    StatusCode::BAD_GATEWAY,
                    &json!({"error": why, "trace_id": ctx.trace_id}),
                ))
            }
        }
    }

    /// The user behind a call: its user token and delegation chain verified with this
    /// sidecar's SVID, if `[inbound] user_token_issuer` is set.
    pub(super) fn user(
        &self,
        headers: &http::HeaderMap,
        peer: &SpiffeId,
        own: &X509Context,
    ) -> CallUser {
        call_user(
            headers,
            peer,
            self.user_tokens.as_ref().map(|cfg| (own, cfg)),
        )
    }
}

/// Re-decides `msg` (with the same request head and user) against a later policy.
fn recheck_mcp(
    head: RequestHead,
    peer: &SpiffeId,
    own: &X509Context,
    msg: &Message,
    user: Option<serde_json::Map<String, Value>>,
) -> Recheck {
    let msg = msg.clone();
    let (peer, own) = (peer.clone(), own.svid.id.clone());
    Box::new(move |policy| {
        head.decide(|http| policy.check_mcp(&peer, &own, http, &msg.call(user.as_ref())))
    })
}

/// A streamed answer that ends when `kill` fires (its call was revoked); `guard` keeps it
/// registered until the body is dropped.
pub(super) fn revocable(
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
    Response::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}
