//! The admin listener: `/metrics` (Prometheus text) and `/healthz`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::IdentityWatch;
use crate::policy::PolicyWatch;
use crate::telemetry::Metrics;

/// What the admin listener reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// For health: an SVID must be present.
    pub identity: Arc<IdentityWatch>,
    /// For health: a policy must have arrived.
    pub policy: Arc<PolicyWatch>,
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

impl AdminState {
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" => {
                let id = self.identity.current();
                let policy = self.policy.current();
                match (id, policy.received) {
                    (Some(id), true) => respond(
                        StatusCode::OK,
                        "text/plain",
                        format!(
                            "ok {} serial={} expires_unix={} policy_revision={}\n",
                            id.id,
                            id.serial,
                            id.not_after
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                            policy.revision
                        ),
                    ),
                    (None, _) => respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "no SVID yet\n".into(),
                    ),
                    (_, false) => respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "no intentions received yet; everything is denied\n".into(),
                    ),
                }
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics or /healthz\n".into(),
            ),
        }
    }

    /// Serves until `stop` fires.
    pub async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        while let Some((tcp, _)) = crate::accept(&listener, &mut stop).await {
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = me.handle(&req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }
}
