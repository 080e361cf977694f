//! PKCS#10 certificate signing requests: building them on the node, checking them on the server.

use rcgen::{CertificateParams, DistinguishedName, DnType, PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::keys::PrivateKey;

/// Why a CSR could not be built or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request.
    #[error("CSR is not valid PKCS#10 DER: {0}; send the raw DER of a certificate request")]
    Malformed(String),
    /// The request's self-signature does not verify with its own public key.
    #[error(
        "CSR signature does not verify with the CSR's public key; the request was altered or signed with another key"
    )]
    BadSignature,
    /// The request's public key is not ECDSA P-256.
    #[error("CSR public key is {0}, but agentmesh only issues SVIDs for ECDSA P-256 keys")]
    UnsupportedKey(String),
    /// The request is signed with something other than ecdsa-with-SHA256.
    #[error("CSR is signed with algorithm {0}, but only ecdsa-with-SHA256 is accepted")]
    UnsupportedSignatureAlgorithm(String),
    /// rcgen could not build the request.
    #[error("could not build a CSR: {0}")]
    Build(#[source] rcgen::Error),
}

/// A verified ECDSA P-256 public key, ready to be put in a certificate by rcgen.
#[derive(Clone, PartialEq, Eq)]
pub struct CsrPublicKey {
    spki: rcgen::SubjectPublicKeyInfo,
    der: Vec<u8>,
}

impl CsrPublicKey {
    /// Builds a key from SubjectPublicKeyInfo DER, such as [`PrivateKey::public_key_der`],
    /// for when there is no CSR (the server minting its own SVIDs).
    ///
    /// # Errors
    /// [`CsrError::Malformed`] for unparsable DER, [`CsrError::UnsupportedKey`] for anything
    /// but an uncompressed P-256 point.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(
                "trailing bytes after the public key".to_owned(),
            ));
        }
        Self::from_parsed(&spki)
    }

    fn from_parsed(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, CsrError> {
        require_p256(spki)?;
        let parsed = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
        if parsed.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CsrError::UnsupportedKey(format!(
                "{:?}",
                parsed.algorithm()
            )));
        }
        Ok(Self {
            spki: parsed,
            der: spki.raw.to_vec(),
        })
    }

    /// The key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.der
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        self.spki.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.spki.algorithm()
    }
}

impl std::fmt::Debug for CsrPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrPublicKey")
            .field("algorithm", &"ECDSA P-256")
            .field("point_len", &self.spki.der_bytes().len())
            .finish()
    }
}

fn require_p256(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!(
            "key algorithm {}",
            spki.algorithm.algorithm
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match curve {
        Some(c) if c == OID_EC_P256 => {}
        Some(c) => return Err(CsrError::UnsupportedKey(format!("EC curve {c}"))),
        None => {
            return Err(CsrError::UnsupportedKey(
                "EC key without a named curve".into(),
            ));
        }
    }
    let point = &spki.subject_public_key.data;
    // ring (and thus verification) only takes uncompressed points: 0x04 || x || y.
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CsrError::UnsupportedKey(
            "P-256 key that is not an uncompressed point".into(),
        ));
    }
    Ok(())
}

/// Builds a PKCS#10 CSR signed by `key`, as DER.
///
/// The subject is a fixed placeholder: the server decides the SPIFFE ID and ignores the subject.
///
/// # Errors
/// [`CsrError::Build`] if rcgen fails to sign.
pub fn build_csr(key: &PrivateKey) -> Result<Vec<u8>, CsrError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "agentmesh workload");
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key.as_rcgen())
        .map_err(CsrError::Build)?;
    Ok(csr.der().to_vec())
}

/// Parses a DER CSR, verifies its self-signature and returns its P-256 public key.
///
/// Only the key is taken from the request: names and extensions in it are ignored, because
/// the server alone decides what goes in an SVID.
///
/// # Errors
/// [`CsrError::Malformed`], [`CsrError::UnsupportedKey`],
/// [`CsrError::UnsupportedSignatureAlgorithm`] or [`CsrError::BadSignature`].
pub fn verify_csr(der: &[u8]) -> Result<CsrPublicKey, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    // Key type first: a non-P-256 key is refused whatever its signature.
    require_p256(spki)?;
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(CsrError::UnsupportedSignatureAlgorithm(
            csr.signature_algorithm.algorithm.to_id_string(),
        ));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    CsrPublicKey::from_parsed(spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_csr_verifies_and_yields_the_key() {
        let key = PrivateKey::generate().unwrap();
        let csr = build_csr(&key).unwrap();
        let pk = verify_csr(&csr).unwrap();
        assert_eq!(pk.spki_der(), key.public_key_der().as_slice());
        assert_eq!(
            CsrPublicKey::from_spki_der(&key.public_key_der()).unwrap(),
            pk
        );
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let key = PrivateKey::generate().unwrap();
        let mut csr = build_csr(&key).unwrap();
        // The last byte is inside the signature's s integer, so the DER still parses.
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        assert!(matches!(verify_csr(&csr), Err(CsrError::BadSignature)));
    }

    #[test]
    fn csr_signed_by_another_key_is_bad_signature() {
        // Swap the public key of a CSR for another P-256 key of the same length.
        let key = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let mut csr = build_csr(&key).unwrap();
        let old_point = &key.public_key_der()[26..];
        let new_point = &other.public_key_der()[26..];
        let pos = csr
            .windows(old_point.len())
            .position(|w| w == old_point)
            .unwrap();
        csr[pos..pos + old_point.len()].copy_from_slice(new_point);
        assert!(matches!(verify_csr(&csr), Err(CsrError::BadSignature)));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            verify_csr(b"\x30\x03garbage"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(verify_csr(&[]), Err(CsrError::Malformed(_))));
        let key = PrivateKey::generate().unwrap();
        let mut csr = build_csr(&key).unwrap();
        csr.push(0);
        assert!(matches!(verify_csr(&csr), Err(CsrError::Malformed(_))));
    }

    #[test]
    fn p384_key_is_refused() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default().serialize_request(&kp).unwrap();
        let err = verify_csr(csr.der()).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
    }

    #[test]
    fn ed25519_key_is_refused() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default().serialize_request(&kp).unwrap();
        assert!(matches!(
            verify_csr(csr.der()),
            Err(CsrError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn rsa_key_is_refused() {
        // ring cannot generate RSA keys, so let openssl make the request.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("rsa.pem");
        let csr = dir.path().join("rsa.csr");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("this test needs the `openssl` binary on PATH (e.g. /usr/bin/openssl)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let key_s = key.to_str().unwrap();
        let csr_s = csr.to_str().unwrap();
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key_s,
        ]);
        run(&[
            "req", "-new", "-key", key_s, "-subj", "/CN=rsa", "-outform", "DER", "-out", csr_s,
        ]);
        let der = std::fs::read(&csr).unwrap();
        assert!(matches!(verify_csr(&der), Err(CsrError::UnsupportedKey(_))));
    }
}
