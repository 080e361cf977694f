//! User tokens: the logged-in person, as an ES256 JWT signed with the frontend's SVID key.
//!
//! Header: `{"alg":"ES256","typ":"JWT","kid":<RFC 7638 thumbprint>,"x5c":[<SVID chain,
//! base64 DER, leaf first>]}`. Claims: `iss` (the frontend's SPIFFE ID), `sub`, `email`,
//! `name`, `aud`, `iat`, `exp` (`iat` + 5 min), `jti`, `idp` (the OIDC issuer that
//! authenticated the user, or `dev` for the dev login) and, when the user has any, `groups`
//! (the id_token's `groups`, or those typed at the dev login), which MCP permissions'
//! `user.claims` rules read. A verifier can check the signature
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
    /// The user's groups: the id_token's `groups` claim (a string or a list of strings), or
    /// those given at the dev login; empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// At most this many groups are carried into a user token, each at most [`GROUP_MAX`]
/// bytes: a token travels in a header on every hop, and an identity provider that sends
/// thousands of groups must not make it too large to send.
pub const GROUPS_MAX: usize = 64;
/// The longest group name carried.
pub const GROUP_MAX: usize = 256;

/// The groups of an id_token's `groups` claim: a string or a list of strings; other
/// values, empty or overlong names and anything past [`GROUPS_MAX`] are left out.
pub fn groups_from_claim(value: Option<&serde_json::Value>) -> Vec<String> {
    let ok = |g: &str| !g.is_empty() && g.len() <= GROUP_MAX && !g.chars().any(char::is_control);
    let list: Vec<String> = match value {
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .filter(|g| ok(g))
        .take(GROUPS_MAX)
        .collect()
}

/// The dev login's `groups` field: comma-separated names.
///
/// # Errors
/// A name that is empty between commas, too long or has control characters, or too many.
pub fn dev_groups(field: &str) -> Result<Vec<String>, String> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(Vec::new());
    }
    let groups: Vec<String> = field.split(',').map(|g| g.trim().to_owned()).collect();
    if groups.len() > GROUPS_MAX {
        return Err(format!("at most {GROUPS_MAX} groups"));
    }
    for g in &groups {
        if g.is_empty() || g.len() > GROUP_MAX || g.chars().any(char::is_control) {
            return Err(format!(
                "groups are comma-separated names of 1 to {GROUP_MAX} characters; {g:?} is not one"
            ));
        }
    }
    Ok(groups)
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
    let mut claims = json!({
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
    if !user.groups.is_empty() {
        claims["groups"] = json!(user.groups);
    }
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(Minted { token, jti, exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_a_string_or_a_list_and_stay_bounded() {
        let cases = [
            (json!("finance"), vec!["finance"]),
            (json!(["finance", "eng"]), vec!["finance", "eng"]),
            (json!(["finance", 7, ["x"], "", "a\nb"]), vec!["finance"]),
            (json!(7), vec![]),
            (json!({"finance": true}), vec![]),
        ];
        for (claim, want) in cases {
            assert_eq!(groups_from_claim(Some(&claim)), want, "{claim}");
        }
        assert!(groups_from_claim(None).is_empty());
        let many: Vec<String> = (0..1000).map(|n| format!("g{n}")).collect();
        assert_eq!(groups_from_claim(Some(&json!(many))).len(), GROUPS_MAX);
        assert!(groups_from_claim(Some(&json!(["x".repeat(GROUP_MAX + 1)]))).is_empty());
        assert_eq!(dev_groups(" finance , eng ").unwrap(), ["finance", "eng"]);
        assert!(dev_groups("").unwrap().is_empty());
        assert!(dev_groups("a,,b").is_err());
        assert!(dev_groups(&vec!["g"; GROUPS_MAX + 1].join(",")).is_err());
    }
}
