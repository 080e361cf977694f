//! x509pop, as SPIRE's node attestor of that name: a node proves that it holds the private key
//! of a certificate which chains to a CA the server trusts, by signing a challenge the server
//! chose. This module holds what both ends share: loading the node's key, the signed message,
//! signing and verifying it, the leaf's SHA-1 fingerprint and the node ID made from it.
//!
//! The message signed is `agentmesh x509pop v1\0`, the challenge, then the SHA-256 of the
//! CSR the node sends in the same call, so a signature answers one challenge for one node key
//! and cannot be replayed for another.

use std::sync::Arc;

use agentmesh_spiffe::{SpiffeId, TrustDomain};
use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;

/// The path under which the server names x509pop nodes:
/// `spiffe://<td>/agentmesh/node/x509pop/<SHA-1 of the leaf, lowercase hex>`, SPIRE's
/// `spire/agent/x509pop/<fingerprint>` in agentmesh's node namespace.
pub const NODE_PATH_PREFIX: &str = "/agentmesh/node/x509pop/";

/// How long the server's challenge is, in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// The signature schemes a node may answer with, in order of preference.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Why x509pop signing or verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509PopError {
    /// The key text holds no private key agentmesh can read.
    #[error(
        "holds no usable private key ({0}); give an unencrypted PEM key: PRIVATE KEY (PKCS#8), EC PRIVATE KEY or RSA PRIVATE KEY"
    )]
    Key(String),
    /// The key is of a type that none of the supported schemes signs with.
    #[error("is a key type x509pop does not sign with; use ECDSA P-256 or P-384, Ed25519 or RSA")]
    UnsupportedKey,
    /// The key is not the one the certificate carries.
    #[error("does not match the certificate's public key")]
    KeyMismatch,
    /// The signature uses a scheme the server does not accept.
    #[error("signature scheme {0:#06x} is not accepted (ECDSA P-256/P-384, Ed25519, RSA-PSS)")]
    UnsupportedScheme(u16),
    /// The leaf could not be read.
    #[error("the node certificate cannot be read: {0}")]
    Cert(String),
    /// The signature does not verify with the leaf's public key.
    #[error("the challenge signature does not verify with the node certificate's public key")]
    BadSignature,
    /// Signing failed.
    #[error("signing the challenge failed: {0}")]
    Sign(String),
}

/// The private key of a node's x509pop certificate. `Debug` never prints key material.
#[derive(Clone)]
pub struct PopKey {
    key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for PopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PopKey")
            .field("algorithm", &self.key.algorithm())
            .finish_non_exhaustive()
    }
}

impl PopKey {
    /// Reads the first unencrypted private key of a PEM text: `PRIVATE KEY` (PKCS#8),
    /// `EC PRIVATE KEY` (SEC1) or `RSA PRIVATE KEY` (PKCS#1).
    ///
    /// # Errors
    /// [`X509PopError::Key`] when there is none or it does not parse,
    /// [`X509PopError::UnsupportedKey`] for another kind of key.
    pub fn from_pem(text: &str) -> Result<Self, X509PopError> {
        let first = |label: &str| {
            crate::pem_decode_all(text, label)
                .ok()
                .and_then(|mut v| (!v.is_empty()).then(|| v.swap_remove(0)))
        };
        let der = if let Some(d) = first("PRIVATE KEY") {
            PrivateKeyDer::Pkcs8(d.into())
        } else if let Some(d) = first("EC PRIVATE KEY") {
            PrivateKeyDer::Sec1(d.into())
        } else if let Some(d) = first("RSA PRIVATE KEY") {
            PrivateKeyDer::Pkcs1(d.into())
        } else if first("ENCRYPTED PRIVATE KEY").is_some() {
            return Err(X509PopError::Key("it is encrypted".into()));
        } else {
            return Err(X509PopError::Key("no PRIVATE KEY block".into()));
        };
        let key = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| X509PopError::Key(e.to_string()))?;
        if key.choose_scheme(SCHEMES).is_none() {
            return Err(X509PopError::UnsupportedKey);
        }
        Ok(Self { key })
    }

    /// Signs `message`; returns the TLS signature scheme code and the signature.
    ///
    /// # Errors
    /// [`X509PopError::UnsupportedKey`] or [`X509PopError::Sign`].
    pub fn sign(&self, message: &[u8]) -> Result<(u16, Vec<u8>), X509PopError> {
        let signer = self
            .key
            .choose_scheme(SCHEMES)
            .ok_or(X509PopError::UnsupportedKey)?;
        let sig = signer
            .sign(message)
            .map_err(|e| X509PopError::Sign(e.to_string()))?;
        Ok((u16::from(signer.scheme()), sig))
    }

    /// Checks that this key is the one `leaf` (DER) carries, by signing a probe and verifying
    /// it with the certificate, which works for every key type alike.
    ///
    /// # Errors
    /// [`X509PopError::KeyMismatch`], or the leaf cannot be read.
    pub fn check_matches(&self, leaf: &[u8]) -> Result<(), X509PopError> {
        let probe = challenge_message(b"agentmesh x509pop key check", b"");
        let (scheme, sig) = self.sign(&probe)?;
        match verify_signature(leaf, scheme, &probe, &sig) {
            Err(X509PopError::BadSignature) => Err(X509PopError::KeyMismatch),
            other => other,
        }
    }
}

/// The bytes a node signs to answer `challenge` for the node SVID it requests with `csr`.
pub fn challenge_message(challenge: &[u8], csr: &[u8]) -> Vec<u8> {
    let csr_hash = ring::digest::digest(&ring::digest::SHA256, csr);
    let mut m = b"agentmesh x509pop v1\0".to_vec();
    m.extend_from_slice(challenge);
    m.extend_from_slice(csr_hash.as_ref());
    m
}

/// Verifies `signature` over `message` with the public key of `leaf` (DER), under the TLS
/// signature scheme `scheme`.
///
/// # Errors
/// [`X509PopError::UnsupportedScheme`], [`X509PopError::Cert`] or
/// [`X509PopError::BadSignature`].
pub fn verify_signature(
    leaf: &[u8],
    scheme: u16,
    message: &[u8],
    signature: &[u8],
) -> Result<(), X509PopError> {
    let alg = match SignatureScheme::from(scheme) {
        SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::ring::ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::ring::ECDSA_P384_SHA384,
        SignatureScheme::ED25519 => webpki::ring::ED25519,
        SignatureScheme::RSA_PSS_SHA256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return Err(X509PopError::UnsupportedScheme(scheme)),
    };
    let der = CertificateDer::from(leaf);
    let cert =
        webpki::EndEntityCert::try_from(&der).map_err(|e| X509PopError::Cert(e.to_string()))?;
    cert.verify_signature(alg, message, signature)
        .map_err(|_| X509PopError::BadSignature)
}

/// The SHA-1 fingerprint of a DER certificate, lowercase hex: what SPIRE's x509pop names
/// nodes and CAs by (`openssl x509 -noout -fingerprint -sha1`, without colons, lowercase).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node ID the server gives the holder of `leaf` (DER) in `td`.
pub fn node_id(td: &TrustDomain, leaf: &[u8]) -> SpiffeId {
    SpiffeId::from_path(td, &format!("{NODE_PATH_PREFIX}{}", fingerprint(leaf)))
        .unwrap_or_else(|_| unreachable!("a fixed prefix and hex digits make a valid path"))
}

/// Whether `id` has the shape of an x509pop node ID (any trust domain).
pub fn is_node_id(id: &SpiffeId) -> bool {
    id.path().strip_prefix(NODE_PATH_PREFIX).is_some_and(|fp| {
        fp.len() == 40
            && fp
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn cert_and_key(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = CertificateParams::new(vec!["node.example".into()]).unwrap();
        (params.self_signed(&key).unwrap().der().to_vec(), key)
    }

    #[test]
    fn every_supported_key_type_proves_possession_and_another_key_does_not() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (leaf, key) = cert_and_key(alg);
            let pop =
                PopKey::from_pem(&crate::pem_encode("PRIVATE KEY", &key.serialize_der())).unwrap();
            pop.check_matches(&leaf).unwrap();
            let msg = challenge_message(&[7; CHALLENGE_LEN], b"csr");
            let (scheme, sig) = pop.sign(&msg).unwrap();
            verify_signature(&leaf, scheme, &msg, &sig).unwrap();
            // Another challenge, or another CSR, is another message.
            let other = challenge_message(&[8; CHALLENGE_LEN], b"csr");
            assert!(matches!(
                verify_signature(&leaf, scheme, &other, &sig),
                Err(X509PopError::BadSignature)
            ));
            let (other_leaf, _) = cert_and_key(alg);
            assert!(matches!(
                pop.check_matches(&other_leaf),
                Err(X509PopError::KeyMismatch)
            ));
        }
    }

    #[test]
    fn unusable_keys_and_schemes_are_named() {
        let err =
            PopKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(err.to_string().contains("no usable private key"), "{err}");
        let err =
            PopKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(matches!(err, X509PopError::Key(_)), "{err}");
        let (leaf, _) = cert_and_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(matches!(
            verify_signature(&leaf, 0x0201, b"m", b"s"),
            Err(X509PopError::UnsupportedScheme(0x0201))
        ));
    }

    #[test]
    fn node_ids_carry_the_leaf_fingerprint() {
        let (leaf, _) = cert_and_key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let td = TrustDomain::new("example.org").unwrap();
        let id = node_id(&td, &leaf);
        let fp = fingerprint(&leaf);
        assert_eq!(fp.len(), 40);
        assert_eq!(
            id.to_string(),
            format!("spiffe://example.org/agentmesh/node/x509pop/{fp}")
        );
        assert!(is_node_id(&id));
        for other in [
            "spiffe://example.org/agentmesh/node/0123abcd",
            "spiffe://example.org/agentmesh/node/x509pop/ABCDEF0123456789ABCDEF0123456789ABCDEF01",
            "spiffe://example.org/agentmesh/node/x509pop/00",
        ] {
            assert!(!is_node_id(&SpiffeId::new(other).unwrap()), "{other}");
        }
    }
}
