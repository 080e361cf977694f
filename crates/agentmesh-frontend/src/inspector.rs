//! The Security Inspector (`/inspector`): the mesh as the control plane sees it, the
//! intentions and a "can X call Y?" form answered by the server, every decision the sidecars
//! make as it happens, and one page per `/ask` with its trace, user token, delegation chain
//! and signature checks.
//!
//! Sources: the server's and the node's admin sockets ([`mesh`]), each sidecar's admin
//! `/decisions` feed ([`feed`]), and what the frontend itself saw of each ask
//! ([`requests`]). Only a logged-in administrator sees any of it (every dev login; an OIDC
//! user whose id_token's `admin_claim` holds one of `admin_values`), and a request page
//! only the administrator who asked. The page works without its script; with it,
//! countdowns tick and decisions appear live (Server-Sent Events).
//!
//! Routes (all `GET`): `/inspector`, `/inspector/check?source=&destination=&method=&path=`,
//! `/inspector/decisions/stream?after=N` (`text/event-stream`), `/inspector/requests/{trace}`.

pub mod feed;
pub mod graph;
pub mod mesh;
pub mod requests;
pub mod timeline;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;

use agentmesh_proto::v1::CheckIntentionRequest;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};

use crate::config::{ExternalConfig, InspectorConfig};
use crate::{Frontend, page};
use feed::DecisionLog;
use mesh::{IntentionNames, MeshSources};

/// How many decisions the main page shows before the live ones.
const SHOWN: usize = 100;
/// The longest check-form field accepted.
const MAX_FIELD: usize = 512;

/// Errors of this module: handlers answer with pages; the enum keeps the module's shape
/// uniform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectorError {
    /// A form field too long to be a name or a path.
    #[error("{0} is longer than {MAX_FIELD} characters")]
    FieldTooLong(&'static str),
}

/// The inspector's state.
#[derive(Debug)]
pub struct Inspector {
    sources: MeshSources,
    /// Every decision followed.
    pub decisions: Arc<DecisionLog>,
    feeds: Vec<String>,
    externals: Vec<ExternalConfig>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inspector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inspector {
    /// Starts following every configured sidecar's decisions.
    pub fn start(cfg: &InspectorConfig) -> Self {
        let sources = MeshSources {
            server: cfg.server_admin_socket.clone(),
            node: cfg.node_admin_socket.clone(),
        };
        let decisions = Arc::new(DecisionLog::default());
        let names = Arc::new(IntentionNames::new(sources.clone()));
        let tasks = cfg
            .proxy
            .iter()
            .map(|p| {
                tokio::spawn(feed::follow(
                    p.name.clone(),
                    p.admin.clone(),
                    decisions.clone(),
                    names.clone(),
                ))
            })
            .collect();
        Self {
            sources,
            decisions,
            feeds: cfg.proxy.iter().map(|p| p.name.clone()).collect(),
            externals: cfg.external.clone(),
            tasks,
        }
    }
}

fn not_configured() -> Response {
    page::html(
        StatusCode::NOT_FOUND,
        &page::error(
            "inspector",
            "the Security Inspector is not configured: add [inspector] to the frontend config",
        ),
    )
}

/// Who may see the inspector: a logged-in administrator (every dev login; an OIDC user whose
/// id_token's `admin_claim` holds one of `admin_values`).
enum Access {
    /// Not logged in.
    Anonymous,
    /// Logged in, not an administrator.
    NotAdmin(String),
    /// An administrator.
    Admin(crate::token::User),
}

fn access(fe: &Frontend, headers: &HeaderMap) -> Access {
    match fe.session(headers) {
        None => Access::Anonymous,
        Some((user, true)) => Access::Admin(user),
        Some((user, false)) => Access::NotAdmin(user.sub),
    }
}

const NOT_ADMIN: &str = "the Security Inspector is for administrators, and this login is not \
                         one: the frontend's [oidc] admin_claim and admin_values name who is";

fn forbidden(sub: &str) -> Response {
    tracing::warn!(%sub, "inspector refused: not an administrator");
    page::html(StatusCode::FORBIDDEN, &page::error("inspector", NOT_ADMIN))
}

/// The page's user when an administrator, else the refusal to send.
fn admin_page(fe: &Frontend, headers: &HeaderMap) -> Result<crate::token::User, Box<Response>> {
    match access(fe, headers) {
        Access::Anonymous => Err(Box::new(login_first())),
        Access::NotAdmin(sub) => Err(Box::new(forbidden(&sub))),
        Access::Admin(user) => Ok(user),
    }
}

fn login_first() -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/login")
        .body(Body::empty())
        .unwrap_or_default()
}

/// The main page, optionally with a check's answer.
async fn render(
    fe: &Frontend,
    ins: &Inspector,
    user_sub: &str,
    check: view::CheckForm,
) -> Response {
    let mesh = ins.sources.view().await;
    // One read of the log for both the table and the graph's counters, so the counters
    // cover exactly the decisions up to the table's `data-after`, where the script takes
    // over.
    let all = ins.decisions.all();
    let decisions: Vec<_> = all.iter().rev().take(SHOWN).cloned().collect();
    let counts = graph::counts(all.iter().map(|d| &**d));
    let graph = graph::Graph::build(&mesh, &ins.externals, &counts);
    let asks = fe.requests.of(user_sub);
    page::html(
        StatusCode::OK,
        &view::inspector(&mesh, &graph, &check, &decisions, &asks, &ins.feeds),
    )
}

/// `GET /inspector`.
pub async fn index(State(fe): State<Arc<Frontend>>, headers: HeaderMap) -> Response {
    let Some(ins) = &fe.inspector else {
        return not_configured();
    };
    let user = match admin_page(&fe, &headers) {
        Ok(user) => user,
        Err(refusal) => return *refusal,
    };
    render(&fe, ins, &user.sub, view::CheckForm::default()).await
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn field(q: &HashMap<String, String>, name: &'static str) -> Result<String, InspectorError> {
    let v = q.get(name).map(|s| s.trim().to_owned()).unwrap_or_default();
    if v.len() > MAX_FIELD {
        return Err(InspectorError::FieldTooLong(name));
    }
    Ok(v)
}

/// `GET /inspector/check`: the server's answer for one call, as `intention check` prints it.
pub async fn check(
    State(fe): State<Arc<Frontend>>,
    headers: HeaderMap,
    uri: http::Uri,
) -> Response {
    let q = query(&uri);
    let Some(ins) = &fe.inspector else {
        return not_configured();
    };
    let user = match admin_page(&fe, &headers) {
        Ok(user) => user,
        Err(refusal) => return *refusal,
    };
    let mut form = view::CheckForm::default();
    let fields = (|| {
        Ok::<_, InspectorError>((
            field(&q, "source")?,
            field(&q, "destination")?,
            field(&q, "method")?,
            field(&q, "path")?,
        ))
    })();
    form.result = Some(match fields {
        Err(e) => Err(e.to_string()),
        Ok((source, destination, method, path)) => {
            form.source = source.clone();
            form.destination = destination.clone();
            form.method = method.clone();
            form.path = path.clone();
            if source.is_empty() || destination.is_empty() {
                Err("a source and a destination are required".to_owned())
            } else if !method.is_empty() && path.is_empty() {
                Err("a method needs a path (or leave both empty for the connection)".to_owned())
            } else {
                ins.sources
                    .check(CheckIntentionRequest {
                        source,
                        destination,
                        method: method.to_ascii_uppercase(),
                        path,
                        headers: Vec::new(),
                    })
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    render(&fe, ins, &user.sub, form).await
}

/// `GET /inspector/decisions/stream`: Server-Sent Events, one `data:` JSON decision each,
/// after `?after=N` or the `Last-Event-ID` the browser sends when it reconnects.
pub async fn stream(
    State(fe): State<Arc<Frontend>>,
    headers: HeaderMap,
    uri: http::Uri,
) -> Response {
    let q = query(&uri);
    let Some(ins) = &fe.inspector else {
        return not_configured();
    };
    let refused = |status: StatusCode, reason: &str| {
        Response::builder()
            .status(status)
            .body(Body::from(format!("{reason}\n")))
            .unwrap_or_default()
    };
    match access(&fe, &headers) {
        Access::Anonymous => return refused(StatusCode::UNAUTHORIZED, "not logged in"),
        Access::NotAdmin(sub) => {
            tracing::warn!(%sub, "inspector stream refused: not an administrator");
            return refused(StatusCode::FORBIDDEN, NOT_ADMIN);
        }
        Access::Admin(_) => {}
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.get("after").map(String::as_str))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (catch_up, live) = ins.decisions.since(after);
    let event = |d: &feed::Decision| -> Result<Bytes, std::convert::Infallible> {
        Ok(Bytes::from(format!(
            "id: {}\ndata: {}\n\n",
            d.id,
            serde_json::to_string(d).unwrap_or_default()
        )))
    };
    let head = futures::stream::iter(
        std::iter::once(Ok(Bytes::from_static(b"retry: 2000\n\n")))
            .chain(catch_up.iter().map(|d| event(d)))
            .collect::<Vec<_>>(),
    );
    let tail = futures::stream::unfold(live, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(d) => return Some((event(&d), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(futures::StreamExt::chain(head, tail)))
        .unwrap_or_default()
}

/// `GET /inspector/requests/{trace}`: one ask, for the user who asked it.
pub async fn request(
    State(fe): State<Arc<Frontend>>,
    headers: HeaderMap,
    Path(trace_id): Path<String>,
) -> Response {
    let Some(ins) = &fe.inspector else {
        return not_configured();
    };
    let user = match admin_page(&fe, &headers) {
        Ok(user) => user,
        Err(refusal) => return *refusal,
    };
    let Some(record) = fe.requests.get(&trace_id, &user.sub) else {
        return page::html(
            StatusCode::NOT_FOUND,
            &page::error(
                "request",
                "no request of yours with this trace id (the frontend keeps the last 256 asks)",
            ),
        );
    };
    let hops = ins.decisions.for_trace(&trace_id);
    page::html(StatusCode::OK, &view::request(&record, &hops))
}
