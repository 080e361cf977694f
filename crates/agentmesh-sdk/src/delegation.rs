//! The delegation chain: which human, through which agents, in what order, each link signed
//! by the identity it names.
//!
//! # On the wire
//! A request that carries a user's intent travels with two headers:
//!
//! - `Authorization: Bearer <user token>`: the frontend's ES256 user token, whose `x5c` is the
//!   frontend's SVID chain and whose `iss` is the frontend's SPIFFE ID;
//! - [`DELEGATION_HEADER`] (`x-agentmesh-delegation`): `<link1>~<link2>~...`, one compact JWS
//!   per agent that passed the request on, in hop order (`~` never occurs in a compact JWS).
//!   The entry agent, called by the frontend directly, receives no links.
//!
//! # A link
//! A compact JWS signed with the agent's SVID key (ES256, `x5c` = its SVID chain, `typ`
//! [`LINK_TYP`], so a link is never mistaken for a signed response or the other way round),
//! over claims in the spirit of RFC 8693's `act`:
//!
//! | claim  | value |
//! |--------|-------|
//! | `sub`  | the user's `sub` |
//! | `act`  | `{"sub": <the signing agent's SPIFFE ID>}` |
//! | `ujti` | the user token's `jti`: binds the link to this one request |
//! | `prev` | base64url(SHA-256(the previous element's compact form)): the user token for the first link, link *n-1* otherwise |
//! | `aud`  | the next hop's SPIFFE ID (required): only that hop accepts the link |
//! | `iat`, `exp` | now, and the user token's `exp` (a link never outlives the token) |
//!
//! `prev` makes the links a hash chain rooted in the user token: removing a hop or swapping
//! two breaks it ([`ChainError::BrokenChain`]), and a link lifted from another request names
//! another token's `jti` ([`ChainError::ReplayedLink`]). The signature alone proves who
//! added a link; `act.sub` must be the SPIFFE ID in the link's verified `x5c` leaf
//! ([`ChainError::SignerMismatch`]), so an agent cannot add a link in another's name.
//!
//! # Verifying
//! [`verify_chain`] (or [`verify_headers`]) checks, in order, and stops at the first failure:
//! the user token's `x5c` against the trust bundle, that its signer is the expected frontend,
//! its signature, `exp`, `aud` and `iss`; then each link: well-formed, signed by a trusted SVID
//! that is the identity it names, for the same user and token, `prev` matching, not expired,
//! `aud` naming the next hop (for the last link: this service, [`ChainConfig::me`]); and, if
//! given, that the last hop is the verified mTLS peer, so a caller cannot present a chain
//! someone else built. A [`ReplayCache`] then lets each hop accept a token at most once per
//! path (see its docs). Every service holds the trust
//! bundle, so no JWKS fetch is needed; the JWKS path ([`UserTokenVerifier`]) remains for
//! services that only trust the frontend's published keys.
//!
//! A chain of *n* links with 2-certificate `x5c` chains costs 3(*n*+1) ECDSA verifications
//! (leaf and intermediate certificate plus the JWS signature, for the token and each link).
//!
//! [`UserTokenVerifier`]: crate::UserTokenVerifier
//!
//! # Examples
//! ```
//! use agentmesh_sdk::delegation::{self, ChainConfig};
//! use agentmesh_sdk::testing::{TestCa, user_token};
//! let ca = TestCa::new("example.org");
//! let frontend = ca.source("spiffe://example.org/frontend");
//! let planner = ca.source("spiffe://example.org/planner");
//! let token = user_token(&frontend, serde_json::json!({"sub": "alice", "aud": "research-team"}), 300);
//! // The planner passes the request on to the researcher.
//! let researcher: agentmesh_sdk::SpiffeId = "spiffe://example.org/researcher".parse().unwrap();
//! let links = delegation::add_link(&planner, &token, "", &researcher).unwrap();
//! // The researcher checks it: the link must be addressed to it.
//! let config = ChainConfig::new(ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "research-team")
//!     .with_me(researcher.clone());
//! let chain = delegation::verify_chain(&token, &links, &config, None, std::time::SystemTime::now()).unwrap();
//! assert_eq!(chain.user.sub, "alice");
//! assert_eq!(chain.hops, vec!["spiffe://example.org/planner".parse::<agentmesh_sdk::SpiffeId>().unwrap()]);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_spiffe::SpiffeId;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jws::{self, JwsError};
use crate::source::X509Source;
use crate::token::{MAX_TOKEN_LEN, TokenError, UserClaims, UserTokenConfig};

/// The header carrying the links, `~`-separated, in hop order.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::delegation::DELEGATION_HEADER, "x-agentmesh-delegation");
/// ```
pub const DELEGATION_HEADER: &str = "x-agentmesh-delegation";

/// The `typ` header of a link.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::delegation::LINK_TYP, "agentmesh-delegation+jwt");
/// ```
pub const LINK_TYP: &str = "agentmesh-delegation+jwt";

/// The most links a chain may have; a longer one is refused before any signature is checked.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::delegation::MAX_LINKS, 16);
/// ```
pub const MAX_LINKS: usize = 16;

/// The longest a single link may be (a link is a few hundred bytes plus its `x5c`).
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::delegation::MAX_LINK_LEN, 16 * 1024);
/// ```
pub const MAX_LINK_LEN: usize = 16 * 1024;

/// Why a chain was refused (or a link could not be added), one reason each. Links are
/// numbered from 1 in hop order. As a response it is a 401 with a JSON reason.
///
/// # Examples
/// ```
/// use axum::response::IntoResponse;
/// let err = agentmesh_sdk::delegation::ChainError::TooLong { links: 17, max: 16 };
/// assert_eq!(err.into_response().status(), http::StatusCode::UNAUTHORIZED);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The user token is missing, malformed, forged (not signed by a trusted SVID, or a bad
    /// signature), expired, for another audience or from another issuer: the
    /// [`TokenError`] says which.
    #[error(transparent)]
    UserToken(#[from] TokenError),
    /// The delegation header is not `~`-separated compact JWSs (garbage, empty segments,
    /// not ASCII, too long).
    #[error("malformed {DELEGATION_HEADER} header: {0}")]
    MalformedHeader(String),
    /// More links than [`MAX_LINKS`].
    #[error("delegation chain has {links} links; at most {max} are accepted")]
    TooLong {
        /// How many the header had.
        links: usize,
        /// The cap.
        max: usize,
    },
    /// A link is not a compact JWS with the link `typ` and claims.
    #[error("delegation link {index} is malformed: {reason}")]
    LinkMalformed {
        /// Its position, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A link's `x5c` does not chain to the trust bundle (a foreign CA), is missing, or its
    /// certificate is outside its validity period.
    #[error("delegation link {index} is not signed by a trusted svid: {reason}")]
    LinkUntrusted {
        /// Its position, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A link's signature does not verify: it was altered.
    #[error("delegation link {index} signature does not verify; the link was altered")]
    LinkBadSignature {
        /// Its position, from 1.
        index: usize,
    },
    /// A link was signed by a trusted SVID, but not the one its `act.sub` names.
    #[error("delegation link {index} names {claimed} but was signed by another identity: {reason}")]
    SignerMismatch {
        /// Its position, from 1.
        index: usize,
        /// The `act.sub` it claims.
        claimed: String,
        /// Who signed it.
        reason: String,
    },
    /// A link is for another user (`sub`) or another user token (`ujti`): it was lifted
    /// from another request.
    #[error("delegation link {index} belongs to another request: {reason}")]
    ReplayedLink {
        /// Its position, from 1.
        index: usize,
        /// Which binding differs.
        reason: String,
    },
    /// A link's `prev` is not the hash of the element before it: a hop was removed or the
    /// links were reordered.
    #[error(
        "delegation link {index} does not follow the element before it (prev hash mismatch); a hop was removed or reordered"
    )]
    BrokenChain {
        /// Its position, from 1.
        index: usize,
    },
    /// A link's `aud` names someone other than the next hop.
    #[error("delegation link {index} was addressed to {aud}, but the next hop is {next}")]
    LinkWrongAudience {
        /// Its position, from 1.
        index: usize,
        /// The link's `aud`.
        aud: String,
        /// Who actually came next.
        next: String,
    },
    /// A link carries no `aud`: every link must name the hop it is for.
    #[error(
        "delegation link {index} names no next hop (aud); a link is accepted only by the hop it names"
    )]
    LinkNoAudience {
        /// Its position, from 1.
        index: usize,
    },
    /// This hop already accepted this user token along this path: a replay.
    #[error(
        "user token {jti:?} was already used for a call from {caller} to this service; each hop accepts a token once per path"
    )]
    Replayed {
        /// The user token's `jti`.
        jti: String,
        /// The last hop of the chain it came with.
        caller: String,
    },
    /// The replay cache is full of unexpired tokens; refused rather than forgetting one.
    #[error(
        "this service remembers {max} unexpired user tokens already and cannot accept another until one expires"
    )]
    ReplayCacheFull {
        /// The cap.
        max: usize,
    },
    /// A link's `exp` has passed.
    #[error("delegation link {index} expired at {exp} (unix seconds)")]
    LinkExpired {
        /// Its position, from 1.
        index: usize,
        /// Its `exp`.
        exp: i64,
    },
    /// The chain's last hop is not the peer that presented it.
    #[error("delegation chain ends at {last}, but the request came from {expected}")]
    LastHopMismatch {
        /// The verified mTLS peer.
        expected: String,
        /// The chain's last hop (the frontend when there are no links).
        last: String,
    },
    /// Adding a link failed: the SVID key cannot sign ES256, or the clock is broken.
    #[error("cannot add a delegation link: {0}")]
    Sign(String),
    /// The request came with no caller identity anyone verified (not over mTLS, and not
    /// through a sidecar the service can tell apart from any local process), so the chain
    /// cannot be tied to the hop that presents it.
    #[error(
        "no verified caller: a delegation chain is accepted only from a peer verified by mTLS or by the service's own sidecar"
    )]
    NoVerifiedCaller,
}

impl IntoResponse for ChainError {
    fn into_response(self) -> Response {
        match self {
            Self::UserToken(e) => e.into_response(),
            Self::ReplayCacheFull { .. } => crate::http::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &self.to_string(),
            ),
            other => crate::http::json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &other.to_string(),
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Act {
    sub: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LinkClaims {
    sub: String,
    act: Act,
    ujti: String,
    prev: String,
    /// Optional only so that a link without it is named as such ([`ChainError::LinkNoAudience`])
    /// rather than as malformed JSON; [`add_link`] always sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct LinkHeader {
    #[serde(default)]
    typ: Option<String>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// base64url(SHA-256(element)): what the next link's `prev` must be.
fn hash_of(element: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        element.as_bytes(),
    ))
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Splits a delegation header value into its links; an empty value is no links.
///
/// # Errors
/// [`ChainError::MalformedHeader`] for empty segments or an oversized value,
/// [`ChainError::TooLong`] for more than [`MAX_LINKS`].
///
/// # Examples
/// ```
/// use agentmesh_sdk::delegation::{split_links, ChainError};
/// assert!(split_links("").unwrap().is_empty());
/// assert_eq!(split_links("a.b.c~d.e.f").unwrap(), vec!["a.b.c", "d.e.f"]);
/// assert!(matches!(split_links("a.b.c~~d.e.f"), Err(ChainError::MalformedHeader(_))));
/// ```
pub fn split_links(header: &str) -> Result<Vec<&str>, ChainError> {
    let header = header.trim();
    if header.is_empty() {
        return Ok(Vec::new());
    }
    if header.len() > MAX_LINKS * MAX_LINK_LEN {
        return Err(ChainError::MalformedHeader(format!(
            "longer than {} bytes",
            MAX_LINKS * MAX_LINK_LEN
        )));
    }
    let links: Vec<&str> = header.split('~').collect();
    if links.len() > MAX_LINKS {
        return Err(ChainError::TooLong {
            links: links.len(),
            max: MAX_LINKS,
        });
    }
    if links.iter().any(|l| l.is_empty()) {
        return Err(ChainError::MalformedHeader(
            "empty link between '~' separators".into(),
        ));
    }
    Ok(links)
}

fn sign_link(source: &X509Source, claims: &LinkClaims) -> Result<String, ChainError> {
    let payload = serde_json::to_vec(claims).map_err(|e| ChainError::Sign(e.to_string()))?;
    jws::sign_typed(source, LINK_TYP, &payload).map_err(|e| ChainError::Sign(e.to_string()))
}

/// Adds this agent's link to a request it passes on: signs a link with `source`'s SVID that
/// follows the last of `links` (the incoming [`DELEGATION_HEADER`] value, empty at the entry
/// agent) or, if there is none, the user token; `next_hop` is the SPIFFE ID being called,
/// the only hop that will accept the link (its `aud`). Returns the new header value to send
/// on; a fan-out adds one link per callee.
///
/// The user token is only read here (for `sub`, `jti` and `exp`), not verified: verify the
/// incoming chain with [`verify_chain`] first.
///
/// # Errors
/// [`ChainError::UserToken`] if the token is not a JWT with `sub`, `jti` and `exp`, the
/// errors of [`split_links`], and [`ChainError::Sign`].
///
/// # Examples
/// ```
/// use agentmesh_sdk::testing::{TestCa, user_token};
/// let ca = TestCa::new("example.org");
/// let token = user_token(&ca.source("spiffe://example.org/frontend"),
///     serde_json::json!({"sub": "alice", "aud": "research-team"}), 300);
/// let researcher: agentmesh_sdk::SpiffeId = "spiffe://example.org/researcher".parse().unwrap();
/// let writer: agentmesh_sdk::SpiffeId = "spiffe://example.org/writer".parse().unwrap();
/// let one = agentmesh_sdk::delegation::add_link(&ca.source("spiffe://example.org/planner"), &token, "", &researcher).unwrap();
/// let two = agentmesh_sdk::delegation::add_link(&ca.source("spiffe://example.org/researcher"), &token, &one, &writer).unwrap();
/// assert_eq!(two.split('~').count(), 2);
/// assert!(two.starts_with(&one));
/// ```
pub fn add_link(
    source: &X509Source,
    user_token: &str,
    links: &str,
    next_hop: &SpiffeId,
) -> Result<String, ChainError> {
    add_link_at(source, user_token, links, next_hop, SystemTime::now())
}

/// [`add_link`] at an explicit time (`iat`).
///
/// # Errors
/// As [`add_link`].
///
/// # Examples
/// ```
/// use agentmesh_sdk::testing::{TestCa, user_token};
/// let ca = TestCa::new("example.org");
/// let token = user_token(&ca.source("spiffe://example.org/frontend"),
///     serde_json::json!({"sub": "alice", "aud": "a"}), 300);
/// let next: agentmesh_sdk::SpiffeId = "spiffe://example.org/executor".parse().unwrap();
/// let link = agentmesh_sdk::delegation::add_link_at(
///     &ca.source("spiffe://example.org/planner"), &token, "", &next, std::time::SystemTime::now()).unwrap();
/// assert_eq!(link.split('.').count(), 3);
/// ```
pub fn add_link_at(
    source: &X509Source,
    user_token: &str,
    links: &str,
    next_hop: &SpiffeId,
    now: SystemTime,
) -> Result<String, ChainError> {
    let user_token = user_token.trim();
    let user = read_user_claims(user_token)?;
    let existing = split_links(links)?;
    if existing.len() >= MAX_LINKS {
        return Err(ChainError::TooLong {
            links: existing.len() + 1,
            max: MAX_LINKS,
        });
    }
    let prev = existing.last().copied().unwrap_or(user_token);
    let claims = LinkClaims {
        sub: user.sub,
        act: Act {
            sub: source.current().svid.id.to_string(),
        },
        ujti: user.jti,
        prev: hash_of(prev),
        aud: Some(next_hop.to_string()),
        iat: unix(now),
        exp: user.exp,
    };
    let link = sign_link(source, &claims)?;
    Ok(if existing.is_empty() {
        link
    } else {
        format!("{}~{link}", existing.join("~"))
    })
}

struct Unverified {
    sub: String,
    jti: String,
    exp: i64,
}

fn read_user_claims(user_token: &str) -> Result<Unverified, ChainError> {
    if user_token.is_empty() {
        return Err(TokenError::Missing.into());
    }
    let malformed = |m: &str| ChainError::UserToken(TokenError::Malformed(m.to_owned()));
    let mut parts = user_token.split('.');
    let (Some(_), Some(c64), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three '.'-separated segments"));
    };
    let raw: Map<String, Value> =
        decode_json(c64).ok_or_else(|| malformed("claims are not base64url json object"))?;
    let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Unverified {
        sub: text("sub").ok_or_else(|| malformed("claims have no 'sub'"))?,
        jti: text("jti").ok_or_else(|| malformed("claims have no 'jti'"))?,
        exp: raw
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| malformed("claims have no numeric 'exp'"))?,
    })
}

/// What a chain must satisfy at this service.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let config = agentmesh_sdk::delegation::ChainConfig::new(
///     ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "research-team");
/// assert_eq!(config.audience, "research-team");
/// ```
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// The trust bundle every `x5c` must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The frontend's SPIFFE ID: the user token must be signed by this SVID, and its `iss`
    /// must be this ID.
    pub issuer: SpiffeId,
    /// The audience the user token must name.
    pub audience: String,
    /// This service's own SPIFFE ID: the last link's `aud` must name it. Every hop sets it
    /// (the gateway's and the agents' `Delegation` do); `None` is for an auditor that reads a
    /// chain it did not receive (the inspector), which then checks every `aud` but the last
    /// one's value.
    pub me: Option<SpiffeId>,
    /// Clock skew allowed on every `exp`.
    pub leeway: Duration,
}

impl ChainConfig {
    /// The clock skew allowed on every `exp` unless configured otherwise.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

    /// Tokens signed by `issuer`'s SVID for `audience`, links checked against `roots`; 30 s
    /// leeway.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let config = agentmesh_sdk::delegation::ChainConfig::new(
    ///     ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api");
    /// assert!(config.me.is_none());
    /// ```
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        issuer: SpiffeId,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            roots,
            issuer,
            audience: audience.into(),
            me: None,
            leeway: Self::DEFAULT_LEEWAY,
        }
    }

    /// Requires that the last link's `aud` names `me`, the service verifying the chain.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let me: agentmesh_sdk::SpiffeId = "spiffe://example.org/researcher".parse().unwrap();
    /// let config = agentmesh_sdk::delegation::ChainConfig::new(
    ///     ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api").with_me(me.clone());
    /// assert_eq!(config.me, Some(me));
    /// ```
    pub fn with_me(mut self, me: SpiffeId) -> Self {
        self.me = Some(me);
        self
    }
}

/// A chain that verified: the user, then each agent in order.
///
/// # Examples
/// ```
/// use agentmesh_sdk::testing::{TestCa, user_token};
/// let ca = TestCa::new("example.org");
/// let token = user_token(&ca.source("spiffe://example.org/frontend"),
///     serde_json::json!({"sub": "alice", "aud": "api"}), 300);
/// let config = agentmesh_sdk::delegation::ChainConfig::new(
///     ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api");
/// let chain: agentmesh_sdk::delegation::VerifiedChain =
///     agentmesh_sdk::delegation::verify_chain(&token, "", &config, None, std::time::SystemTime::now()).unwrap();
/// assert!(chain.hops.is_empty());
/// assert_eq!(chain.issuer.path(), "/frontend");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedChain {
    /// The user token's claims.
    pub user: UserClaims,
    /// Who signed the user token (the frontend).
    pub issuer: SpiffeId,
    /// The agents that passed the request on, in hop order.
    pub hops: Vec<SpiffeId>,
}

impl VerifiedChain {
    /// The last hop: the last agent, or the frontend when there are no links.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::testing::{TestCa, user_token};
    /// let ca = TestCa::new("example.org");
    /// let token = user_token(&ca.source("spiffe://example.org/frontend"),
    ///     serde_json::json!({"sub": "alice", "aud": "api"}), 300);
    /// let config = agentmesh_sdk::delegation::ChainConfig::new(
    ///     ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api");
    /// let chain = agentmesh_sdk::delegation::verify_chain(&token, "", &config, None, std::time::SystemTime::now()).unwrap();
    /// assert_eq!(chain.last_hop().path(), "/frontend");
    /// ```
    pub fn last_hop(&self) -> &SpiffeId {
        self.hops.last().unwrap_or(&self.issuer)
    }
}

fn user_token_error(e: JwsError) -> ChainError {
    ChainError::UserToken(match e {
        JwsError::Malformed(m) => TokenError::Malformed(m),
        JwsError::UnsupportedAlg(alg) => TokenError::UnsupportedAlg(alg),
        JwsError::WrongSigner(e) => {
            TokenError::Forged(format!("not signed by the expected frontend identity: {e}"))
        }
        other => TokenError::Forged(other.to_string()),
    })
}

/// Verifies the user token and the delegation links (the [`DELEGATION_HEADER`] value, empty
/// for none) at `now`; `expect_last` is the verified mTLS peer, if the chain must end there.
///
/// # Errors
/// The first check that fails, as one [`ChainError`] (see the module docs for the order).
///
/// # Examples
/// ```
/// use agentmesh_sdk::delegation::{self, ChainConfig, ChainError};
/// use agentmesh_sdk::testing::{TestCa, user_token};
/// let ca = TestCa::new("example.org");
/// let token = user_token(&ca.source("spiffe://example.org/frontend"),
///     serde_json::json!({"sub": "alice", "aud": "api"}), 300);
/// let me: agentmesh_sdk::SpiffeId = "spiffe://example.org/executor".parse().unwrap();
/// let links = delegation::add_link(&ca.source("spiffe://example.org/planner"), &token, "", &me).unwrap();
/// let config = ChainConfig::new(ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api")
///     .with_me(me);
/// // Presented by someone other than the planner.
/// let peer: agentmesh_sdk::SpiffeId = "spiffe://example.org/intruder".parse().unwrap();
/// let err = delegation::verify_chain(&token, &links, &config, Some(&peer), std::time::SystemTime::now()).unwrap_err();
/// assert!(matches!(err, ChainError::LastHopMismatch { .. }));
/// ```
pub fn verify_chain(
    user_token: &str,
    links: &str,
    config: &ChainConfig,
    expect_last: Option<&SpiffeId>,
    now: SystemTime,
) -> Result<VerifiedChain, ChainError> {
    let user_token = user_token.trim();
    if user_token.is_empty() {
        return Err(TokenError::Missing.into());
    }
    if user_token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than 16 KiB".into()).into());
    }
    let links = split_links(links)?;

    // The user token: x5c against the bundle, signer = the frontend, signature, claims.
    let verified =
        jws::verify(user_token, &config.roots, &config.issuer, now).map_err(user_token_error)?;
    let raw: Map<String, Value> = serde_json::from_slice(&verified.payload)
        .map_err(|_| TokenError::Malformed("claims are not a json object".into()))?;
    let token_config = UserTokenConfig {
        audience: config.audience.clone(),
        issuer: Some(config.issuer.to_string()),
        min_refetch: Duration::ZERO,
        leeway: config.leeway,
    };
    let user = crate::token::check_claims(&token_config, raw, unix(now))?;
    let jti = user
        .jti
        .clone()
        .ok_or_else(|| TokenError::Malformed("claims have no 'jti'".into()))?;

    // The links, in order.
    let mut prev = user_token;
    let mut hops: Vec<SpiffeId> = Vec::with_capacity(links.len());
    let mut auds: Vec<Option<String>> = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let (actor, aud) = verify::link(i + 1, link, prev, &jti, &user, config, now)?;
        prev = link;
        hops.push(actor);
        auds.push(aud);
    }
    verify::audiences(&hops, &auds, config.me.as_ref())?;
    let chain = VerifiedChain {
        user,
        issuer: verified.signer,
        hops,
    };
    if let Some(expected) = expect_last
        && chain.last_hop() != expected
    {
        return Err(ChainError::LastHopMismatch {
            expected: expected.to_string(),
            last: chain.last_hop().to_string(),
        });
    }
    Ok(chain)
}

/// [`verify_chain`] from request headers: `Authorization: Bearer <user token>` and
/// [`DELEGATION_HEADER`] (absent means no links).
///
/// # Errors
/// [`ChainError::UserToken`] with [`TokenError::Missing`] without a Bearer token,
/// [`ChainError::MalformedHeader`] for a non-ASCII delegation header, else as [`verify_chain`].
///
/// # Examples
/// ```
/// use agentmesh_sdk::delegation::{self, ChainConfig, ChainError};
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let config = ChainConfig::new(ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api");
/// let err = delegation::verify_headers(&http::HeaderMap::new(), &config, None, std::time::SystemTime::now()).unwrap_err();
/// assert!(matches!(err, ChainError::UserToken(agentmesh_sdk::TokenError::Missing)));
/// ```
pub fn verify_headers(
    headers: &http::HeaderMap,
    config: &ChainConfig,
    expect_last: Option<&SpiffeId>,
    now: SystemTime,
) -> Result<VerifiedChain, ChainError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?
        .to_str()
        .map_err(|_| TokenError::Malformed("authorization header is not ascii".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| TokenError::Malformed("authorization is not a Bearer token".into()))?;
    let mut values = headers.get_all(DELEGATION_HEADER).iter();
    let links = match (values.next(), values.next()) {
        (None, _) => "",
        (Some(v), None) => v
            .to_str()
            .map_err(|_| ChainError::MalformedHeader("not ascii".into()))?,
        (Some(_), Some(_)) => {
            return Err(ChainError::MalformedHeader(
                "sent more than once; send one '~'-separated value".into(),
            ));
        }
    };
    verify_chain(token.trim(), links, config, expect_last, now)
}

// === The user behind an MCP or A2A call ===

/// Where the mesh's user token travels on MCP and A2A routes. Not `Authorization`, which
/// belongs to an MCP server's own OAuth (the MCP authorization spec) and passes through the
/// mesh untouched; the delegation links travel in [`DELEGATION_HEADER`], as on every route.
pub const USER_TOKEN_HEADER: &str = "x-agentmesh-user-token";

/// Whose user tokens a route verifies: a sidecar's `[inbound] user_token_issuer` and
/// `user_token_audience`, or [`RequireIntention::with_user_tokens`](crate::RequireIntention::with_user_tokens).
///
/// # Examples
/// ```
/// let tokens = agentmesh_sdk::delegation::UserTokenIssuer {
///     issuer: "frontend".into(),
///     audience: None,
/// };
/// # let _ = tokens;
/// ```
#[derive(Debug, Clone)]
pub struct UserTokenIssuer {
    /// The token's signer: a service name or SPIFFE ID, resolved in this service's trust
    /// domain.
    pub issuer: String,
    /// The audience the token must name; `None` is this service's trust domain.
    pub audience: Option<String>,
}

/// The user behind one call: the verified claims, or why there are none.
#[derive(Debug, Clone, Default)]
pub struct CallUser {
    /// The verified user token's claims.
    pub claims: Option<UserClaims>,
    /// Why a token that came was not accepted (`None` when none came, or it was accepted).
    pub refused: Option<String>,
}

impl CallUser {
    /// Adds to a refusal why the user token, if one came, was not accepted, so the caller
    /// learns that its token, not its rule, was the problem.
    pub fn explain(&self, d: &mut agentmesh_policy::Decision) {
        if !d.is_allowed()
            && let Some(why) = &self.refused
        {
            d.reason
                .push_str(&format!(" (the user token was not accepted: {why})"));
        }
    }
}

/// Verifies the user token ([`USER_TOKEN_HEADER`]) and delegation chain one MCP or A2A call
/// carries, with the verified caller `peer` as the chain's last hop and `own` (this service's
/// SVID and bundle) as its addressee, as the agents and the gateway do. No single-use check:
/// one question's token rightly drives several tool calls of one MCP session. With no
/// `issuer`, a token that comes is refused (nothing here can verify it): a rule that needs a
/// user then refuses, which is the safe direction.
///
/// # Examples
/// ```
/// let user = agentmesh_sdk::delegation::call_user(
///     &http::HeaderMap::new(),
///     &"spiffe://example.org/agent".parse().unwrap(),
///     None,
/// );
/// assert!(user.claims.is_none() && user.refused.is_none());
/// ```
pub fn call_user(
    headers: &http::HeaderMap,
    peer: &SpiffeId,
    verifier: Option<(&crate::X509Context, &UserTokenIssuer)>,
) -> CallUser {
    let refused = |why: String| CallUser {
        claims: None,
        refused: Some(why),
    };
    let Some(token) = headers.get(USER_TOKEN_HEADER) else {
        return CallUser::default();
    };
    let Some((own, cfg)) = verifier else {
        return refused(
            "this service verifies no user tokens (a sidecar's [inbound] user_token_issuer is not set)"
                .into(),
        );
    };
    let td = own.svid.id.trust_domain();
    let issuer = match SpiffeId::from_service_name(td, &cfg.issuer) {
        Ok(id) => id,
        Err(e) => return refused(format!("user_token_issuer {:?}: {e}", cfg.issuer)),
    };
    let mut config = ChainConfig::new(
        own.bundle.as_ref().clone(),
        issuer,
        cfg.audience.clone().unwrap_or_else(|| td.to_string()),
    );
    config.me = Some(own.svid.id.clone());
    let links = headers
        .get(DELEGATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(token) = token.to_str() else {
        return refused("the user token header is not ASCII".into());
    };
    match verify_chain(token, links, &config, Some(peer), SystemTime::now()) {
        Ok(chain) => CallUser {
            claims: Some(chain.user),
            refused: None,
        },
        Err(e) => refused(e.to_string()),
    }
}

mod replay;
mod verify;
pub use replay::ReplayCache;
pub mod service;

#[cfg(test)]
mod tests;
