//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle spec, section 4): one JWKS
//! document holding a trust domain's X.509 roots (`"use":"x509-svid"`, the certificate in
//! `x5c`) and its JWT signing keys (`"use":"jwt-svid"`), with `spiffe_sequence` and
//! `spiffe_refresh_hint`. Bundle endpoints serve it and `spire-server bundle show -format
//! spiffe` prints it; federation reads and writes nothing else.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::jwk::{JwkError, Jwks};

/// Why a SPIFFE bundle document is unusable.
///
/// # Examples
/// ```
/// let err = agentmesh_tls::SpiffeBundle::from_json(b"<html>").unwrap_err();
/// assert!(err.to_string().contains("not a SPIFFE bundle"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeBundleError {
    /// Not JSON, or not a JWKS document.
    #[error("not a SPIFFE bundle (a JWKS JSON document): {0}")]
    NotJwks(String),
    /// An `x509-svid` key is not exactly one usable certificate.
    #[error("x509-svid key {index} of the SPIFFE bundle is invalid: {reason}")]
    BadX509Authority {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `jwt-svid` key is unusable.
    #[error(transparent)]
    BadJwtKey(#[from] JwkError),
    /// The document holds no X.509 root, so it could verify no X509-SVID.
    #[error("the SPIFFE bundle holds no x509-svid authority")]
    NoX509Authorities,
}

/// A trust domain's bundle in the SPIFFE bundle format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpiffeBundle {
    /// The X.509 roots, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The JWT signing keys (their `spiffe_sequence` and `spiffe_refresh_hint` are unused:
    /// the bundle's own fields below hold them).
    pub jwt_keys: Jwks,
    /// `spiffe_sequence`, if the publisher set one.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint` in seconds, if the publisher set one.
    pub refresh_hint: Option<i64>,
}

impl SpiffeBundle {
    /// Parses a SPIFFE bundle document. Keys of another `use` are ignored, as the spec
    /// asks; JWT keys that are not EC P-256 are skipped with a warning (the mesh cannot
    /// verify with them).
    ///
    /// # Errors
    /// [`SpiffeBundleError`]: not a JWKS document, an unusable key, or no X.509 root.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_tls::SpiffeBundle;
    /// let err = SpiffeBundle::from_json(br#"{"keys":[]}"#).unwrap_err();
    /// assert!(err.to_string().contains("no x509-svid authority"));
    /// ```
    pub fn from_json(doc: &[u8]) -> Result<Self, SpiffeBundleError> {
        let text =
            std::str::from_utf8(doc).map_err(|_| SpiffeBundleError::NotJwks("not UTF-8".into()))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| SpiffeBundleError::NotJwks(e.to_string()))?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| SpiffeBundleError::NotJwks("no \"keys\" array".into()))?;
        let mut x509_authorities = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            if key.get("use").and_then(Value::as_str) != Some("x509-svid") {
                continue;
            }
            let bad = |reason: &str| SpiffeBundleError::BadX509Authority {
                index,
                reason: reason.to_owned(),
            };
            let x5c = key
                .get("x5c")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no x5c"))?;
            let [cert] = x5c.as_slice() else {
                return Err(bad("x5c must hold exactly one certificate"));
            };
            let der = cert
                .as_str()
                .and_then(|c| STANDARD.decode(c).ok())
                .ok_or_else(|| bad("x5c is not base64"))?;
            X509Certificate::from_der(&der).map_err(|e| bad(&format!("not a certificate: {e}")))?;
            x509_authorities.push(der);
        }
        if x509_authorities.is_empty() {
            return Err(SpiffeBundleError::NoX509Authorities);
        }
        let mut jwt_keys = Jwks::from_json(text)?;
        let sequence = jwt_keys.spiffe_sequence.take();
        let refresh_hint = jwt_keys.spiffe_refresh_hint.take();
        Ok(Self {
            x509_authorities,
            jwt_keys,
            sequence,
            refresh_hint,
        })
    }

    /// Serializes to the SPIFFE bundle document. Each root carries its public key's JWK
    /// parameters beside `x5c` (go-jose, and so go-spiffe and SPIRE, check that they agree).
    ///
    /// # Errors
    /// [`SpiffeBundleError::BadX509Authority`] for a root that does not parse.
    pub fn to_json(&self) -> Result<String, SpiffeBundleError> {
        let mut keys = Vec::new();
        for (index, der) in self.x509_authorities.iter().enumerate() {
            let mut key = root_jwk(der)
                .map_err(|reason| SpiffeBundleError::BadX509Authority { index, reason })?;
            key["use"] = json!("x509-svid");
            key["x5c"] = json!([STANDARD.encode(der)]);
            keys.push(key);
        }
        for k in &self.jwt_keys.keys {
            let mut v = serde_json::to_value(k).unwrap_or(Value::Null);
            v["use"] = json!("jwt-svid");
            keys.push(v);
        }
        let mut doc = json!({ "keys": keys });
        if let Some(seq) = self.sequence {
            doc["spiffe_sequence"] = json!(seq);
        }
        if let Some(hint) = self.refresh_hint {
            doc["spiffe_refresh_hint"] = json!(hint);
        }
        Ok(doc.to_string())
    }
}

/// The JWK parameters of a certificate's public key: EC P-256/P-384 or RSA.
fn root_jwk(der: &[u8]) -> Result<Value, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let bytes = point.data();
            let (crv, len) = match bytes.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                n => return Err(format!("EC point of {n} bytes is not P-256 or P-384")),
            };
            Ok(json!({
                "kty": "EC",
                "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&bytes[1..=len]),
                "y": URL_SAFE_NO_PAD.encode(&bytes[1 + len..]),
            }))
        }
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| -> Vec<u8> {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            Ok(json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(trim(rsa.modulus)),
                "e": URL_SAFE_NO_PAD.encode(trim(rsa.exponent)),
            }))
        }
        _ => Err("the root's key is neither EC nor RSA".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_bundle_round_trips_with_its_sequence_and_refresh_hint() {
        let bundle = SpiffeBundle {
            x509_authorities: vec![root(), root()],
            jwt_keys: Jwks::from_json(
                r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","use":"jwt-svid",
                "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
            )
            .unwrap(),
            sequence: Some(3),
            refresh_hint: Some(60),
        };
        let doc = bundle.to_json().unwrap();
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["keys"][0]["kty"], "EC");
        assert_eq!(v["keys"][0]["crv"], "P-256");
        assert_eq!(SpiffeBundle::from_json(doc.as_bytes()).unwrap(), bundle);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (doc, want) in [
            (&b"<html>hello</html>"[..], "not a SPIFFE bundle"),
            (br#"{"nokeys":1}"#, "no \"keys\" array"),
            (
                br#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#,
                "not a certificate",
            ),
            (
                br#"{"keys":[{"use":"x509-svid","x5c":["!"]}]}"#,
                "not base64",
            ),
            (br#"{"keys":[{"use":"jwt-svid"}]}"#, "no x509-svid"),
        ] {
            let err = SpiffeBundle::from_json(doc).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
