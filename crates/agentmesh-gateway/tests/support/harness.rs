//! Test harness shared by the provider tests: a scripted loopback HTTP server standing in for
//! a provider (it records every request and answers from a script), and the gateway's router
//! driven in-process with a verified caller and a captured audit log.
// Each test binary uses a different part of this file.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use agentmesh_gateway::{AuditSink, Gateway, GatewayConfig, XFCC};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use serde_json::Value;
use tower::ServiceExt;

/// What the fake provider answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status and a body, sent as `application/json`.
    Json(u16, String),
    /// Nothing, ever: the request is read and the answer never comes.
    Hang,
    /// The inner reply, once the gate reads true: lets a test hold calls in flight.
    Gated(tokio::sync::watch::Receiver<bool>, Box<Reply>),
}

/// A request the fake provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Seen {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the gateway sent JSON")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Script {
    replies: VecDeque<Reply>,
    /// Answers once the script runs out.
    last: Reply,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Script>>,
}

/// A fake provider on 127.0.0.1.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Shared,
}

impl FakeProvider {
    /// Answers with `replies` in order, then repeats the last one.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let last = replies.last().cloned().expect("at least one reply");
        let shared = Shared {
            seen: Arc::default(),
            script: Arc::new(Mutex::new(Script {
                replies: replies.into(),
                last,
            })),
        };
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake provider");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared }
    }

    /// What it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests it received.
    pub fn requests(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }
}

async fn answer(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body,
    });
    let reply = {
        let mut script = s.script.lock().unwrap();
        let last = script.last.clone();
        script.replies.pop_front().unwrap_or(last)
    };
    let mut reply = reply;
    while let Reply::Gated(mut gate, inner) = reply {
        let _ = gate.wait_for(|open| *open).await;
        reply = *inner;
    }
    match reply {
        Reply::Json(status, body) => Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap(),
        Reply::Hang | Reply::Gated(..) => std::future::pending().await,
    }
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// The gateway's router in-process, as its proxy would call it.
pub struct TestGateway {
    /// The gateway itself, for its budget accounting.
    pub gateway: Arc<Gateway>,
    router: Router,
    audit: Arc<Mutex<Vec<u8>>>,
    /// The loaded config (for checking what `Debug` shows).
    pub config_debug: String,
}

/// The caller the gateway's proxy vouches for in these tests.
pub const CALLER: &str = "spiffe://agentmesh.local/ns/default/sa/executor";

impl TestGateway {
    /// A gateway with `providers_and_models` (TOML `[[provider]]` and `[[model]]` tables)
    /// that lets every caller use every model; API keys are read from `env` only.
    pub fn new(providers_and_models: &str, env: &[(&str, &str)]) -> Self {
        Self::with_callers(
            providers_and_models,
            "[[caller]]\nid = \"*\"\nmodels = [\"*\"]\n",
            env,
        )
    }

    /// A gateway with `providers_and_models` and the `[[caller]]` tables `callers`.
    pub fn with_callers(providers_and_models: &str, callers: &str, env: &[(&str, &str)]) -> Self {
        // A socket path that is never bound: the harness serves the router itself, and a
        // unix listen is what makes the gateway trust the XFCC its proxy would add.
        let text = format!(
            "listen = \"unix:///nonexistent/gateway.sock\"\n{providers_and_models}\n{callers}"
        );
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let cfg = GatewayConfig::parse_with_env(&text, Path::new("gateway.toml"), &env)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let config_debug = format!("{cfg:?}");
        let audit: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = {
            let audit = audit.clone();
            AuditSink::new(move |line| audit.lock().unwrap().extend_from_slice(line))
        };
        let gateway = Arc::new(Gateway::with_audit(cfg, sink).expect("gateway"));
        Self {
            router: gateway.clone().router(),
            gateway,
            audit,
            config_debug,
        }
    }

    /// POSTs `body` to `path` as the verified caller; the status and the JSON answer (the
    /// last JSON line, for NDJSON).
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                XFCC,
                format!("By=spiffe://agentmesh.local/ns/default/sa/gateway;URI={CALLER}"),
            )
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let json = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        (status, json)
    }

    /// POSTs `body` to `path` as the verified caller; the status and the body as text (for
    /// SSE and NDJSON streams).
    pub async fn post_text(&self, path: &str, body: Value) -> (StatusCode, String) {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                XFCC,
                format!("By=spiffe://agentmesh.local/ns/default/sa/gateway;URI={CALLER}"),
            )
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The audit lines so far.
    pub fn audit(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit log as written.
    pub fn audit_text(&self) -> String {
        String::from_utf8(self.audit.lock().unwrap().clone()).unwrap()
    }
}

/// A published transcript from `tests/transcripts/` (see its README for the sources).
pub struct Transcript {
    /// The documented request body.
    pub request: Value,
    /// The documented response body, byte for byte.
    pub response: String,
}

impl Transcript {
    /// Loads `tests/transcripts/{name}.request.json` and `.response.json`.
    pub fn load(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
        let read = |suffix: &str| {
            let path = dir.join(format!("{name}.{suffix}.json"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let request = serde_json::from_str(&read("request")).expect("request is JSON");
        let response = read("response");
        let _: Value = serde_json::from_str(&response).expect("response is JSON");
        Self { request, response }
    }
}
