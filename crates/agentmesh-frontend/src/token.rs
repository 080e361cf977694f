//! User tokens: the logged-in person, as an ES256 JWT signed with the frontend's SVID key.
//!
//! Header: `{"alg":"ES256","typ":"JWT","kid":<RFC 7638 thumbprint>,"x5c":[<SVID chain,
//! base64 DER, leaf first>]}`. Claims: `iss` (the frontend's SPIFFE ID), `sub`, `email`,
//! `name`, `aud`, `iat`, `exp` (`iat` + 5 min), `jti`, and `idp` (the OIDC issuer that
//! authenticated the user, or `dev` for the dev login). A verifier can check the signature
//! either with the JWKS (`kid`) or with the `x5c` leaf against the trust bundle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::identity::{IdentityError, SigningKey};

/// How long a user token lasts.
pub const USER_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Why a user token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The signing key failed.
    #[error(transparent)]
    Sign(#[from] IdentityError),
    /// The clock is before 1970.
    #[error("the system clock is before the unix epoch")]
    Clock,
}

/// Who logged in: what the user token says about them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The subject at the identity provider (`dev:<name>` for the dev login).
    pub sub: String,
    /// Email, if the provider gave one.
    pub email: Option<String>,
    /// Display name, if the provider gave one.
    pub name: Option<String>,
    /// The issuer that authenticated the user, or `dev`.
    pub idp: String,
}

/// A minted token and its id (the only part of it that is ever logged).
#[derive(Debug, Clone)]
pub struct Minted {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp` (unix seconds).
    pub exp: u64,
}

/// Mints a user token for `user`, audience `aud`, signed by `key`.
///
/// # Errors
/// [`TokenError`].
pub fn mint(
    key: &SigningKey,
    user: &User,
    aud: &str,
    now: SystemTime,
) -> Result<Minted, TokenError> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Clock)?
        .as_secs();
    let exp = iat + USER_TOKEN_TTL.as_secs();
    let jti = crate::random_id();
    let x5c: Vec<String> = key.chain.iter().map(|c| STANDARD.encode(c)).collect();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid, "x5c": x5c});
    let claims = json!({
        "iss": key.id.to_string(),
        "sub": user.sub,
        "email": user.email,
        "name": user.name,
        "idp": user.idp,
        "aud": aud,
        "iat": iat,
        "exp": exp,
        "jti": jti,
    });
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(Minted { token, jti, exp })
}
