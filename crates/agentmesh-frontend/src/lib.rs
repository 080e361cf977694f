//! The frontend: the entry point for humans, where a user logs in and asks the mesh.
//!
//! It logs people in with OIDC (authorization code + PKCE, any issuer found by discovery) or,
//! with no issuer configured, with a "dev login" that only binds to loopback. It then speaks
//! for the user inside the mesh with a short-lived user token: an ES256 JWT signed with the
//! frontend's own SVID key, whose keys it publishes as a JWKS. `/ask` forwards a
//! question from the page to the entry agent with that token.
//!
//! Routes:
//! - `GET /` the page: login link, or the question form and the last answer;
//! - `GET /login` redirect to the issuer (or the dev login form), `POST /login` dev login;
//! - `GET /callback` the issuer's redirect back; `POST /logout`;
//! - `GET /token` the logged-in user's token as JSON (for CLIs and tests);
//! - `POST /ask` `{"question"}` (JSON) or `question=` (form) to the entry upstream;
//! - `GET /.well-known/jwks.json` and `GET /debug/jwks` (the same keys at the path
//!   verifiers were first pointed at); `GET /healthz`;
//! - `GET /inspector…` the Security Inspector, for administrators only.
//!
//! Every request passes the guard first: the `Host` allow-list (DNS rebinding) and, on
//! state-changing requests, the same-origin check (CSRF).
//!
//! Not an identity provider: people are vouched for by the OIDC issuer, and the user token
//! only carries that into the mesh. Not an enforcer either: agents verify the token, and
//! intentions are the proxies'.
#![forbid(unsafe_code)]

mod config;
mod guard;
mod http;
mod identity;
mod inspector;
mod oidc;
mod page;
mod session;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

pub use config::{
    AuthMethod, ConfigError, ExternalConfig, FrontendConfig, InspectorConfig, OidcConfig,
    ProxyFeedConfig, UpstreamConfig,
};
pub use identity::{IdentityError, Keys, SigningKey};
pub use oidc::OidcError;

use crate::http::HttpClient;
use crate::session::{Pending, Sessions};
use crate::token::User;

/// The session cookie: a random id naming a server-side session.
pub const SESSION_COOKIE: &str = "am_session";
/// The login cookie: binds a login's `state` to the browser that started it.
pub const LOGIN_COOKIE: &str = "am_login";
/// How long a started login may take.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Why the frontend could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// Dev login on a non-loopback address.
    #[error(
        "refusing to serve the dev login on {0}: without [oidc] the frontend binds only to \
         loopback (127.0.0.0/8 or ::1); configure an issuer or listen on 127.0.0.1"
    )]
    DevLoginNotLoopback(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SVID cannot sign user tokens.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// No SVID from the Workload API.
    #[error(transparent)]
    Source(#[from] agentmesh_sdk::SourceError),
    /// The issuer could not be discovered.
    #[error("OIDC issuer: {0}")]
    Oidc(#[from] OidcError),
    /// The HTTP client could not be built (a bug in the crypto setup).
    #[error("cannot set up TLS for the issuer: {0}")]
    Tls(#[from] rustls::Error),
}

/// A random id (128 bits, base64url): session ids, `jti`.
pub(crate) fn random_id() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .unwrap_or_else(|_| panic!("BUG: the system RNG failed"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Frontend {
    cfg: FrontendConfig,
    keys: Arc<Keys>,
    oidc: Option<oidc::Client>,
    http: HttpClient,
    sessions: Sessions,
    secure_cookies: bool,
    inspector: Option<inspector::Inspector>,
    requests: inspector::requests::Requests,
    allowed: guard::Allowed,
}

impl Frontend {
    /// A frontend with its signing keys and (unless dev login) a discovered issuer.
    ///
    /// # Errors
    /// [`FrontendError`] if the issuer cannot be discovered.
    pub async fn new(cfg: FrontendConfig, keys: Arc<Keys>) -> Result<Arc<Self>, FrontendError> {
        let http = HttpClient::new()?;
        let oidc = match &cfg.oidc {
            Some(o) => Some(
                oidc::Client::discover(
                    o.clone(),
                    http.clone(),
                    format!("{}/callback", cfg.public_url()),
                )
                .await?,
            ),
            None => None,
        };
        let secure_cookies = cfg.public_url().starts_with("https://");
        let inspector = cfg.inspector.as_ref().map(inspector::Inspector::start);
        let allowed = guard::Allowed::new(cfg.public_url.as_deref(), cfg.listen);
        Ok(Arc::new(Self {
            cfg,
            keys,
            oidc,
            http,
            sessions: Sessions::default(),
            secure_cookies,
            inspector,
            requests: Default::default(),
            allowed,
        }))
    }

    /// The routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/login", get(login).post(dev_login))
            .route("/callback", get(callback))
            .route("/logout", post(logout))
            .route("/token", get(user_token))
            .route("/ask", post(ask))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/debug/jwks", get(jwks))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/static/style.css", get(page::stylesheet))
            .route("/static/inspector.js", get(page::inspector_script))
            .route("/inspector", get(inspector::index))
            .route("/inspector/check", get(inspector::check))
            .route("/inspector/decisions/stream", get(inspector::stream))
            .route("/inspector/requests/{trace}", get(inspector::request))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::check,
            ))
            .layer(axum::middleware::map_response(page::security_headers))
            .with_state(self.clone())
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if self.secure_cookies {
            c.push_str("; Secure");
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn session_user(&self, headers: &HeaderMap) -> Option<User> {
        self.session(headers).map(|(user, _)| user)
    }

    /// The session's user and whether they may use the Security Inspector.
    fn session(&self, headers: &HeaderMap) -> Option<(User, bool)> {
        let id = session::cookie(headers, SESSION_COOKIE)?;
        self.sessions.get(&id)
    }

    /// Records the port the listener is bound to, for the `Host` and `Origin` checks.
    pub fn bound_to(&self, addr: SocketAddr) {
        self.allowed.bound_to(addr.port());
    }

    fn audience(&self, key: &SigningKey) -> String {
        self.cfg
            .audience
            .clone()
            .unwrap_or_else(|| key.id.trust_domain().to_string())
    }

    fn mint(&self, user: &User) -> Result<token::Minted, String> {
        let key = self
            .keys
            .current()
            .ok_or_else(|| "the frontend has no SVID yet".to_owned())?;
        let minted = token::mint(&key, user, &self.audience(&key), SystemTime::now())
            .map_err(|e| e.to_string())?;
        tracing::info!(sub = %user.sub, jti = %minted.jti, kid = %key.kid, "user token minted");
        Ok(minted)
    }

    /// Keeps what the request page shows of one ask: the token and the chain the answer
    /// says the request reached its last agent with, each element verified here.
    fn record(
        &self,
        user: &User,
        question: &str,
        token: &str,
        trace_id: &str,
        status: StatusCode,
        answer: &Value,
    ) {
        let chain = match self.keys.current() {
            Some(key) => {
                let roots = key.roots.iter().map(|r| r.clone().into()).collect();
                let config = agentmesh_sdk::delegation::ChainConfig::new(
                    roots,
                    key.id.clone(),
                    self.audience(&key),
                );
                let links: Vec<String> = answer["delegation"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                inspector::requests::check_chain(token, &links, &config, SystemTime::now())
            }
            None => Vec::new(),
        };
        self.requests.push(inspector::requests::AskRecord {
            trace_id: trace_id.to_owned(),
            at: SystemTime::now(),
            sub: user.sub.clone(),
            question: question.to_owned(),
            status: status.as_u16(),
            answer: answer.clone(),
            chain,
        });
    }
}

/// One refusal: the status, a page with the reason, and a log line with it.
fn refuse(status: StatusCode, what: &str, reason: &str) -> Response {
    tracing::warn!(%reason, "{what} refused");
    page::html(status, &page::error(what, reason))
}

fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .body(Body::empty())
        .unwrap_or_default()
}

// === handlers ===

async fn index(State(fe): State<Arc<Frontend>>, headers: HeaderMap) -> Response {
    let session = fe.session(&headers);
    let admin = session.as_ref().is_some_and(|(_, admin)| *admin);
    page::html(
        StatusCode::OK,
        &page::index(
            session.as_ref().map(|(user, _)| user),
            fe.oidc.is_none(),
            fe.inspector.is_some() && admin,
            None,
        ),
    )
}

async fn login(State(fe): State<Arc<Frontend>>) -> Response {
    let Some(client) = &fe.oidc else {
        return page::html(StatusCode::OK, &page::dev_login());
    };
    let pending = Pending::new();
    let url = client.authorize_url(&pending.state, &pending.nonce, &pending.verifier);
    let cookie = fe.cookie(LOGIN_COOKIE, &pending.state, Some(LOGIN_TTL));
    fe.sessions.start_login(pending);
    let mut resp = redirect(&url);
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn dev_login(State(fe): State<Arc<Frontend>>, body: Bytes) -> Response {
    if fe.oidc.is_some() {
        return refuse(
            StatusCode::NOT_FOUND,
            "dev login",
            "the dev login is off: this frontend logs in with OIDC",
        );
    }
    let f = form(&body);
    let name = f.get("name").map(|s| s.trim()).unwrap_or("");
    if name.is_empty() || name.len() > 100 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "dev login",
            "a name of 1 to 100 characters is required",
        );
    }
    let email = f
        .get("email")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let groups = match token::dev_groups(f.get("groups").map_or("", String::as_str)) {
        Ok(g) => g,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "dev login", &e),
    };
    let user = User {
        sub: format!("dev:{name}"),
        email,
        name: Some(name.to_owned()),
        idp: "dev".into(),
        groups,
    };
    tracing::warn!(sub = %user.sub, "DEV LOGIN: no identity provider checked this user; dev logins are administrators (Security Inspector)");
    // Loopback only and anyone may log in as anyone: nothing would be gained by withholding
    // the inspector from a dev login.
    let id = fe.sessions.create(user, true);
    let mut resp = redirect("/");
    resp.headers_mut().append(
        header::SET_COOKIE,
        fe.cookie(SESSION_COOKIE, &id, Some(SESSION_TTL)),
    );
    resp
}

async fn callback(
    State(fe): State<Arc<Frontend>>,
    headers: HeaderMap,
    uri: ::http::Uri,
) -> Response {
    let q = form(uri.query().unwrap_or("").as_bytes());
    let what = "login";
    let Some(client) = &fe.oidc else {
        return refuse(StatusCode::NOT_FOUND, what, "no OIDC issuer is configured");
    };
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").map_or("", String::as_str);
        return refuse(
            StatusCode::UNAUTHORIZED,
            what,
            &format!("the issuer refused: {err} {desc}"),
        );
    }
    let state = q.get("state").map_or("", String::as_str);
    let bound = session::cookie(&headers, LOGIN_COOKIE);
    // The state must be one we issued, to this browser, and unused: take it either way so a
    // state is good for one attempt only.
    let pending = fe.sessions.take_login(state);
    let Some(pending) = pending.filter(|_| bound.as_deref() == Some(state)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            what,
            "state mismatch: this callback does not belong to a login started by this browser",
        );
    };
    let Some(code) = q.get("code") else {
        return refuse(StatusCode::BAD_REQUEST, what, "the callback has no code");
    };
    let used = |n: &str| fe.sessions.nonce_used(n);
    let claims = match client
        .exchange(code, &pending.verifier, &pending.nonce, &used)
        .await
    {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, what, &e.to_string()),
    };
    if !fe.sessions.use_nonce(&claims.nonce, claims.exp) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            what,
            &oidc::IdTokenError::NonceReplayed.to_string(),
        );
    }
    let user = User {
        groups: token::groups_from_claim(claims.all.get("groups")),
        sub: claims.sub,
        email: claims.email,
        name: claims.name,
        idp: client.issuer().to_owned(),
    };
    let admin = client.config().grants_admin(&claims.all);
    tracing::info!(sub = %user.sub, issuer = %user.idp, admin, "user logged in");
    let id = fe.sessions.create(user, admin);
    let mut resp = redirect("/");
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        fe.cookie(SESSION_COOKIE, &id, Some(SESSION_TTL)),
    );
    h.append(
        header::SET_COOKIE,
        fe.cookie(LOGIN_COOKIE, "", Some(Duration::ZERO)),
    );
    resp
}

async fn logout(State(fe): State<Arc<Frontend>>, headers: HeaderMap) -> Response {
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        fe.sessions.remove(&id);
    }
    let mut resp = redirect("/");
    resp.headers_mut().append(
        header::SET_COOKIE,
        fe.cookie(SESSION_COOKIE, "", Some(Duration::ZERO)),
    );
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap_or_default()
}

async fn user_token(State(fe): State<Arc<Frontend>>, headers: HeaderMap) -> Response {
    let Some(user) = fe.session_user(&headers) else {
        tracing::warn!("token refused: not logged in");
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "not logged in"}));
    };
    match fe.mint(&user) {
        Ok(m) => json_response(
            StatusCode::OK,
            &json!({"token": m.token, "jti": m.jti, "exp": m.exp}),
        ),
        Err(e) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": e})),
    }
}

async fn jwks(State(fe): State<Arc<Frontend>>) -> Response {
    let mut resp = json_response(StatusCode::OK, &fe.keys.jwks());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    resp
}

async fn ask(State(fe): State<Arc<Frontend>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let Some((user, admin)) = fe.session(&headers) else {
        tracing::warn!("ask refused: not logged in");
        return if is_form {
            page::html(
                StatusCode::UNAUTHORIZED,
                &page::error("ask", "not logged in"),
            )
        } else {
            json_response(StatusCode::UNAUTHORIZED, &json!({"error": "not logged in"}))
        };
    };
    let question = if is_form {
        form(&body).remove("question")
    } else {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("question")?.as_str().map(str::to_owned))
    };
    let Some(question) = question.filter(|q| !q.trim().is_empty()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "a non-empty \"question\" is required"}),
        );
    };
    let (status, answer) = forward(&fe, &user, &question).await;
    if is_form {
        page::html(
            status,
            &page::index(
                Some(&user),
                fe.oidc.is_none(),
                fe.inspector.is_some() && admin,
                Some((&question, &answer)),
            ),
        )
    } else {
        json_response(status, &answer)
    }
}

/// Sends the question to the entry upstream with the user token and a new trace.
async fn forward(fe: &Frontend, user: &User, question: &str) -> (StatusCode, Value) {
    let Some(up) = fe.cfg.entry_upstream() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no [[upstream]] is configured for /ask"}),
        );
    };
    let minted = match fe.mint(user) {
        Ok(m) => m,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, json!({"error": e})),
    };
    let trace = agentmesh_telemetry::TraceContext::start();
    let (status, answer) = forward_with(fe, up, user, question, &minted, &trace).await;
    fe.record(
        user,
        question,
        &minted.token,
        &trace.trace_id_hex(),
        status,
        &answer,
    );
    (status, answer)
}

async fn forward_with(
    fe: &Frontend,
    up: &config::UpstreamConfig,
    user: &User,
    question: &str,
    minted: &token::Minted,
    trace: &agentmesh_telemetry::TraceContext,
) -> (StatusCode, Value) {
    let mut headers = vec![(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", minted.token)) {
        headers.push((header::AUTHORIZATION, v));
    }
    if let Ok(v) = HeaderValue::from_str(&trace.header()) {
        headers.push((
            ::http::HeaderName::from_static(agentmesh_telemetry::TRACEPARENT),
            v,
        ));
    }
    let url = format!("{}/ask", up.url.trim_end_matches('/'));
    let body = Bytes::from(json!({ "question": question }).to_string());
    tracing::info!(sub = %user.sub, jti = %minted.jti, upstream = %up.name, trace_id = %trace.trace_id_hex(), "ask");
    let sent = match up.url.parse::<agentmesh_sdk::LocalAddr>() {
        Ok(socket) if socket.is_unix() => {
            fe.http
                .send_local(&socket, Method::POST, "/ask", headers, body)
                .await
        }
        _ => fe.http.send(Method::POST, &url, headers, body).await,
    };
    match sent {
        Ok((status, bytes)) => {
            let answer = serde_json::from_slice(&bytes).unwrap_or_else(
                |_| json!({"error": "the upstream answered with something other than JSON", "status": status.as_u16()}),
            );
            let status = if status.is_success() {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            let mut answer = answer;
            if status == StatusCode::OK {
                let verified = verify_signatures(fe, &up.name, &answer);
                if let Some(obj) = answer.as_object_mut() {
                    obj.insert("verified".into(), verified);
                }
            }
            (status, answer)
        }
        Err(e) => {
            tracing::warn!(upstream = %up.name, error = %e, "ask failed");
            (
                StatusCode::BAD_GATEWAY,
                json!({"error": format!("upstream {}: {e}", up.name)}),
            )
        }
    }
}

/// Checks every agent's signature on an answer (`signatures`, see agentmesh-agents): each
/// JWS against the bundle with the signer the payload names, over this answer's SHA-256 or
/// over one of its `parts` that appears verbatim in it (an analyst's finding in the
/// orchestrator's report), and the first one from the entry agent itself. One `{"agent", "ok", "reason"?}` per signature;
/// an answer without signatures gets an empty list.
fn verify_signatures(fe: &Frontend, entry: &str, answer: &Value) -> Value {
    use base64::Engine as _;
    let Some(key) = fe.keys.current() else {
        return json!([]);
    };
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> =
        key.roots.iter().map(|r| r.clone().into()).collect();
    let text = answer["answer"].as_str().unwrap_or_default();
    let digest: String = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sha256_hex = |t: &str| -> String {
        ring::digest::digest(&ring::digest::SHA256, t.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let part_digests: Vec<String> = answer["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|p| !p.is_empty() && text.contains(*p))
        .map(sha256_hex)
        .collect();
    let entry_id = agentmesh_spiffe::SpiffeId::from_service_name(key.id.trust_domain(), entry).ok();
    let signatures = answer["signatures"].as_array().cloned().unwrap_or_default();
    let results: Vec<Value> = signatures
        .iter()
        .enumerate()
        .map(|(i, jws)| {
            let jws = jws.as_str().unwrap_or_default();
            // Who the payload says signed; the verification then proves it.
            let claimed = jws
                .split('.')
                .nth(1)
                .and_then(|p| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .ok()
                })
                .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
                .and_then(|p| p["agent"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let check = || -> Result<(), String> {
                let id: agentmesh_spiffe::SpiffeId = claimed
                    .parse()
                    .map_err(|e| format!("the payload names no valid signer: {e}"))?;
                if i == 0 && entry_id.as_ref().is_some_and(|e| *e != id) {
                    return Err(format!(
                        "the first signature is not the entry agent's ({entry})"
                    ));
                }
                let v = agentmesh_sdk::jws::verify(jws, &roots, &id, SystemTime::now())
                    .map_err(|e| e.to_string())?;
                let payload: Value = serde_json::from_slice(&v.payload)
                    .map_err(|e| format!("the payload is not JSON: {e}"))?;
                let signed = payload["answer_sha256"].as_str().unwrap_or_default();
                let first = i == 0;
                // The entry agent vouches for the whole answer; the others for it or for
                // their part of it.
                if signed != digest && (first || !part_digests.iter().any(|d| d == signed)) {
                    return Err("it signed a different answer".into());
                }
                Ok(())
            };
            match check() {
                Ok(()) => json!({"agent": claimed, "ok": true}),
                Err(reason) => json!({"agent": claimed, "ok": false, "reason": reason}),
            }
        })
        .collect();
    Value::Array(results)
}

// === startup ===

/// A started frontend.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
        self.follower.abort();
    }
}

/// Starts the frontend: checks the dev-login rule, gets an SVID from the Workload API,
/// discovers the issuer and serves.
///
/// # Errors
/// [`FrontendError`].
pub async fn start(
    cfg: FrontendConfig,
    config_path: &std::path::Path,
) -> Result<Running, FrontendError> {
    if cfg.oidc.is_none() && !cfg.listen.ip().is_loopback() {
        return Err(FrontendError::DevLoginNotLoopback(cfg.listen));
    }
    let socket = cfg.workload_socket(config_path)?;
    let keys = Keys::new(token::USER_TOKEN_TTL + Duration::from_secs(60));
    let source = agentmesh_sdk::X509Source::connect(&socket, Duration::from_secs(60)).await?;
    identity::install_current(&keys, &source)?;
    // Aborting the follower drops the source with it, which stops following the Workload API.
    let follower = tokio::spawn(identity::follow(keys.clone(), source));
    let listen = cfg.listen;
    let dev = cfg.oidc.is_none();
    let fe = match Frontend::new(cfg, keys).await {
        Ok(fe) => fe,
        Err(e) => {
            follower.abort();
            return Err(e);
        }
    };
    let (addr, stop, task) = serve(fe, listen).await?;
    if dev {
        tracing::warn!(%addr, "frontend serving with DEV LOGIN (no identity provider); loopback only");
    } else {
        tracing::info!(%addr, "frontend serving");
    }
    Ok(Running {
        addr,
        stop,
        task,
        follower,
    })
}

/// Serves `fe` on `listen` until the returned sender is set to true.
///
/// # Errors
/// [`FrontendError::Listen`].
pub async fn serve(
    fe: Arc<Frontend>,
    listen: SocketAddr,
) -> Result<
    (
        SocketAddr,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
    FrontendError,
> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| FrontendError::Listen(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| FrontendError::Listen(listen, e))?;
    fe.bound_to(addr);
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let limits = fe.cfg.limits.clone();
    let app = fe.router();
    let task = tokio::spawn(agentmesh_proto::limits::serve_tcp(
        listener,
        agentmesh_proto::limits::TowerService(app),
        limits,
        "frontend",
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Ok((addr, stop, task))
}
