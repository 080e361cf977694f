//! The SPIFFE JWT bundle format: public EC P-256 JSON Web Keys and the JWKS document that
//! carries them. Here rather than in agentmesh-ca because verifiers (the SDK, the node's
//! cache) read bundles without ever minting anything.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a JWK or a JWKS document is unusable.
///
/// # Examples
/// ```
/// let err = agentmesh_tls::Jwks::from_json("not json").unwrap_err();
/// assert!(matches!(err, agentmesh_tls::JwkError::BadJwks(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    /// A JWK in a bundle is unusable.
    #[error("JWK {kid:?} in the trust bundle is invalid: {reason}")]
    BadJwk {
        /// The key's id.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// The JWKS document is not valid JSON of the SPIFFE bundle shape.
    #[error("JWT bundle is not a valid JWKS document: {0}")]
    BadJwks(String),
}

/// A public EC P-256 JSON Web Key as SPIFFE JWT bundles carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type, `EC`.
    pub kty: String,
    /// Curve, `P-256`.
    pub crv: String,
    /// The point's x coordinate, base64url without padding.
    pub x: String,
    /// The point's y coordinate, base64url without padding.
    pub y: String,
    /// Key id, matched against a token's header `kid`.
    pub kid: String,
    /// Key use, `jwt-svid` in SPIFFE bundles.
    #[serde(rename = "use", default)]
    pub key_use: String,
}

impl Jwk {
    /// The uncompressed point `0x04 || x || y` that ring verifies with.
    ///
    /// # Errors
    /// [`JwkError::BadJwk`] if this is not an EC P-256 key with 32-byte coordinates.
    pub fn uncompressed_point(&self) -> Result<[u8; 65], JwkError> {
        let bad = |reason: String| JwkError::BadJwk {
            kid: self.kid.clone(),
            reason,
        };
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(bad(format!(
                "kty {:?} crv {:?}, want EC P-256",
                self.kty, self.crv
            )));
        }
        let x = URL_SAFE_NO_PAD
            .decode(&self.x)
            .map_err(|e| bad(format!("x: {e}")))?;
        let y = URL_SAFE_NO_PAD
            .decode(&self.y)
            .map_err(|e| bad(format!("y: {e}")))?;
        if x.len() != 32 || y.len() != 32 {
            return Err(bad(format!(
                "coordinates are {} and {} bytes, want 32",
                x.len(),
                y.len()
            )));
        }
        let mut point = [0u8; 65];
        point[0] = 0x04;
        point[1..33].copy_from_slice(&x);
        point[33..].copy_from_slice(&y);
        Ok(point)
    }
}

/// A JWT bundle: the SPIFFE JWKS document `{"keys":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Jwks {
    /// The JWT-SVID signing keys.
    pub keys: Vec<Jwk>,
    /// The bundle's sequence number, if the publisher set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_sequence: Option<u64>,
    /// The suggested refresh interval in seconds, if the publisher set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_refresh_hint: Option<i64>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
    #[serde(default)]
    spiffe_refresh_hint: Option<i64>,
}

impl Jwks {
    /// A bundle holding these keys.
    pub fn new(keys: Vec<Jwk>) -> Self {
        Self {
            keys,
            ..Self::default()
        }
    }

    /// The key with this id, if any.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Serializes to the SPIFFE JWKS JSON document.
    pub fn to_json(&self) -> String {
        // Only strings and integers: serde_json cannot fail on this shape.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"keys\":[]}"))
    }

    /// Parses a SPIFFE JWKS JSON document.
    ///
    /// Keys marked `"use":"x509-svid"` (X.509 roots in a full SPIFFE bundle) are skipped, as are
    /// non-P-256 keys, which the mesh cannot verify with (a warning is logged).
    ///
    /// # Errors
    /// [`JwkError::BadJwks`] for invalid JSON or shape, [`JwkError::BadJwk`] for an EC P-256
    /// key with unusable coordinates.
    pub fn from_json(json: &str) -> Result<Self, JwkError> {
        let raw: RawJwks =
            serde_json::from_str(json).map_err(|e| JwkError::BadJwks(e.to_string()))?;
        let mut keys = Vec::with_capacity(raw.keys.len());
        for value in raw.keys {
            let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
            if field("use") == "x509-svid" {
                continue;
            }
            if field("kty") != "EC" || field("crv") != "P-256" {
                tracing::warn!(
                    kid = field("kid"),
                    kty = field("kty"),
                    crv = field("crv"),
                    "skipping JWT bundle key that is not EC P-256"
                );
                continue;
            }
            let jwk: Jwk =
                serde_json::from_value(value).map_err(|e| JwkError::BadJwks(e.to_string()))?;
            jwk.uncompressed_point()?;
            keys.push(jwk);
        }
        Ok(Self {
            keys,
            spiffe_sequence: raw.spiffe_sequence,
            spiffe_refresh_hint: raw.spiffe_refresh_hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn a_bundle_keeps_its_p256_keys_and_skips_the_rest() {
        let doc = serde_json::json!({
            "spiffe_sequence": 7,
            "keys": [
                {"kty":"EC","crv":"P-256","kid":"k","use":"jwt-svid","x":X,"y":Y},
                {"kty":"EC","crv":"P-256","use":"x509-svid","x5c":["AAAA"],"x":"AA","y":"AA"},
                {"kty":"RSA","use":"jwt-svid","kid":"r","n":"AQAB","e":"AQAB"},
            ]
        });
        let jwks = Jwks::from_json(&doc.to_string()).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.spiffe_sequence, Some(7));
        assert_eq!(
            jwks.find("k").unwrap().uncompressed_point().unwrap()[0],
            0x04
        );
        assert_eq!(Jwks::from_json(&jwks.to_json()).unwrap(), jwks);
    }

    #[test]
    fn short_coordinates_are_refused_naming_the_key() {
        let bad =
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","use":"jwt-svid","x":"AA","y":"AA"}]}"#;
        assert!(matches!(
            Jwks::from_json(bad),
            Err(JwkError::BadJwk { kid, .. }) if kid == "k"
        ));
        assert!(matches!(Jwks::from_json("[]"), Err(JwkError::BadJwks(_))));
    }
}
