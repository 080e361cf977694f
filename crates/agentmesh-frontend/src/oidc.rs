//! OIDC login as a relying party: discovery, the authorization code flow with PKCE (S256),
//! the code exchange and the `id_token` check ([`id_token`]).
//!
//! Written on the frontend's own HTTP client and ring rather than the `openidconnect` crate:
//! that crate brings its own HTTP stack (reqwest or ureq), RSA and elliptic-curve crates
//! (`rsa`, `p256`, `p384`, `ed25519-dalek`), `chrono` and a second `base64`, all duplicating
//! what the tree already has (hyper-rustls, ring, time, base64 0.22). The part of OIDC a
//! relying party needs is small: this module is it.

pub mod id_token;

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::config::{AuthMethod, OidcConfig};
use crate::http::HttpClient;
pub use id_token::{Expected, IdClaims, IdTokenError, IssuerKeys};

/// Why a step of the login failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The issuer could not be reached.
    #[error("issuer {0}: {1}")]
    Http(String, crate::http::HttpError),
    /// The issuer answered with an error status or an unusable document.
    #[error("issuer {0}: {1}")]
    Issuer(String, String),
    /// The discovery document names another issuer (OIDC Discovery §4.3).
    #[error("discovery at {want} names issuer {got:?}; it must be identical")]
    IssuerMismatch {
        /// The configured issuer.
        want: String,
        /// What discovery said.
        got: String,
    },
    /// The token response had no id_token.
    #[error("the token endpoint returned no id_token")]
    NoIdToken,
    /// The id_token was refused.
    #[error(transparent)]
    IdToken(#[from] IdTokenError),
}

/// The parts of the discovery document the login uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// `issuer`.
    pub issuer: String,
    /// `authorization_endpoint`.
    pub authorization_endpoint: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
}

/// The relying party for one configured issuer.
#[derive(Debug)]
pub struct Client {
    cfg: OidcConfig,
    http: HttpClient,
    redirect_uri: String,
    discovery: Discovery,
    keys: Mutex<IssuerKeys>,
}

/// A fresh random value, base64url (state, nonce, PKCE verifier: 256 bits each).
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    // The system RNG does not fail on Linux once booted; a zero buffer would be caught by
    // nothing, so fail loudly instead.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .unwrap_or_else(|_| panic!("BUG: the system RNG failed"));
    URL_SAFE_NO_PAD.encode(b)
}

/// The PKCE S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

impl Client {
    /// Discovers the issuer and fetches its keys.
    ///
    /// # Errors
    /// [`OidcError`].
    pub async fn discover(
        cfg: OidcConfig,
        http: HttpClient,
        redirect_uri: String,
    ) -> Result<Self, OidcError> {
        let issuer = cfg.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let discovery: Discovery = get_json(&http, &url).await?;
        if discovery.issuer != cfg.issuer {
            return Err(OidcError::IssuerMismatch {
                want: cfg.issuer.clone(),
                got: discovery.issuer,
            });
        }
        let keys = fetch_keys(&http, &discovery.jwks_uri).await?;
        tracing::info!(issuer = %cfg.issuer, "OIDC issuer discovered");
        Ok(Self {
            cfg,
            http,
            redirect_uri,
            discovery,
            keys: Mutex::new(keys),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// The `[oidc]` table this client was made from.
    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// The URL `/login` redirects to.
    pub fn authorize_url(&self, state: &str, nonce: &str, verifier: &str) -> String {
        let mut scopes = self.cfg.scopes.clone();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if self.discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}{query}", self.discovery.authorization_endpoint)
    }

    /// The token request's headers and form body. Built outside the async fn because the
    /// form serializer is not Send and must not live across an await.
    fn token_request(
        &self,
        code: &str,
        verifier: &str,
    ) -> Result<(Vec<(HeaderName, HeaderValue)>, Bytes), OidcError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_verifier", verifier);
        let mut headers = vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            ),
            (
                HeaderName::from_static("accept"),
                HeaderValue::from_static("application/json"),
            ),
        ];
        let secret = self.cfg.client_secret.as_deref().unwrap_or("");
        match self.cfg.auth_method {
            AuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let basic =
                    STANDARD.encode(format!("{}:{}", enc(&self.cfg.client_id), enc(secret)));
                let value = HeaderValue::from_str(&format!("Basic {basic}"))
                    .map_err(|e| OidcError::Issuer(self.cfg.issuer.clone(), e.to_string()))?;
                headers.push((http::header::AUTHORIZATION, value));
            }
            AuthMethod::ClientSecretPost => {
                form.append_pair("client_id", &self.cfg.client_id)
                    .append_pair("client_secret", secret);
            }
            AuthMethod::None => {
                form.append_pair("client_id", &self.cfg.client_id);
            }
        }
        Ok((headers, Bytes::from(form.finish())))
    }

    /// Exchanges `code` at the token endpoint and verifies the `id_token` against `nonce`;
    /// `nonce_used` names replays. The caller records the nonce as used afterwards.
    ///
    /// # Errors
    /// [`OidcError`].
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        nonce_used: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<IdClaims, OidcError> {
        let (headers, body) = self.token_request(code, verifier)?;
        let url = &self.discovery.token_endpoint;
        let (status, body) = self
            .http
            .send(Method::POST, url, headers, body)
            .await
            .map_err(|e| OidcError::Http(url.clone(), e))?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Issuer(url.clone(), format!("token response: {e}")))?;
        if !status.is_success() {
            // The OAuth error code and description are safe to show; they carry no secret.
            let err = json.get("error").and_then(|v| v.as_str()).unwrap_or("?");
            let desc = json
                .get("error_description")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            return Err(OidcError::Issuer(
                url.clone(),
                format!("token endpoint said {status}: {err} {desc}"),
            ));
        }
        let token = json
            .get("id_token")
            .and_then(|v| v.as_str())
            .ok_or(OidcError::NoIdToken)?;
        self.verify(token, nonce, nonce_used).await
    }

    /// Verifies an `id_token`, refetching the issuer's JWKS once if its `kid` is unknown
    /// (the issuer rotated its keys).
    ///
    /// # Errors
    /// [`OidcError`].
    pub async fn verify(
        &self,
        token: &str,
        nonce: &str,
        nonce_used: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<IdClaims, OidcError> {
        let kid = id_token::parse(token)?.kid;
        let known = {
            let keys = self
                .keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            kid.as_deref().is_none_or(|k| keys.has_kid(k))
        };
        if !known {
            let fresh = fetch_keys(&self.http, &self.discovery.jwks_uri).await?;
            *self
                .keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
        let keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let want = Expected {
            issuer: &self.cfg.issuer,
            client_id: &self.cfg.client_id,
            nonce,
            nonce_used,
        };
        Ok(id_token::verify(
            token,
            &keys,
            want,
            std::time::SystemTime::now(),
        )?)
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &HttpClient,
    url: &str,
) -> Result<T, OidcError> {
    let (status, body) = http
        .get(url)
        .await
        .map_err(|e| OidcError::Http(url.to_owned(), e))?;
    if !status.is_success() {
        return Err(OidcError::Issuer(
            url.to_owned(),
            format!("answered {status}"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| OidcError::Issuer(url.to_owned(), e.to_string()))
}

async fn fetch_keys(http: &HttpClient, url: &str) -> Result<IssuerKeys, OidcError> {
    let (status, body) = http
        .get(url)
        .await
        .map_err(|e| OidcError::Http(url.to_owned(), e))?;
    if !status.is_success() {
        return Err(OidcError::Issuer(
            url.to_owned(),
            format!("answered {status}"),
        ));
    }
    Ok(IssuerKeys::from_json(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
