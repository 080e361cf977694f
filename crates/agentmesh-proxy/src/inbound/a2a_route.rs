//! The inbound's A2A route: on a pair whose intention has A2A permissions, each POST's
//! JSON-RPC request is read whole (up to `[inbound] a2a_max_body_bytes`), checked, decided per
//! method, and forwarded only when allowed; a `GetExtendedAgentCard` answer is filtered on
//! the way back to the skills the caller's methods allow. The reading, the refusals and the
//! filtering are the SDK's ([`agentmesh_sdk::a2a`]), which `RequireIntention` uses too. The
//! user token travels as on MCP routes (`x-agentmesh-user-token`), and is verified only for
//! permissions with `user`.
//!
//! The streamed answers of `SendStreamingMessage` and `SubscribeToTask` are re-decided on
//! every policy change, and end when a change denies their method (or their user), even while
//! the pair stays allowed.

use agentmesh_policy::{A2aCall, HttpRequest};
use agentmesh_proto::limits::RequestBody;
use agentmesh_sdk::a2a;
use agentmesh_sdk::{RequestHead, header_pairs};
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::Span;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use serde_json::{Map, Value};

use super::mcp_route::{Ctx, Opened, REFUSED_BY, Recheck, revocable};
use super::{AppBody, Inbound};
use crate::http_util::{BoxBody, json_response};
use crate::telemetry::A2aLog;

impl Inbound {
    pub(super) async fn a2a_request(
        &self,
        req: Request<RequestBody>,
        ctx: Ctx<'_>,
        mut span: Span,
    ) -> Response<BoxBody> {
        let ids = ctx.ids();
        let (mut parts, body) = req.into_parts();
        let read = a2a::read_request(&parts.headers, body, self.a2a_max_body);
        let Opened {
            policy,
            mut record,
            mut refusal,
            call,
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
        let mut d = policy.set.check_a2a(
            ctx.peer,
            &ctx.own.svid.id,
            &http,
            &A2aCall {
                method: &call.method,
                user: user.claims.as_ref().map(|c| &c.raw),
            },
        );
        drop(headers);
        user.explain(&mut d);
        record.intention = d.intention_id.as_deref();
        refusal.intention = record.intention;
        record.a2a = Some(A2aLog {
            a2a_method: &call.method,
            user: user.claims.as_ref().map(|c| c.sub.as_str()),
        });
        self.metrics.decided("inbound", source, d.is_allowed());
        if !d.is_allowed() {
            let (status, body) = a2a::denied(&call.id, &d.reason, &refusal);
            record.log(&mut span, "deny", &d.reason, status.as_u16());
            return json_response(status, &body);
        }
        let card = call.method == "GetExtendedAgentCard";
        if card {
            // An encoded answer could not be read to filter it.
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
        let head = RequestHead::new(ctx.method, ctx.path, &parts.headers);
        let claims = user.claims.as_ref().map(|c| c.raw.clone());
        let allowed = card.then(|| {
            a2a::allowed(
                policy.clone(),
                ctx.peer.clone(),
                ctx.own.svid.id.clone(),
                head.clone(),
                claims.clone(),
            )
        });
        let req: Request<AppBody> = Request::from_parts(parts, Either::Right(Full::new(bytes)));
        match self
            .forward_call(req, &ctx, &mut span, &record, &d.reason)
            .await
        {
            Ok(resp) => match allowed {
                Some(allowed) => {
                    a2a::filter_card_response(resp, call.id, allowed, REFUSED_BY).await
                }
                None if a2a::is_streaming(&call.method)
                    && agentmesh_sdk::jsonrpc::is_sse(resp.headers()) =>
                {
                    let recheck = recheck_a2a(
                        head,
                        ctx.peer.clone(),
                        ctx.own.svid.id.clone(),
                        call.method,
                        claims,
                    );
                    let (guard, kill) = self.call_streams.register(source.clone(), "A2A", recheck);
                    revocable(resp, guard, kill)
                }
                None => resp.map(|b| b.boxed_unsync()),
            },
            Err(answered) => answered,
        }
    }
}

/// Re-decides an A2A call (with the same request head and user) against a later policy.
fn recheck_a2a(
    head: RequestHead,
    peer: SpiffeId,
    own: SpiffeId,
    method: String,
    user: Option<Map<String, Value>>,
) -> Recheck {
    Box::new(move |policy| {
        let call = A2aCall {
            method: &method,
            user: user.as_ref(),
        };
        head.decide(|http| policy.check_a2a(&peer, &own, http, &call))
    })
}
