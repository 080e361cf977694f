//! User-token verification against a JWKS URL (the frontend's `/.well-known/jwks.json`):
//! ES256 signature, `exp`, `aud` and, if configured, `iss`. The JWKS is fetched on first use,
//! cached, and fetched again when a token names a `kid` the cache does not hold (the issuer
//! rotated its key), but never more often than a minimum interval, so a flood of forged
//! tokens with random `kid`s cannot turn into a flood of fetches.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_tls::Jwks;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

/// Tokens longer than this are refused unparsed.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::MAX_TOKEN_LEN, 16 * 1024);
/// ```
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWKS document larger than this is refused.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::MAX_JWKS_BYTES, 1024 * 1024);
/// ```
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a user token was refused, one reason each. As a response it is a 401 with a JSON
/// reason (503 when the JWKS itself is unavailable).
///
/// # Examples
/// ```
/// use axum::response::IntoResponse;
/// let resp = agentmesh_sdk::TokenError::Missing.into_response();
/// assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was presented.
    #[error("missing user token; send it as 'Authorization: Bearer <token>'")]
    Missing,
    /// Not a compact JWS with JSON header and claims.
    #[error("malformed user token: {0}")]
    Malformed(String),
    /// Only ES256 is accepted (this refuses `none` and HMAC confusion).
    #[error("user token uses alg {0:?}, but only ES256 is accepted")]
    UnsupportedAlg(String),
    /// The signature does not verify with any key the issuer publishes.
    #[error("forged user token: {0}")]
    Forged(String),
    /// `exp` has passed.
    #[error("user token expired at {exp} (unix seconds)")]
    Expired {
        /// The token's `exp`.
        exp: i64,
    },
    /// `nbf` is in the future.
    #[error("user token is not valid before {nbf} (unix seconds)")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
    },
    /// The token is for another audience.
    #[error("user token is for audience {got:?}, not {want:?}")]
    WrongAudience {
        /// The audience this verifier is.
        want: String,
        /// The token's audiences.
        got: Vec<String>,
    },
    /// The token is from another issuer.
    #[error("user token issuer is {got:?}, not {want:?}")]
    WrongIssuer {
        /// The configured issuer.
        want: String,
        /// The token's `iss`, if any.
        got: Option<String>,
    },
    /// The JWKS could not be fetched or parsed.
    #[error("jwks at {url}: {reason}")]
    Jwks {
        /// Where it was fetched from.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        // A JWKS outage is ours, not the caller's fault: 503, so clients retry instead of
        // re-authenticating.
        let status = match self {
            Self::Jwks { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        crate::http::json_error(status, "unauthorized", &self.to_string())
    }
}

/// Where the JWKS document comes from. [`HttpJwks`] fetches a plain `http://` URL; implement
/// this to fetch over mTLS (with [`MtlsClient`](crate::MtlsClient)) or from anywhere else.
///
/// # Examples
/// ```
/// use std::{future::Future, pin::Pin};
/// use agentmesh_sdk::{JwksFetcher, TokenError};
/// #[derive(Debug)]
/// struct Fixed(String);
/// impl JwksFetcher for Fixed {
///     fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + '_>> {
///         Box::pin(async move { Ok(self.0.clone()) })
///     }
///     fn url(&self) -> String { "fixed".into() }
/// }
/// ```
pub trait JwksFetcher: Send + Sync + fmt::Debug {
    /// The JWKS JSON document.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use agentmesh_sdk::JwksFetcher;
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let doc = issuer.fetcher().fetch().await.unwrap();
    /// assert!(doc.contains(&issuer.kid()));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`TokenError::Jwks`] naming the URL and the failure.
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + '_>>;

    /// Where the document comes from, for error messages.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{HttpJwks, JwksFetcher};
    /// let jwks = HttpJwks::new("http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
    /// assert_eq!(jwks.url(), "http://127.0.0.1:8080/.well-known/jwks.json");
    /// ```
    fn url(&self) -> String;
}

/// Fetches a JWKS over plain HTTP (the frontend's JWKS is public, and inside one host
/// loopback HTTP is the usual way to reach it).
///
/// # Examples
/// ```
/// let jwks = agentmesh_sdk::HttpJwks::new("http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
/// # let _ = jwks;
/// ```
#[derive(Debug, Clone)]
pub struct HttpJwks {
    url: http::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
}

impl HttpJwks {
    /// A fetcher for `url`, which must be `http://`.
    ///
    /// # Errors
    /// [`TokenError::Jwks`] for an unparseable or non-http URL.
    ///
    /// # Examples
    /// ```
    /// assert!(agentmesh_sdk::HttpJwks::new("ftp://x/jwks").is_err());
    /// ```
    pub fn new(url: &str) -> Result<Self, TokenError> {
        let bad = |reason: &str| TokenError::Jwks {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a valid url"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(bad(
                "expected http://host[:port]/path; fetch https through a custom JwksFetcher",
            ));
        }
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(Self { url: uri, client })
    }
}

impl JwksFetcher for HttpJwks {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + '_>> {
        Box::pin(async move {
            let err = |reason: String| TokenError::Jwks {
                url: self.url.to_string(),
                reason,
            };
            let req = http::Request::get(self.url.clone())
                .body(Empty::new())
                .map_err(|e| err(e.to_string()))?;
            let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
                .await
                .map_err(|_| err("no answer within 10s".into()))?
                .map_err(|e| err(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(err(format!("http status {}", resp.status())));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| err(format!("reading the body: {e}")))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| err("body is not utf-8".into()))
        })
    }

    fn url(&self) -> String {
        self.url.to_string()
    }
}

/// What a user token must satisfy.
///
/// # Examples
/// ```
/// let config = agentmesh_sdk::UserTokenConfig::new("research-team")
///     .with_issuer("https://frontend.example.org");
/// assert_eq!(config.audience, "research-team");
/// ```
#[derive(Debug, Clone)]
pub struct UserTokenConfig {
    /// The audience this service is; tokens must name it in `aud`.
    pub audience: String,
    /// If set, `iss` must equal it.
    pub issuer: Option<String>,
    /// The shortest time between two JWKS fetches.
    pub min_refetch: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl UserTokenConfig {
    /// Requires `audience`; any issuer; refetch at most every 30 s; 30 s leeway.
    ///
    /// # Examples
    /// ```
    /// let config = agentmesh_sdk::UserTokenConfig::new("api");
    /// assert!(config.issuer.is_none());
    /// ```
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            issuer: None,
            min_refetch: Duration::from_secs(30),
            leeway: Duration::from_secs(30),
        }
    }

    /// Also requires `iss == issuer`.
    ///
    /// # Examples
    /// ```
    /// let config = agentmesh_sdk::UserTokenConfig::new("api").with_issuer("https://idp");
    /// assert_eq!(config.issuer.as_deref(), Some("https://idp"));
    /// ```
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }
}

/// The claims of a verified user token.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier};
/// let issuer = agentmesh_sdk::testing::TestIssuer::new();
/// let verifier = UserTokenVerifier::new(UserTokenConfig::new("api"), issuer.fetcher());
/// let token = issuer.mint(serde_json::json!({"sub": "alice", "aud": "api", "jti": "t1"}), 300);
/// let claims: agentmesh_sdk::UserClaims = verifier.verify(&token).await.unwrap();
/// assert_eq!(claims.jti.as_deref(), Some("t1"));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UserClaims {
    /// The user (`sub`).
    pub sub: String,
    /// `email`, if present.
    pub email: Option<String>,
    /// `name`, if present.
    pub name: Option<String>,
    /// The token id (`jti`), if present; log this, never the token.
    pub jti: Option<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Every claim as sent.
    pub raw: Map<String, Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Debug, Default)]
struct Cache {
    jwks: Option<Jwks>,
    fetched_at: Option<Instant>,
}

/// Verifies user tokens against an issuer's JWKS.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use agentmesh_sdk::testing::TestIssuer;
/// use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier};
/// let issuer = TestIssuer::new();
/// let verifier = UserTokenVerifier::new(UserTokenConfig::new("api"), issuer.fetcher());
/// let token = issuer.mint(serde_json::json!({"sub": "alice", "aud": "api"}), 300);
/// let claims = verifier.verify(&token).await.unwrap();
/// assert_eq!(claims.sub, "alice");
/// # }
/// ```
#[derive(Debug)]
pub struct UserTokenVerifier {
    config: UserTokenConfig,
    fetcher: Arc<dyn JwksFetcher>,
    // Read on every token; written only after a fetch, never held across an await.
    cache: std::sync::RwLock<Cache>,
    // Serializes fetches, so concurrent misses wait for one fetch instead of starting their
    // own, while tokens with known keys keep verifying from `cache` meanwhile.
    fetching: tokio::sync::Mutex<()>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl UserTokenVerifier {
    /// A verifier for tokens satisfying `config`, with keys from `fetcher`.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{HttpJwks, UserTokenConfig, UserTokenVerifier};
    /// let jwks = HttpJwks::new("http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
    /// let verifier = UserTokenVerifier::new(UserTokenConfig::new("api"), std::sync::Arc::new(jwks));
    /// # let _ = verifier;
    /// ```
    pub fn new(config: UserTokenConfig, fetcher: Arc<dyn JwksFetcher>) -> Self {
        Self {
            config,
            fetcher,
            cache: std::sync::RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// A verifier that fetches the JWKS from an `http://` URL.
    ///
    /// # Errors
    /// [`TokenError::Jwks`] for a bad URL.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier};
    /// let v = UserTokenVerifier::from_url(UserTokenConfig::new("api"), "http://127.0.0.1:8080/debug/jwks");
    /// assert!(v.is_ok());
    /// ```
    pub fn from_url(config: UserTokenConfig, url: &str) -> Result<Self, TokenError> {
        Ok(Self::new(config, Arc::new(HttpJwks::new(url)?)))
    }

    /// The token from an `Authorization: Bearer` header, verified.
    ///
    /// # Errors
    /// [`TokenError::Missing`] without the header, else as [`UserTokenVerifier::verify`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier, TokenError};
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let verifier = UserTokenVerifier::new(UserTokenConfig::new("api"), issuer.fetcher());
    /// let err = verifier.verify_headers(&http::HeaderMap::new()).await.unwrap_err();
    /// assert!(matches!(err, TokenError::Missing));
    /// # }
    /// ```
    pub async fn verify_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<UserClaims, TokenError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(TokenError::Missing)?
            .to_str()
            .map_err(|_| TokenError::Malformed("authorization header is not ascii".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| TokenError::Malformed("authorization is not a Bearer token".into()))?;
        self.verify(token.trim()).await
    }

    /// Verifies `token`: signature with the issuer's key named by `kid`, then `exp`/`nbf`,
    /// `aud` and `iss`.
    ///
    /// # Errors
    /// One [`TokenError`] per failure.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier, TokenError};
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let verifier = UserTokenVerifier::new(UserTokenConfig::new("api"), issuer.fetcher());
    /// let token = issuer.mint(serde_json::json!({"sub": "alice", "aud": "other"}), 300);
    /// let err = verifier.verify(&token).await.unwrap_err();
    /// assert!(matches!(err, TokenError::WrongAudience { .. }));
    /// # }
    /// ```
    pub async fn verify(&self, token: &str) -> Result<UserClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let malformed = |m: String| TokenError::Malformed(m);
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed("longer than 16 KiB".into()));
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected three '.'-separated segments".into()));
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("header is not base64url json with 'alg'".into()))?;
        if header.alg != "ES256" {
            return Err(TokenError::UnsupportedAlg(header.alg));
        }
        let kid = header
            .kid
            .ok_or_else(|| malformed("header has no 'kid'".into()))?;
        let sig = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|e| malformed(format!("signature is not base64url: {e}")))?;

        let point = self.key_for(&kid).await?;
        let input = &token[..h64.len() + 1 + c64.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(input.as_bytes(), &sig)
            .map_err(|_| {
                TokenError::Forged(format!(
                    "signature does not verify with the issuer's key {kid:?}"
                ))
            })?;

        let raw: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(c64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("claims are not base64url json object".into()))?;
        self.check_claims(raw)
    }

    fn check_claims(&self, raw: Map<String, Value>) -> Result<UserClaims, TokenError> {
        check_claims(&self.config, raw, unix_now())
    }

    /// The public point for `kid`, refetching the JWKS if it is unknown and the last fetch
    /// is old enough.
    async fn key_for(&self, kid: &str) -> Result<[u8; 65], TokenError> {
        if let Some(point) = self.cached(kid) {
            return point;
        }
        let _one_fetch = self.fetching.lock().await;
        // Another task may have fetched while this one waited.
        if let Some(point) = self.cached(kid) {
            return point;
        }
        let may_fetch = self
            .read_cache()
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.config.min_refetch);
        if may_fetch {
            self.write_cache().fetched_at = Some(Instant::now());
            let body = self.fetcher.fetch().await?;
            let jwks = Jwks::from_json(&body).map_err(|e| TokenError::Jwks {
                url: self.fetcher.url(),
                reason: e.to_string(),
            })?;
            tracing::debug!(url = %self.fetcher.url(), keys = jwks.keys.len(), "fetched user-token jwks");
            self.write_cache().jwks = Some(jwks);
            if let Some(point) = self.cached(kid) {
                return point;
            }
        }
        Err(TokenError::Forged(format!(
            "key id {kid:?} is not in the issuer's jwks at {}",
            self.fetcher.url()
        )))
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // A poisoned lock still holds a whole cache (writes are single assignments).
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, kid: &str) -> Option<Result<[u8; 65], TokenError>> {
        let cache = self.read_cache();
        let jwk = cache.jwks.as_ref()?.find(kid)?;
        Some(self.point(jwk))
    }

    fn point(&self, jwk: &agentmesh_tls::Jwk) -> Result<[u8; 65], TokenError> {
        jwk.uncompressed_point().map_err(|e| TokenError::Jwks {
            url: self.fetcher.url(),
            reason: e.to_string(),
        })
    }
}

/// The claim checks of a user token whose signature already verified: `exp`/`nbf` against
/// `now` (unix seconds) with `config.leeway`, `aud`, `iss` if configured, and `sub`.
pub(crate) fn check_claims(
    config: &UserTokenConfig,
    raw: Map<String, Value>,
    now: i64,
) -> Result<UserClaims, TokenError> {
    let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(0);
    let exp = raw
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| TokenError::Malformed("claims have no numeric 'exp'".into()))?;
    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired { exp });
    }
    if let Some(nbf) = raw.get("nbf").and_then(Value::as_i64)
        && now.saturating_add(leeway) < nbf
    {
        return Err(TokenError::NotYetValid { nbf });
    }
    let aud: Vec<String> = match raw.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if !aud.contains(&config.audience) {
        return Err(TokenError::WrongAudience {
            want: config.audience.clone(),
            got: aud,
        });
    }
    let iss = raw.get("iss").and_then(Value::as_str).map(str::to_owned);
    if let Some(want) = &config.issuer
        && iss.as_deref() != Some(want.as_str())
    {
        return Err(TokenError::WrongIssuer {
            want: want.clone(),
            got: iss,
        });
    }
    let text = |name: &str| raw.get(name).and_then(Value::as_str).map(str::to_owned);
    let sub = text("sub").ok_or_else(|| TokenError::Malformed("claims have no 'sub'".into()))?;
    Ok(UserClaims {
        sub,
        email: text("email"),
        name: text("name"),
        jti: text("jti"),
        exp,
        raw,
    })
}

/// Reads the verified claims that [`RequireUserToken`] put on the request (401 if none).
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for UserClaims {
    type Rejection = TokenError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<UserClaims>()
            .cloned()
            .ok_or(TokenError::Missing)
    }
}

/// A layer that verifies the `Authorization: Bearer` user token on every request it wraps,
/// puts the [`UserClaims`] into the request, and answers anything else with a 401 and the
/// reason (missing, malformed, forged, expired, wrong audience or issuer).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use agentmesh_sdk::{RequireUserToken, UserTokenConfig, UserTokenVerifier};
/// use agentmesh_sdk::UserClaims;
/// use axum::{Router, routing::get};
/// let verifier = UserTokenVerifier::from_url(
///     UserTokenConfig::new("research-team"), "http://127.0.0.1:8080/.well-known/jwks.json").unwrap();
/// let app: Router = Router::new().route(
///     "/ask",
///     get(|user: UserClaims| async move { format!("hello {}", user.sub) })
///         .route_layer(RequireUserToken::new(Arc::new(verifier))),
/// );
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct RequireUserToken {
    verifier: Arc<UserTokenVerifier>,
}

impl RequireUserToken {
    /// Verifies tokens with `verifier`.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{RequireUserToken, UserTokenConfig, UserTokenVerifier};
    /// let issuer = agentmesh_sdk::testing::TestIssuer::new();
    /// let layer = RequireUserToken::new(std::sync::Arc::new(
    ///     UserTokenVerifier::new(UserTokenConfig::new("api"), issuer.fetcher())));
    /// # let _ = layer;
    /// ```
    pub fn new(verifier: Arc<UserTokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for RequireUserToken {
    type Service = RequireUserTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireUserTokenService {
            inner,
            verifier: Arc::clone(&self.verifier),
        }
    }
}

/// The service [`RequireUserToken`] wraps a route in.
///
/// # Examples
/// ```
/// use tower::Layer;
/// let issuer = agentmesh_sdk::testing::TestIssuer::new();
/// let layer = agentmesh_sdk::RequireUserToken::new(std::sync::Arc::new(
///     agentmesh_sdk::UserTokenVerifier::new(
///         agentmesh_sdk::UserTokenConfig::new("api"), issuer.fetcher())));
/// let svc = layer.layer(tower::service_fn(|_req: http::Request<axum::body::Body>| async {
///     Ok::<_, std::convert::Infallible>(axum::response::Response::new(axum::body::Body::empty()))
/// }));
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct RequireUserTokenService<S> {
    inner: S,
    verifier: Arc<UserTokenVerifier>,
}

impl<S, B> tower::Service<http::Request<B>> for RequireUserTokenService<S>
where
    S: tower::Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Call the instance that was polled ready and leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = Arc::clone(&self.verifier);
        Box::pin(async move {
            match verifier.verify_headers(req.headers()).await {
                Ok(claims) => {
                    req.extensions_mut().insert(claims);
                    inner.call(req).await
                }
                Err(e) => {
                    // The reason, never the token.
                    tracing::info!(reason = %e, "user token refused");
                    Ok(e.into_response())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
