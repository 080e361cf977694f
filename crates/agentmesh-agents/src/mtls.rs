//! An agent without a sidecar (as in research-team): its SVID from the node's Workload API, its own mTLS
//! listener, the intentions from the node's policy relay enforced per request by the SDK's
//! [`RequireIntention`], and a plain loopback admin listener with what a sidecar's admin
//! offers (`/healthz`, `/decisions`) plus `/probe/NAME/PATH` for `agentmesh up`'s self-check.
//!
//! Decisions are written as access-log lines on stdout, in the sidecar's shape, and published
//! to the process's live feed, so the inspector follows an in-process agent like a proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_sdk::{DecisionRecord, PolicyWatch, Registration, RequireIntention};
use agentmesh_sdk::{SpiffeId, X509Source};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;

use crate::config::{AgentConfig, MtlsConfig};

/// How long the agent waits for its first SVID: `agentmesh up` registers the process just
/// after starting it, and a node may take a moment to mint.
const FIRST_SVID_PATIENCE: Duration = Duration::from_secs(60);

/// Why the in-process mTLS side cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MtlsError {
    /// No SVID from the Workload API.
    #[error("no SVID from the node: {0}")]
    Source(#[from] agentmesh_sdk::SourceError),
    /// An upstream's `spiffe_id` does not parse (config validation normally catches it).
    #[error("upstream {0}: {1}")]
    Upstream(String, String),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// The running mTLS side of an agent.
pub(crate) struct MtlsSide {
    /// Our identity and trust bundle, rotating.
    pub source: Arc<X509Source>,
    /// The intentions, followed on the node.
    pub policy: Arc<PolicyWatch>,
    /// Our SPIFFE ID.
    pub me: SpiffeId,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for MtlsSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsSide")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl MtlsSide {
    /// Connects to the node and starts following the intentions, registering `advertise`.
    pub async fn connect(m: &MtlsConfig, advertise: String) -> Result<Self, MtlsError> {
        let socket = m.socket().unwrap_or_else(|| unreachable!("validated"));
        let source = X509Source::connect(socket, FIRST_SVID_PATIENCE).await?;
        let me = source.current().svid.id.clone();
        let policy = PolicyWatch::new();
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(policy.clone().run(
            socket.to_owned(),
            me.trust_domain().clone(),
            Some(Registration {
                spiffe_id: me.to_string(),
                address: advertise,
            }),
            stop_rx,
        ));
        tracing::info!(spiffe_id = %me, "in-process mTLS: no sidecar, intentions enforced here");
        Ok(Self {
            source,
            policy,
            me,
            stop,
        })
    }

    /// One pinned mTLS client per upstream.
    pub fn pin_upstreams(
        &self,
        cfg: &AgentConfig,
        upstreams: &mut crate::client::Upstreams,
    ) -> Result<(), MtlsError> {
        for u in &cfg.upstreams {
            let id = u
                .spiffe_id
                .as_deref()
                .unwrap_or_default()
                .parse::<SpiffeId>()
                .map_err(|e| MtlsError::Upstream(u.name.clone(), e.to_string()))?;
            upstreams.pin(
                &u.name,
                agentmesh_sdk::MtlsClient::pinned(self.source.clone(), id),
            );
        }
        Ok(())
    }

    /// `router` behind the intentions, with every decision logged and published.
    pub fn guard(&self, router: Router) -> Router {
        router.layer(
            RequireIntention::new(self.policy.clone(), self.me.clone())
                .with_sink(Arc::new(log_decision)),
        )
    }

    /// Stops following the policy.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// One decision as a sidecar's access-log line (stdout) and on the live feed.
pub(crate) fn log_decision(d: &DecisionRecord) {
    let mut line = serde_json::json!({
        "ts": agentmesh_telemetry::clock::now_rfc3339(),
    });
    if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
        (line.as_object_mut(), serde_json::to_value(d))
    {
        obj.extend(fields);
    }
    let text = line.to_string();
    agentmesh_telemetry::decisions::publish(text.as_bytes());
    println!("{text}");
}

/// What the admin listener needs.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub agent: Arc<crate::Agent>,
    pub source: Arc<X509Source>,
    pub policy: Arc<PolicyWatch>,
}

/// `/healthz`, `/decisions` and, with `probe` (a Unix socket admin, this uid only),
/// `/probe/NAME/PATH`.
pub(crate) fn admin_router(state: AdminState, probe: bool) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/decisions", get(decisions));
    let router = if probe {
        router.route("/probe/{name}/{*path}", post(probe_upstream))
    } else {
        router
    };
    router.with_state(state)
}

/// 200 once there is an SVID and a policy, like a sidecar's admin.
async fn healthz(State(s): State<AdminState>) -> Response {
    let policy = s.policy.current();
    if !policy.received {
        return (StatusCode::SERVICE_UNAVAILABLE, "no policy yet\n").into_response();
    }
    let ctx = s.source.current();
    let expires = ctx
        .svid
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        StatusCode::OK,
        format!(
            "ok {} serial={} expires_unix={expires} policy_revision={}\n",
            ctx.svid.id, ctx.svid.serial, policy.revision
        ),
    )
        .into_response()
}

/// The live decision feed, as a sidecar's admin serves it.
async fn decisions(uri: http::Uri) -> Response {
    match agentmesh_telemetry::decisions::parse_after(uri.query()) {
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Ok(after) => {
            let lines = futures::StreamExt::map(
                agentmesh_telemetry::decisions::stream_after(after),
                Ok::<_, std::convert::Infallible>,
            );
            (
                [
                    (http::header::CONTENT_TYPE, "application/x-ndjson"),
                    (http::header::CACHE_CONTROL, "no-store"),
                ],
                Body::from_stream(lines),
            )
                .into_response()
        }
    }
}

/// POSTs the body to upstream `name` at `/PATH` over mTLS and answers what it answered: the
/// self-check of `agentmesh up` asks an in-process agent to make a call it expects refused.
async fn probe_upstream(
    State(s): State<AdminState>,
    Path((name, path)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(up) = s.agent.cfg.upstreams.iter().find(|u| u.name == name) else {
        let body = serde_json::json!({"error": format!("no upstream called {name:?}")});
        return crate::json_response(StatusCode::NOT_FOUND, &body);
    };
    match s
        .agent
        .upstreams
        .forward(up, &format!("/{path}"), body)
        .await
    {
        Ok((status, bytes)) => (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => crate::json_response(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}
