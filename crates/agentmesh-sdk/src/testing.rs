//! A throwaway CA for tests and examples (feature `testing`): real X509-SVIDs, minted in
//! process by the same code the agentmesh server uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_ca::{Authority, CsrPublicKey, PrivateKey};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use rustls::pki_types::CertificateDer;

use crate::source::{Svid, X509Source};

/// Why the test CA failed; it only fails on bad input from the test itself.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let err = ca.svid_valid("not an id", std::time::SystemTime::now(), std::time::Duration::from_secs(60));
/// assert!(matches!(err, Err(agentmesh_sdk::testing::TestCaError::BadId(_))));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestCaError {
    /// The trust domain or SPIFFE ID did not parse.
    #[error("bad test identity: {0}")]
    BadId(String),
    /// Minting failed.
    #[error("test ca: {0}")]
    Ca(String),
}

/// A root + intermediate CA for one trust domain.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let (svid, roots) = ca.svid("spiffe://example.org/api");
/// assert_eq!(roots.len(), 1);
/// assert_eq!(svid.chain.len(), 2);
/// ```
pub struct TestCa {
    root: Vec<u8>,
    authority: Authority,
    td: TrustDomain,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("td", &self.td.as_str())
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh CA for `trust_domain`; panics on a bad name, since it is for tests.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// assert_eq!(ca.roots().len(), 1);
    /// ```
    pub fn new(trust_domain: &str) -> Self {
        Self::try_new(trust_domain).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`TestCa::new`], returning the error.
    ///
    /// # Errors
    /// A bad trust domain name, or a minting failure.
    ///
    /// # Examples
    /// ```
    /// assert!(agentmesh_sdk::testing::TestCa::try_new("Not A Domain").is_err());
    /// ```
    pub fn try_new(trust_domain: &str) -> Result<Self, TestCaError> {
        let td: TrustDomain = trust_domain
            .parse()
            .map_err(|e: agentmesh_spiffe::SpiffeIdError| TestCaError::BadId(e.to_string()))?;
        let ca = |e: &dyn std::fmt::Display| TestCaError::Ca(e.to_string());
        // Backdated so tests can mint SVIDs that already expired inside the CA's validity.
        let now = SystemTime::now() - Duration::from_secs(2 * 86400);
        let root_key = PrivateKey::generate().map_err(|e| ca(&e))?;
        let root = agentmesh_ca::new_root(&td, &root_key, Duration::from_secs(10 * 86400), now)
            .map_err(|e| ca(&e))?;
        let int_key = PrivateKey::generate().map_err(|e| ca(&e))?;
        let int = agentmesh_ca::new_intermediate(
            &td,
            &int_key,
            Duration::from_secs(10 * 86400),
            now,
            &root,
            &root_key,
        )
        .map_err(|e| ca(&e))?;
        let authority = Authority::new(&td, int, int_key).map_err(|e| ca(&e))?;
        Ok(Self {
            root,
            authority,
            td,
        })
    }

    /// The trust bundle: this CA's root.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// assert!(!ca.roots()[0].is_empty());
    /// ```
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.root.clone())]
    }

    /// A fresh SVID for `id` valid for an hour, and the bundle; panics on a bad ID.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let (svid, _) = ca.svid("spiffe://example.org/a");
    /// assert_eq!(svid.id.path(), "/a");
    /// ```
    pub fn svid(&self, id: &str) -> (Svid, Vec<CertificateDer<'static>>) {
        let svid = self
            .svid_valid(
                id,
                SystemTime::now() - Duration::from_secs(60),
                Duration::from_secs(3600),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        (svid, self.roots())
    }

    /// An SVID for `id` valid from `not_before` for `ttl` (to make expired ones).
    ///
    /// # Errors
    /// A bad ID, or a minting failure.
    ///
    /// # Examples
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let old = SystemTime::now() - Duration::from_secs(7200);
    /// let svid = ca.svid_valid("spiffe://example.org/a", old, Duration::from_secs(60)).unwrap();
    /// assert!(svid.not_after < SystemTime::now());
    /// ```
    pub fn svid_valid(
        &self,
        id: &str,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<Svid, TestCaError> {
        let id: SpiffeId = id
            .parse()
            .map_err(|e: agentmesh_spiffe::SpiffeIdError| TestCaError::BadId(e.to_string()))?;
        let ca = |e: &dyn std::fmt::Display| TestCaError::Ca(e.to_string());
        let key = PrivateKey::generate().map_err(|e| ca(&e))?;
        let public = CsrPublicKey::from_spki_der(&key.public_key_der()).map_err(|e| ca(&e))?;
        let minted = self
            .authority
            .mint_x509_svid(&id, &public, ttl, &[], not_before)
            .map_err(|e| ca(&e))?;
        Svid::from_der(&minted.chain, &key.pkcs8_der()).map_err(|e| ca(&e))
    }

    /// A source holding a fresh SVID for `id`.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let source = ca.source("spiffe://example.org/a");
    /// assert_eq!(source.current().roots.len(), 1);
    /// ```
    pub fn source(&self, id: &str) -> Arc<X509Source> {
        let (svid, roots) = self.svid(id);
        Arc::new(X509Source::from_svid(svid, roots).unwrap_or_else(|e| panic!("{e}")))
    }
}

/// A stand-in for the frontend: an ES256 user-token issuer with a JWKS it can rotate.
///
/// # Examples
/// ```
/// let issuer = agentmesh_sdk::testing::TestIssuer::new();
/// let token = issuer.mint(serde_json::json!({"sub": "alice", "aud": "api"}), 300);
/// assert_eq!(token.split('.').count(), 3);
/// ```
#[derive(Debug)]
pub struct TestIssuer {
    key: std::sync::Mutex<Arc<IssuerKey>>,
    published: Arc<StaticJwks>,
}

struct IssuerKey {
    kid: String,
    pair: ring::signature::EcdsaKeyPair,
    jwk: agentmesh_tls::Jwk,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn issuer_key() -> Arc<IssuerKey> {
    use ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let rng = ring::rand::SystemRandom::new();
    let jwt = agentmesh_ca::JwtKey::generate().unwrap_or_else(|e| panic!("{e}"));
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &jwt.pkcs8_der(),
        &rng,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(IssuerKey {
        kid: jwt.kid().to_owned(),
        pair,
        jwk: jwt.public_jwk(),
    })
}

/// A JWKS document served from memory, counting how often it is fetched.
///
/// # Examples
/// ```
/// let issuer = agentmesh_sdk::testing::TestIssuer::new();
/// assert_eq!(issuer.fetcher().fetches(), 0);
/// ```
#[derive(Debug, Default)]
pub struct StaticJwks {
    doc: std::sync::Mutex<String>,
    fetches: std::sync::atomic::AtomicUsize,
}

impl StaticJwks {
    /// How many times the document was fetched.
    ///
    /// # Examples
    /// ```
    /// let jwks = agentmesh_sdk::testing::StaticJwks::default();
    /// assert_eq!(jwks.fetches(), 0);
    /// ```
    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the served document (for example with garbage, to test bad answers).
    ///
    /// # Examples
    /// ```
    /// let jwks = agentmesh_sdk::testing::StaticJwks::default();
    /// jwks.set("not json");
    /// ```
    pub fn set(&self, doc: &str) {
        *self
            .doc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = doc.to_owned();
    }
}

impl crate::token::JwksFetcher for StaticJwks {
    fn fetch(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<String, crate::token::TokenError>> + Send + '_>,
    > {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let doc = self
            .doc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move { Ok(doc) })
    }

    fn url(&self) -> String {
        "memory://test-issuer/jwks.json".to_owned()
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// A fresh issuer publishing one key.
    ///
    /// # Examples
    /// ```
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// assert!(issuer.jwks_json().contains(&issuer.kid()));
    /// ```
    pub fn new() -> Self {
        let key = issuer_key();
        let published = Arc::new(StaticJwks::default());
        published.set(&agentmesh_tls::Jwks::new(vec![key.jwk.clone()]).to_json());
        Self {
            key: std::sync::Mutex::new(key),
            published,
        }
    }

    fn current(&self) -> Arc<IssuerKey> {
        Arc::clone(
            &self
                .key
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The current key id.
    ///
    /// # Examples
    /// ```
    /// assert!(!agentmesh_sdk::testing::TestIssuer::new().kid().is_empty());
    /// ```
    pub fn kid(&self) -> String {
        self.current().kid.clone()
    }

    /// The JWKS this issuer publishes now.
    ///
    /// # Examples
    /// ```
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// assert!(issuer.jwks_json().starts_with("{\"keys\":["));
    /// ```
    pub fn jwks_json(&self) -> String {
        self.published
            .doc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The in-memory fetcher serving this issuer's JWKS.
    ///
    /// # Examples
    /// ```
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let _verifier = agentmesh_sdk::UserTokenVerifier::new(
    ///     agentmesh_sdk::UserTokenConfig::new("api"), issuer.fetcher());
    /// ```
    pub fn fetcher(&self) -> Arc<StaticJwks> {
        Arc::clone(&self.published)
    }

    /// Switches to a new key and publishes only it (the old one is retired).
    ///
    /// # Examples
    /// ```
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let old = issuer.kid();
    /// issuer.rotate();
    /// assert!(!issuer.jwks_json().contains(&old));
    /// ```
    pub fn rotate(&self) {
        let key = issuer_key();
        self.published
            .set(&agentmesh_tls::Jwks::new(vec![key.jwk.clone()]).to_json());
        *self
            .key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }

    /// Signs `claims` (ES256, header `kid`), adding `exp = now + ttl_secs` unless present.
    ///
    /// # Examples
    /// ```
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let expired = issuer.mint(serde_json::json!({"sub": "a", "aud": "api"}), -600);
    /// # let _ = expired;
    /// ```
    pub fn mint(&self, mut claims: serde_json::Value, ttl_secs: i64) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        if let Some(map) = claims.as_object_mut() {
            map.entry("exp").or_insert_with(|| (now + ttl_secs).into());
        }
        let key = self.current();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": key.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = agentmesh_tls::ecdsa::sign_p256_low_s(&key.pair, input.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// A user token in the frontend's format (ES256, `typ` `JWT`, `x5c` = the signer's SVID
/// chain), signed with `frontend`'s SVID: `claims` plus `iss` (the signer's SPIFFE ID),
/// `iat`, `exp = now + ttl_secs` and a random `jti`, each unless present.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let frontend = ca.source("spiffe://example.org/frontend");
/// let token = agentmesh_sdk::testing::user_token(
///     &frontend, serde_json::json!({"sub": "alice", "aud": "research-team"}), 300);
/// assert_eq!(token.split('.').count(), 3);
/// ```
pub fn user_token(frontend: &X509Source, mut claims: serde_json::Value, ttl_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
        .unwrap_or_else(|e| panic!("{e}"));
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(map) = claims.as_object_mut() {
        let iss = frontend.current().svid.id.to_string();
        map.entry("iss").or_insert_with(|| iss.into());
        map.entry("iat").or_insert_with(|| now.into());
        map.entry("exp").or_insert_with(|| (now + ttl_secs).into());
        map.entry("jti").or_insert_with(|| jti.into());
    }
    crate::jws::sign_typed(frontend, "JWT", claims.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
}

// === A toy MCP and A2A agent ===

/// What reached a [`toy_agent`]'s handlers, in order: `METHOD`, or `METHOD NAME` for a call
/// naming a tool; one entry per message. Tests read it to show a refused call never arrived.
///
/// # Examples
/// ```
/// let arrived = agentmesh_sdk::testing::Arrived::default();
/// assert!(arrived.all().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Arrived(Arc<std::sync::Mutex<Vec<String>>>);

impl Arrived {
    /// Everything that arrived so far.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(agentmesh_sdk::testing::Arrived::default().all().len(), 0);
    /// ```
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn push(&self, what: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(what);
    }
}

/// A minimal agent for in-process tests, to put behind
/// [`RequireIntention`](crate::RequireIntention): an MCP Streamable HTTP endpoint at `/mcp`
/// (JSON answers, no sessions; `initialize`, `ping`, `tools/list` with `search`,
/// `delete_all` and `export`, `tools/call` answering `NAME ran`; a notification gets 202 and a
/// GET 405, as a server without a standalone stream answers) and an A2A endpoint at `/a2a`
/// (every method answers a completed task; `GetExtendedAgentCard` a card with the skills
/// `ask`, tagged `a2a:SendMessage`, and `track`, tagged `a2a:GetTask`, and a `signatures`
/// entry; `SendStreamingMessage` and `SubscribeToTask` an SSE stream of task status updates,
/// one every 100 ms, that ends only when the caller goes). Every message is recorded in
/// `arrived` before it is answered.
///
/// # Examples
/// ```
/// let app = agentmesh_sdk::testing::toy_agent(agentmesh_sdk::testing::Arrived::default());
/// # let _ = app;
/// ```
pub fn toy_agent(arrived: Arrived) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(
            "/mcp",
            post(toy_mcp).get(|| async { http::StatusCode::METHOD_NOT_ALLOWED }),
        )
        .route("/a2a", post(toy_a2a))
        .with_state(arrived)
}

fn toy_json(v: &serde_json::Value) -> axum::response::Response {
    crate::jsonrpc::json_answer(http::StatusCode::OK, v).map(axum::body::Body::new)
}

async fn toy_mcp(
    axum::extract::State(arrived): axum::extract::State<Arrived>,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use serde_json::{Value, json};
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg["method"].as_str().unwrap_or("(response)").to_owned();
    let name = msg["params"]["name"].as_str().map(str::to_owned);
    arrived.push(match &name {
        Some(n) => format!("{method} {n}"),
        None => method.clone(),
    });
    let Some(id) = msg.get("id").cloned() else {
        return http::StatusCode::ACCEPTED.into_response();
    };
    let tool = |n: &str| json!({"name": n, "description": n, "inputSchema": {"type": "object"}});
    let result = match method.as_str() {
        "initialize" => json!({
            "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "toy-agent", "version": "1.0.0"},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [tool("search"), tool("delete_all"), tool("export")]}),
        "tools/call" => json!({
            "content": [{"type": "text", "text": format!("{} ran", name.unwrap_or_default())}],
            "isError": false,
        }),
        _ => {
            return toy_json(&json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": crate::jsonrpc::METHOD_NOT_FOUND, "message": "unknown method"}}));
        }
    };
    toy_json(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn toy_a2a(
    axum::extract::State(arrived): axum::extract::State<Arrived>,
    body: bytes::Bytes,
) -> axum::response::Response {
    use serde_json::{Value, json};
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg["method"].as_str().unwrap_or_default().to_owned();
    arrived.push(method.clone());
    if matches!(method.as_str(), "SendStreamingMessage" | "SubscribeToTask") {
        return toy_a2a_stream(msg["id"].clone());
    }
    let result = match method.as_str() {
        "GetExtendedAgentCard" => json!({
            "name": "toy-agent",
            "skills": [
                {"id": "ask", "name": "ask", "tags": ["a2a:SendMessage"]},
                {"id": "track", "name": "track", "tags": ["a2a:GetTask"]},
            ],
            "signatures": [{"protected": "x", "signature": "y"}],
        }),
        _ => json!({"task": {"id": "t1", "status": {"state": "completed"}}}),
    };
    toy_json(&json!({"jsonrpc": "2.0", "id": msg["id"], "result": result}))
}

/// An endless SSE stream of A2A task status updates answering request `id`.
fn toy_a2a_stream(id: serde_json::Value) -> axum::response::Response {
    let events = futures::stream::unfold(0u64, move |n| {
        let id = id.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let update = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                "statusUpdate": {"taskId": "t1", "status": {"state": "TASK_STATE_WORKING"}, "seq": n}}});
            let event = bytes::Bytes::from(format!("data: {update}\n\n"));
            Some((Ok::<_, std::convert::Infallible>(event), n + 1))
        }
    });
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(events));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}
