//! JWT-SVIDs: ES256 compact JWS signed and verified directly with ring. The SPIFFE JWT bundle
//! format (JWKS) they are checked against is agentmesh-tls's.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::{Jwk, JwkError, Jwks};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::{Map, Value};

/// Tokens longer than this are refused unparsed, so a hostile peer cannot make us decode
/// megabytes of base64.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The `use` value SPIFFE bundles give JWT-SVID signing keys.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// Why a JWT-SVID could not be signed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is not a well-formed compact JWS with JSON header and claims.
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    /// The header's `alg` is not ES256.
    #[error("JWT-SVID uses alg {0:?}, but only ES256 is accepted")]
    UnsupportedAlg(String),
    /// The header has no `kid`, so no bundle key can be chosen.
    #[error("JWT-SVID header has no 'kid'; SPIFFE requires one")]
    MissingKid,
    /// The `kid` is not in the trust bundle.
    #[error("JWT-SVID key id {0:?} is not in the trust bundle; the bundle may be stale")]
    UnknownKid(String),
    /// The signature does not verify with the bundle key of that `kid`.
    #[error("JWT-SVID signature does not verify; the token was altered or signed by another key")]
    BadSignature,
    /// `exp` is not after now.
    #[error("JWT-SVID expired at {exp} (unix seconds)")]
    Expired {
        /// The token's `exp`.
        exp: i64,
    },
    /// `nbf` is still in the future.
    #[error("JWT-SVID is not valid before {nbf} (unix seconds)")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
    },
    /// The wanted audience is not in `aud`.
    #[error("JWT-SVID audience {got:?} does not contain {want:?}")]
    AudienceMismatch {
        /// The audience the validator is.
        want: String,
        /// The token's audiences.
        got: Vec<String>,
    },
    /// `sub` is missing or not a SPIFFE ID.
    #[error("JWT-SVID subject is not a valid SPIFFE ID: {0}")]
    BadSubject(String),
    /// A JWT-SVID must name at least one audience.
    #[error("a JWT-SVID needs at least one audience")]
    EmptyAudience,
    /// A TTL under one second.
    #[error("JWT-SVID TTL must be at least one second")]
    ZeroTtl,
    /// The clock is before 1970.
    #[error("time {0:?} is before the unix epoch; check the system clock")]
    BadTime(SystemTime),
    /// The signing key could not be made or loaded.
    #[error("JWT signing key: {0}")]
    Key(String),
    /// The bundle, or the key in it the token names, is unusable.
    #[error(transparent)]
    Jwk(#[from] JwkError),
}

fn unix_secs(t: SystemTime) -> Result<i64, JwtError> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or(JwtError::BadTime(t))
}

/// An ES256 key that signs JWT-SVIDs, with its key id.
pub struct JwtKey {
    kid: String,
    pkcs8: Vec<u8>,
    pair: EcdsaKeyPair,
}

impl JwtKey {
    /// Generates a fresh P-256 key with a random key id.
    ///
    /// # Errors
    /// [`JwtError::Key`] if the system RNG fails.
    pub fn generate() -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::Key("could not generate a P-256 key".into()))?;
        let mut kid = [0u8; 24];
        rng.fill(&mut kid)
            .map_err(|_| JwtError::Key("could not generate a key id".into()))?;
        Self::from_pkcs8_der(URL_SAFE_NO_PAD.encode(kid), doc.as_ref())
    }

    /// Loads a key from unencrypted PKCS#8 DER, under the given key id.
    ///
    /// # Errors
    /// [`JwtError::Key`] for an empty kid or a key that is not P-256 PKCS#8.
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<Self, JwtError> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(JwtError::Key("key id must not be empty".into()));
        }
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| JwtError::Key(format!("key {kid:?} is not a P-256 PKCS#8 key: {e}")))?;
        Ok(Self {
            kid,
            pkcs8: der.to_vec(),
            pair,
        })
    }

    /// The key id, put in each token's header and in the bundle.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as unencrypted PKCS#8 DER, for persisting.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// The public half, as a JWK for the trust bundle.
    pub fn public_jwk(&self) -> Jwk {
        // ring's public key is the uncompressed point 0x04 || x || y.
        let point = self.pair.public_key().as_ref();
        let coords = point.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            kid: self.kid.clone(),
            key_use: JWT_SVID_USE.into(),
        }
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The claims of a JWT-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtClaims {
    /// The subject's SPIFFE ID.
    pub sub: SpiffeId,
    /// The audiences, always as a list.
    pub aud: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issue time, unix seconds, if present.
    pub iat: Option<i64>,
    /// Every claim as sent, for callers that want extra ones.
    pub raw: Map<String, Value>,
}

/// Signs a JWT-SVID for `sub`: ES256, `{"sub","aud":[...],"exp","iat"}`.
///
/// # Errors
/// [`JwtError::EmptyAudience`], [`JwtError::ZeroTtl`], [`JwtError::BadTime`] or
/// [`JwtError::Key`] if signing fails.
pub fn sign_jwt_svid(
    key: &JwtKey,
    sub: &SpiffeId,
    audience: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<String, JwtError> {
    if audience.is_empty() {
        return Err(JwtError::EmptyAudience);
    }
    let ttl = i64::try_from(ttl.as_secs()).map_err(|_| JwtError::BadTime(now))?;
    if ttl == 0 {
        return Err(JwtError::ZeroTtl);
    }
    let iat = unix_secs(now)?;
    let header = serde_json::json!({"alg": "ES256", "kid": key.kid, "typ": "JWT"});
    let claims = serde_json::json!({
        "sub": sub.to_string(),
        "aud": audience,
        "exp": iat.saturating_add(ttl),
        "iat": iat,
    });
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = crate::ecdsa::sign_p256_low_s(&key.pair, token.as_bytes())
        .map_err(|e| JwtError::Key(format!("signing with key {:?} failed: {e}", key.kid)))?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    tracing::debug!(spiffe_id = %sub, kid = %key.kid, "signed JWT-SVID");
    Ok(token)
}

struct Parts<'a> {
    header: Map<String, Value>,
    payload_b64: &'a str,
    signing_input: &'a str,
    signature_b64: &'a str,
}

fn decode_json_object(b64: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
        Err(e) => Err(JwtError::Malformed(format!("{what} is not JSON: {e}"))),
    }
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed(format!(
            "token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        )));
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts (compact JWS)".into(),
        ));
    };
    Ok(Parts {
        header: decode_json_object(h, "header")?,
        payload_b64: p,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature_b64: s,
    })
}

fn int_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| JwtError::Malformed(format!("claim {name:?} is not a number"))),
    }
}

fn parse_claims(payload_b64: &str) -> Result<JwtClaims, JwtError> {
    let raw = decode_json_object(payload_b64, "claims")?;
    let sub = match raw.get("sub") {
        Some(Value::String(s)) => s
            .parse::<SpiffeId>()
            .map_err(|e| JwtError::BadSubject(format!("{s:?}: {e}")))?,
        Some(_) => return Err(JwtError::BadSubject("'sub' is not a string".into())),
        None => return Err(JwtError::BadSubject("'sub' claim is missing".into())),
    };
    let aud = match raw.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| JwtError::Malformed("'aud' has a non-string entry".into()))?,
        Some(_) => return Err(JwtError::Malformed("'aud' is not a string or array".into())),
        None => return Err(JwtError::Malformed("'aud' claim is missing".into())),
    };
    let exp = int_claim(&raw, "exp")?
        .ok_or_else(|| JwtError::Malformed("'exp' claim is missing".into()))?;
    let iat = int_claim(&raw, "iat")?;
    Ok(JwtClaims {
        sub,
        aud,
        exp,
        iat,
        raw,
    })
}

/// Validates a JWT-SVID against a bundle, for one audience, at `now`.
///
/// The signature is checked before any claim, so claims of a forged token are never trusted.
///
/// # Errors
/// One distinct [`JwtError`] variant per failure: `Malformed`, `UnsupportedAlg`, `MissingKid`,
/// `UnknownKid`, `BadSignature`, `Expired`, `NotYetValid`, `AudienceMismatch`, `BadSubject`.
pub fn validate_jwt_svid(
    token: &str,
    jwks: &Jwks,
    audience: &str,
    now: SystemTime,
) -> Result<JwtClaims, JwtError> {
    let parts = split(token)?;
    let alg = match parts.header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(JwtError::Malformed("header 'alg' is not a string".into())),
        None => return Err(JwtError::Malformed("header has no 'alg'".into())),
    };
    if alg != "ES256" {
        return Err(JwtError::UnsupportedAlg(alg.to_owned()));
    }
    if let Some(typ) = parts.header.get("typ")
        && typ.as_str() != Some("JWT")
        && typ.as_str() != Some("JOSE")
    {
        return Err(JwtError::Malformed(format!(
            "header 'typ' is {typ}, want \"JWT\" or \"JOSE\""
        )));
    }
    if parts.header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "header has 'crit' extensions, none of which are supported".into(),
        ));
    }
    let kid = match parts.header.get("kid") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err(JwtError::Malformed("header 'kid' is not a string".into())),
        None => return Err(JwtError::MissingKid),
    };
    let jwk = jwks
        .find(kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.to_owned()))?;
    let point = jwk.uncompressed_point()?;
    let sig = URL_SAFE_NO_PAD
        .decode(parts.signature_b64)
        .map_err(|_| JwtError::BadSignature)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(parts.signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)?;

    let claims = parse_claims(parts.payload_b64)?;
    let now_secs = unix_secs(now)?;
    if claims.exp <= now_secs {
        return Err(JwtError::Expired { exp: claims.exp });
    }
    if let Some(nbf) = int_claim(&claims.raw, "nbf")?
        && nbf > now_secs
    {
        return Err(JwtError::NotYetValid { nbf });
    }
    if !claims.aud.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch {
            want: audience.to_owned(),
            got: claims.aud,
        });
    }
    Ok(claims)
}

/// Reads a JWT-SVID's claims WITHOUT verifying anything but their shape.
///
/// Only for display or for caching by `exp`; never for authorization.
///
/// # Errors
/// [`JwtError::Malformed`] or [`JwtError::BadSubject`].
pub fn peek_claims(token: &str) -> Result<JwtClaims, JwtError> {
    parse_claims(split(token)?.payload_b64)
}

#[cfg(test)]
mod tests;
