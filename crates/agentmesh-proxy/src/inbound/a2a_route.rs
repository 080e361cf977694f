//! The inbound's A2A route: on a pair whose intention has A2A permissions, each POST's
//! JSON-RPC request is read whole (up to `[inbound] a2a_max_body_bytes`), checked, decided per
//! method, and forwarded only when allowed; a `GetExtendedAgentCard` answer is filtered on
//! the way back to the skills the caller's methods allow.
//!
//! A refused call is answered by the sidecar as JSON-RPC with HTTP 200 and the request's id,
//! so an A2A client hands the caller the error's message (which names the intention) instead
//! of a bare HTTP status. Requests that cannot be answered as one (not JSON, too large, a
//! batch, no id) get a 4xx with a JSON-RPC error body. The user token travels as on MCP
//! routes (`x-agentmesh-user-token`), and is verified only for permissions with `user`.

use std::sync::Arc;

use agentmesh_policy::{A2aCall, HttpRequest};
use agentmesh_proto::limits::RequestBody;
use agentmesh_sdk::header_pairs;
use agentmesh_spiffe::SpiffeId;
use agentmesh_telemetry::{Span, attr};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::{Value, json};

use super::mcp_route::Ctx;
use super::{AppBody, Inbound, InboundRecord};
use crate::a2a::{self, A2aError, Allowed};
use crate::http_util::{BoxBody, json_response, strip_hop_by_hop};
use crate::jsonrpc::error_body;
use crate::telemetry::{A2aLog, span_identities};

/// The largest extended card answer that is filtered (4 MiB); a larger one is refused with
/// 502 rather than passed unread.
const MAX_CARD_ANSWER: usize = 4 * 1024 * 1024;

impl Inbound {
    pub(super) async fn a2a_request(
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
        let read =
            match crate::jsonrpc::read_json_body(&parts.headers, body, self.a2a_max_body).await {
                Ok(bytes) => a2a::Request::parse(&bytes).map(|r| (r, bytes)),
                Err(e) => Err((A2aError::from(e), None)),
            };
        let (call, bytes) = match read {
            Ok(read) => read,
            Err((e, id)) => {
                // Refused before any permission: named with the pair's intention, which
                // admitted the connection, so an operator sees which rule's route it was.
                let pair = policy.set.check_connection(ctx.peer, &ctx.own.svid.id);
                record.intention = pair.intention_id.as_deref();
                let reason =
                    format!("the A2A request is refused before any permission is checked: {e}");
                let (status, code) = e.status_and_code();
                self.metrics.decided("inbound", &source, false);
                record.log(&mut span, "deny", &reason, status.as_u16());
                let message = format!("agentmesh sidecar: {e}");
                return json_response(
                    status,
                    &error_body(id.as_ref(), code, &message, data(record.intention, &reason)),
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
        if !d.is_allowed()
            && let Some(why) = &user.refused
        {
            d.reason
                .push_str(&format!(" (the user token was not accepted: {why})"));
        }
        record.intention = d.intention_id.as_deref();
        record.a2a = Some(A2aLog {
            a2a_method: &call.method,
            user: user.claims.as_ref().map(|c| c.sub.as_str()),
        });
        self.metrics.decided("inbound", &source, d.is_allowed());
        if !d.is_allowed() {
            record.log(&mut span, "deny", &d.reason, StatusCode::OK.as_u16());
            return json_response(
                StatusCode::OK,
                &error_body(
                    Some(&call.id),
                    a2a::DENIED,
                    &format!("denied by intentions: {}", d.reason),
                    data(record.intention, &d.reason),
                ),
            );
        }
        let card = call.method == "GetExtendedAgentCard";
        let allowed = card.then(|| self.allowed_methods(&parts.headers, &ctx, &user));
        if card {
            // An encoded answer could not be read to filter it.
            parts.headers.remove(http::header::ACCEPT_ENCODING);
        }
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
                match allowed {
                    Some(allowed) => filter_card_response(resp, call.id, allowed).await,
                    None => resp.map(|b| b.boxed()),
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

    /// Whether this caller (with this request head and user) may call each A2A method, for
    /// filtering its extended card.
    fn allowed_methods(
        &self,
        headers: &http::HeaderMap,
        ctx: &Ctx<'_>,
        user: &super::mcp_route::User,
    ) -> Allowed {
        let policy = self.policy.current();
        let (peer, own): (SpiffeId, SpiffeId) = (ctx.peer.clone(), ctx.own.svid.id.clone());
        let (method, path) = (ctx.method.to_owned(), ctx.path.to_owned());
        let owned: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let claims = user.claims.as_ref().map(|c| c.raw.clone());
        Arc::new(move |a2a_method| {
            let headers: Vec<(&str, &[u8])> = owned
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let http = HttpRequest {
                method: &method,
                path: &path,
                headers: &headers,
            };
            let call = A2aCall {
                method: a2a_method,
                user: claims.as_ref(),
            };
            policy.set.check_a2a(&peer, &own, &http, &call).is_allowed()
        })
    }
}

/// Filters a `GetExtendedAgentCard` answer. An answer that cannot be read as JSON is refused
/// (502), since passing it would show skills the caller may not use; a failed (non-2xx)
/// answer passes as sent.
async fn filter_card_response(
    resp: Response<hyper::body::Incoming>,
    id: Value,
    allowed: Allowed,
) -> Response<BoxBody> {
    let refuse = |why: String| {
        tracing::warn!(reason = %why, "an A2A extended card answer could not be filtered; refused");
        json_response(
            StatusCode::BAD_GATEWAY,
            &error_body(
                Some(&id),
                a2a::INVALID_REQUEST,
                &format!("agentmesh sidecar: {why}"),
                Value::Null,
            ),
        )
    };
    if !resp.status().is_success() {
        return resp.map(|b| b.boxed());
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
    match a2a::filter_card_answer(&bytes, &id, &allowed) {
        Ok(filtered) => {
            let body = Full::new(bytes::Bytes::from(filtered))
                .map_err(|never| match never {})
                .boxed();
            Response::from_parts(parts, body)
        }
        Err(why) => refuse(why),
    }
}
