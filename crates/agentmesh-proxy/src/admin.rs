//! The admin listener: `/metrics` (Prometheus text), `/healthz`, and `/decisions`: every
//! decision this proxy makes, live, as NDJSON (the access log's objects, numbered with
//! `seq`; `?after=N` skips what a reconnecting reader already has). The listener is for
//! operators and the inspector on the same host, so bind it to loopback.

use std::sync::Arc;

use agentmesh_proto::limits::{ConnectionLimiter, ListenerLimits, RequestBody};
use agentmesh_sdk::LocalListener;
use agentmesh_sdk::X509Source;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use tokio::sync::watch;

use crate::policy::PolicyWatch;
use crate::telemetry::Metrics;

/// What the admin listener reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// For health: the SVID in use (one is always present once the proxy has started).
    pub identity: Arc<X509Source>,
    /// For health: a policy must have arrived.
    pub policy: Arc<PolicyWatch>,
}

type AdminBody = BoxBody<Bytes, std::convert::Infallible>;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

impl AdminState {
    fn handle(&self, req: &Request<RequestBody>) -> Response<AdminBody> {
        self.route(req.uri())
    }

    fn route(&self, uri: &http::Uri) -> Response<AdminBody> {
        match uri.path() {
            "/decisions" => match agentmesh_telemetry::decisions::parse_after(uri.query()) {
                Ok(n) => decisions(n),
                Err(e) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            },
            "/metrics" => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" => {
                let id = self.identity.current();
                let policy = self.policy.current();
                if policy.received {
                    respond(
                        StatusCode::OK,
                        "text/plain",
                        format!(
                            "ok {} serial={} expires_unix={} policy_revision={}\n",
                            id.svid.id,
                            id.svid.serial,
                            id.svid
                                .not_after
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            policy.revision
                        ),
                    )
                } else {
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "no intentions received yet; everything is denied\n".into(),
                    )
                }
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics, /healthz or /decisions\n".into(),
            ),
        }
    }

    /// Serves until `stop` fires, with `limits` (the caller is the peer's uid on a Unix
    /// socket, its address on TCP).
    pub async fn serve(
        self,
        listener: LocalListener,
        limits: Arc<ListenerLimits>,
        mut stop: watch::Receiver<bool>,
    ) {
        let limiter = ConnectionLimiter::new(&limits);
        while let Some((tcp, addr)) = crate::accept_local(&listener, &mut stop).await {
            let caller = crate::local_caller(&addr);
            let on_cut = self.metrics.on_cut("admin", addr);
            let slot = match limiter.admit_caller(caller) {
                Ok(slot) => slot,
                Err(cut) => {
                    on_cut(cut);
                    continue;
                }
            };
            let me = self.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<RequestBody>| {
                    let resp = me.handle(&req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                agentmesh_proto::limits::serve_http(
                    tcp,
                    service,
                    limits,
                    on_cut,
                    std::future::pending(),
                )
                .await;
                drop(slot);
            });
        }
    }
}

/// The live decision stream: what the feed still holds after `after`, then each new line.
fn decisions(after: u64) -> Response<AdminBody> {
    use hyper::body::Frame;
    let lines = futures::StreamExt::map(agentmesh_telemetry::decisions::stream_after(after), |l| {
        Ok::<_, std::convert::Infallible>(Frame::data(l))
    });
    let mut r = Response::new(StreamBody::new(lines).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::default()),
            identity: agentmesh_sdk::testing::TestCa::new("example.org")
                .source("spiffe://example.org/ns/default/sa/api"),
            policy: PolicyWatch::new(),
        }
    }

    #[tokio::test]
    async fn healthz_waits_for_intentions_before_showing_the_svid() {
        let admin = state();
        let resp = admin.route(&"/healthz".parse().unwrap());
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("no intentions received yet"));
    }

    #[tokio::test]
    async fn decisions_stream_numbered_lines_and_refuse_a_bad_cursor() {
        let admin = state();
        let bad = admin.route(&"/decisions?after=yesterday".parse().unwrap());
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let body = bad.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("after= must be a decision number"));

        let seq = agentmesh_telemetry::decisions::publish(br#"{"decision":"deny"}"#);
        let ok = admin.route(&format!("/decisions?after={}", seq - 1).parse().unwrap());
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[http::header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        let mut body = ok.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            first,
            Bytes::from(format!("{{\"seq\":{seq},\"decision\":\"deny\"}}\n"))
        );
    }
}
