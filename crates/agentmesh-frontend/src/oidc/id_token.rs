//! The `id_token` verifier: signature (RS256 or ES256, against the issuer's JWKS), `iss`,
//! `aud`, `exp` and `nonce`, checked by hand on ring.
//!
//! `alg` comes from the key, never trusted from the token alone: an RS256 token is only
//! verified with an RSA key and an ES256 one with an EC P-256 key, so `none` and HMAC
//! confusion attacks have nothing to work with.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// Allowed clock difference with the issuer.
pub const LEEWAY_SECS: i64 = 60;

/// Tokens longer than this are refused unparsed.
const MAX_TOKEN_LEN: usize = 32 * 1024;

/// Why an `id_token` was refused. Each message is the reason shown to the user and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdTokenError {
    /// Not a compact JWS with JSON header and claims.
    #[error("id_token is malformed: {0}")]
    Malformed(String),
    /// `alg` is not RS256 or ES256.
    #[error("id_token alg {0:?} is not accepted (RS256 or ES256 only)")]
    UnsupportedAlg(String),
    /// No issuer key matches the header's `kid` and `alg`.
    #[error("id_token key {0:?} is not in the issuer's JWKS")]
    UnknownKey(String),
    /// The signature does not verify: the token was altered or signed by another key.
    #[error("id_token signature does not verify (tampered, or signed by another key)")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("id_token is from issuer {got:?}, not the configured {want:?}")]
    WrongIssuer {
        /// The configured issuer.
        want: String,
        /// The token's `iss`.
        got: String,
    },
    /// `aud` does not contain our client id.
    #[error("id_token audience does not include client {0:?}")]
    WrongAudience(String),
    /// `exp` has passed.
    #[error("id_token expired at {0} (unix seconds)")]
    Expired(i64),
    /// The `nonce` is not the one this login sent.
    #[error("id_token nonce does not match this login")]
    NonceMismatch,
    /// The `nonce` was already used by an earlier login: a replayed token.
    #[error("id_token nonce was already used by an earlier login (replay)")]
    NonceReplayed,
    /// A JWKS key is unusable.
    #[error("issuer JWKS is invalid: {0}")]
    BadJwks(String),
}

/// One usable issuer key.
#[derive(Debug, Clone)]
enum IssuerKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { point: Vec<u8> },
}

/// The issuer's signing keys, from its JWKS document.
#[derive(Debug, Clone, Default)]
pub struct IssuerKeys {
    keys: Vec<(Option<String>, IssuerKey)>,
}

impl IssuerKeys {
    /// Parses a JWKS document, keeping RSA and EC P-256 signing keys and skipping others.
    ///
    /// # Errors
    /// [`IdTokenError::BadJwks`] if it is not a JWKS.
    pub fn from_json(bytes: &[u8]) -> Result<Self, IdTokenError> {
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| IdTokenError::BadJwks(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| IdTokenError::BadJwks("no \"keys\" array".into()))?;
        let b64 = |v: &Value, name: &str| -> Option<Vec<u8>> {
            URL_SAFE_NO_PAD
                .decode(v.get(name)?.as_str()?.trim_end_matches('='))
                .ok()
        };
        let mut keys = Vec::new();
        for k in list {
            if k.get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_owned);
            let key = match k.get("kty").and_then(Value::as_str) {
                Some("RSA") => match (b64(k, "n"), b64(k, "e")) {
                    (Some(n), Some(e)) => IssuerKey::Rsa { n, e },
                    _ => continue,
                },
                Some("EC") if k.get("crv").and_then(Value::as_str) == Some("P-256") => {
                    match (b64(k, "x"), b64(k, "y")) {
                        (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                            let mut point = vec![0x04];
                            point.extend_from_slice(&x);
                            point.extend_from_slice(&y);
                            IssuerKey::Ec { point }
                        }
                        _ => continue,
                    }
                }
                _ => continue,
            };
            keys.push((kid, key));
        }
        Ok(Self { keys })
    }

    /// Whether a key with this `kid` is known (so an unknown one can trigger a refetch).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k.as_deref() == Some(kid))
    }
}

/// What was verified, and what the frontend keeps of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// `sub`.
    pub sub: String,
    /// `email`.
    pub email: Option<String>,
    /// `name` (or `preferred_username`).
    pub name: Option<String>,
    /// `nonce`.
    pub nonce: String,
    /// `exp`.
    pub exp: i64,
    /// Every claim of the verified token, for the configured admin claim.
    pub all: Map<String, Value>,
}

/// The parts of a token before its key is known: used to pick the key, never trusted.
#[derive(Debug)]
pub struct Unverified<'a> {
    /// `alg`.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
    signing_input: &'a str,
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

fn json_part(b64: &str, what: &str) -> Result<Map<String, Value>, IdTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| IdTokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(IdTokenError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
    }
}

/// Splits a compact JWS.
///
/// # Errors
/// [`IdTokenError::Malformed`].
pub fn parse(token: &str) -> Result<Unverified<'_>, IdTokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(IdTokenError::Malformed("too long".into()));
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(IdTokenError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let header = json_part(h, "header")?;
    let claims = json_part(p, "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| IdTokenError::Malformed(format!("signature is not base64url: {e}")))?;
    Ok(Unverified {
        alg: header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        claims,
    })
}

/// What the verifier expects.
#[derive(Clone, Copy)]
pub struct Expected<'a> {
    /// The configured issuer.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce this login sent.
    pub nonce: &'a str,
    /// Whether a nonce was already used by an earlier login, so that a replayed id_token
    /// is named as such rather than as a mere mismatch.
    pub nonce_used: &'a (dyn Fn(&str) -> bool + Sync),
}

impl std::fmt::Debug for Expected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Verifies an `id_token` completely. The caller records the nonce as used afterwards.
///
/// # Errors
/// [`IdTokenError`], the first check that failed, in the order signature, `iss`, `aud`,
/// `exp`, `nonce`.
pub fn verify(
    token: &str,
    keys: &IssuerKeys,
    want: Expected<'_>,
    now: SystemTime,
) -> Result<IdClaims, IdTokenError> {
    let t = parse(token)?;
    let candidates = keys.keys.iter().filter(|(kid, key)| {
        let alg_fits = matches!(
            (t.alg.as_str(), key),
            ("RS256", IssuerKey::Rsa { .. }) | ("ES256", IssuerKey::Ec { .. })
        );
        alg_fits && (t.kid.is_none() || kid.as_deref() == t.kid.as_deref())
    });
    if !matches!(t.alg.as_str(), "RS256" | "ES256") {
        return Err(IdTokenError::UnsupportedAlg(t.alg));
    }
    let mut tried = false;
    let mut ok = false;
    for (_, key) in candidates {
        tried = true;
        let input = t.signing_input.as_bytes();
        ok = match key {
            IssuerKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, &t.signature)
                .is_ok(),
            IssuerKey::Ec { point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input, &t.signature)
                    .is_ok()
            }
        };
        if ok {
            break;
        }
    }
    if !tried {
        return Err(IdTokenError::UnknownKey(t.kid.unwrap_or_default()));
    }
    if !ok {
        return Err(IdTokenError::BadSignature);
    }
    let c = &t.claims;
    let s = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_owned);
    let iss = s("iss").unwrap_or_default();
    if iss != want.issuer {
        return Err(IdTokenError::WrongIssuer {
            want: want.issuer.to_owned(),
            got: iss,
        });
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == want.client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want.client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::WrongAudience(want.client_id.to_owned()));
    }
    let exp = c
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| IdTokenError::Malformed("no numeric exp".into()))?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if exp + LEEWAY_SECS <= now {
        return Err(IdTokenError::Expired(exp));
    }
    let nonce = s("nonce").unwrap_or_default();
    if (want.nonce_used)(&nonce) {
        return Err(IdTokenError::NonceReplayed);
    }
    if nonce != want.nonce {
        return Err(IdTokenError::NonceMismatch);
    }
    let sub = s("sub").ok_or_else(|| IdTokenError::Malformed("no sub".into()))?;
    Ok(IdClaims {
        sub,
        email: s("email"),
        name: s("name").or_else(|| s("preferred_username")),
        nonce,
        exp,
        all: t.claims.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    struct Idp {
        pair: EcdsaKeyPair,
    }

    impl Idp {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
                    .unwrap();
            Self { pair }
        }
        fn jwks(&self) -> IssuerKeys {
            let p = self.pair.public_key().as_ref();
            let doc = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]});
            IssuerKeys::from_json(doc.to_string().as_bytes()).unwrap()
        }
        fn sign(&self, claims: &Value) -> String {
            let h = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "k1"}).to_string());
            let p = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{h}.{p}");
            let sig = self
                .pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    fn now() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.test", "aud": "agentmesh", "sub": "alice",
            "email": "alice@example.com", "exp": now() + 300, "nonce": "n1"})
    }

    fn never_used(_: &str) -> bool {
        false
    }

    const WANT: Expected<'static> = Expected {
        issuer: "https://idp.test",
        client_id: "agentmesh",
        nonce: "n1",
        nonce_used: &never_used,
    };

    #[test]
    fn a_used_nonce_is_named_a_replay() {
        let idp = Idp::new();
        let used = |n: &str| n == "n1";
        let want = Expected {
            nonce_used: &used,
            ..WANT
        };
        let got = verify(&idp.sign(&claims()), &idp.jwks(), want, SystemTime::now()).unwrap_err();
        assert_eq!(got, IdTokenError::NonceReplayed);
    }

    #[test]
    fn a_good_id_token_verifies() {
        let idp = Idp::new();
        let c = verify(&idp.sign(&claims()), &idp.jwks(), WANT, SystemTime::now()).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.email.as_deref(), Some("alice@example.com"));
    }

    #[test]
    fn an_issuer_that_signs_with_a_high_s_is_accepted() {
        // OIDC (JWA ES256) does not require low S; many IdPs emit either half of the pair.
        let idp = Idp::new();
        let token = idp.sign(&claims());
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let high = if agentmesh_tls::ecdsa::is_low_s(&sig) {
            agentmesh_tls::ecdsa::mirror_s(&sig).unwrap().to_vec()
        } else {
            sig
        };
        assert!(!agentmesh_tls::ecdsa::is_low_s(&high));
        let high_token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&high));
        let c = verify(&high_token, &idp.jwks(), WANT, SystemTime::now()).unwrap();
        assert_eq!(c.sub, "alice");
    }

    #[test]
    fn attacks_on_the_id_token_are_refused_with_their_reason() {
        let idp = Idp::new();
        let other = Idp::new();
        let good = idp.sign(&claims());
        let mut tampered_claims = claims();
        tampered_claims["sub"] = json!("mallory");
        let (h, _) = good.split_once('.').unwrap();
        let sig = good.rsplit_once('.').unwrap().1;
        let tampered = format!(
            "{h}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(tampered_claims.to_string())
        );
        let mut expired = claims();
        expired["exp"] = json!(now() - 3600);
        let mut foreign = claims();
        foreign["iss"] = json!("https://evil.test");
        let mut wrong_aud = claims();
        wrong_aud["aud"] = json!(["someone-else"]);
        let mut wrong_nonce = claims();
        wrong_nonce["nonce"] = json!("n2");
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        for (token, want) in [
            (tampered, IdTokenError::BadSignature),
            (other.sign(&claims()), IdTokenError::BadSignature),
            (idp.sign(&expired), IdTokenError::Expired(now() - 3600)),
            (
                idp.sign(&foreign),
                IdTokenError::WrongIssuer {
                    want: "https://idp.test".into(),
                    got: "https://evil.test".into(),
                },
            ),
            (
                idp.sign(&wrong_aud),
                IdTokenError::WrongAudience("agentmesh".into()),
            ),
            (idp.sign(&wrong_nonce), IdTokenError::NonceMismatch),
            (none_alg, IdTokenError::UnsupportedAlg("none".into())),
            (
                "a.b".into(),
                IdTokenError::Malformed("not three dot-separated parts".into()),
            ),
        ] {
            let got = verify(&token, &idp.jwks(), WANT, SystemTime::now()).unwrap_err();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn an_rsa_jwks_key_is_never_used_for_an_es256_token() {
        let idp = Idp::new();
        let doc = json!({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]});
        let keys = IssuerKeys::from_json(doc.to_string().as_bytes()).unwrap();
        let got = verify(&idp.sign(&claims()), &keys, WANT, SystemTime::now()).unwrap_err();
        assert_eq!(got, IdTokenError::UnknownKey("k1".into()));
    }
}
