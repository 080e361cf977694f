//! JWS-signed responses: a service signs its JSON body with its X509-SVID key (ES256, compact
//! serialization, the SVID chain in the `x5c` header), and the receiver verifies the chain
//! against its trust bundle, checks that the signer is the SPIFFE ID it expected, then checks
//! the signature.
//!
//! # Attached or detached
//! [`sign`] embeds the body in the JWS (`header.payload.signature`): one self-contained
//! string to store or forward, at the cost of sending the body base64-encoded. [`sign_detached`]
//! leaves the payload segment empty (`header..signature`, RFC 7515 appendix F), so the body
//! travels unchanged and the JWS goes beside it, for example in a response header; verify it
//! with [`verify_detached`] and the exact body bytes. Prefer detached for HTTP responses that
//! clients also read as plain JSON, attached for records that must stand alone.
//!
//! The header's `kid` is the signing SVID's serial number, so logs can name the certificate;
//! `typ` is `JOSE`. Verification never trusts `kid`: the key comes only from the verified
//! `x5c` leaf.

use std::time::SystemTime;

use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::Authorizer;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::source::{Svid, X509Source};

/// A JWS longer than this is refused before decoding, so a hostile peer cannot make us
/// base64-decode and hash arbitrarily much.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::jws::MAX_JWS_LEN, 8 * 1024 * 1024);
/// ```
pub const MAX_JWS_LEN: usize = 8 * 1024 * 1024;

/// Why a JWS could not be made or did not verify.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let err = agentmesh_sdk::jws::verify(
///     "not.a.jws", &ca.roots(), &"spiffe://example.org/a".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::JwsError::Malformed(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not a compact JWS with a JSON header.
    #[error("malformed jws: {0}")]
    Malformed(String),
    /// The header's `alg` is not ES256 (this refuses `none` too).
    #[error("jws uses alg {0:?}, but only ES256 is accepted")]
    UnsupportedAlg(String),
    /// No `x5c` chain in the header, so there is no signer to check.
    #[error("jws header has no x5c certificate chain; cannot tell who signed it")]
    MissingX5c,
    /// The signer's certificate has expired (or is not yet valid).
    #[error("jws signer certificate (serial {serial}) is outside its validity period")]
    SignerExpired {
        /// The leaf's serial.
        serial: String,
    },
    /// The `x5c` chain does not verify against the trust bundle (a foreign CA, for example).
    #[error("jws signer certificate chain is not trusted: {0}")]
    UntrustedChain(String),
    /// The signer is a valid SVID but not the one expected.
    #[error("jws signed by an unexpected identity: {0}")]
    WrongSigner(#[source] agentmesh_tls::AuthorizeError),
    /// The signature does not match the header and payload: the body was altered.
    #[error("jws signature does not verify; the payload or header was altered")]
    BadSignature,
    /// A detached JWS carried a payload, or an attached one was verified as detached.
    #[error("{0}")]
    DetachedMismatch(&'static str),
    /// The SVID key cannot sign ES256 (only P-256 keys can).
    #[error("svid key cannot sign es256: {0}")]
    Key(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
    // RFC 7515 4.1.11: a verifier must refuse extensions it does not understand (such as
    // RFC 7797's unencoded payload), and this one understands none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<Vec<String>>,
}

/// A JWS that verified: who signed it and what.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let jws = agentmesh_sdk::jws::sign(&ca.source("spiffe://example.org/a"), b"{}").unwrap();
/// let ok: agentmesh_sdk::VerifiedJws = agentmesh_sdk::jws::verify(
///     &jws, &ca.roots(), &"spiffe://example.org/a".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap();
/// assert_eq!(ok.payload, b"{}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJws {
    /// The signer's SPIFFE ID, from its verified X509-SVID.
    pub signer: SpiffeId,
    /// The signing certificate's serial, lowercase hex.
    pub serial: String,
    /// The signed bytes.
    pub payload: Vec<u8>,
}

fn signing_input(svid: &Svid, typ: &str, payload_b64: &str) -> String {
    let header = Header {
        alg: "ES256".into(),
        typ: Some(typ.into()),
        kid: Some(svid.serial.clone()),
        x5c: svid.chain.iter().map(|c| STANDARD.encode(c)).collect(),
        crit: None,
    };
    // A struct of strings: serialization cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    format!("{}.{payload_b64}", URL_SAFE_NO_PAD.encode(header))
}

fn sign_input(svid: &Svid, input: &str) -> Result<String, JwsError> {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &svid.key_pkcs8, &rng)
        .map_err(|e| JwsError::Key(format!("not a p-256 pkcs#8 key ({e})")))?;
    // Low-S, so a strict verifier elsewhere accepts our links and signed answers.
    let sig = agentmesh_tls::ecdsa::sign_p256_low_s(&pair, input.as_bytes())
        .map_err(|e| JwsError::Key(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Signs `payload` with the source's current SVID: compact JWS, payload attached.
///
/// # Errors
/// [`JwsError::Key`] if the SVID key is not P-256.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let source = ca.source("spiffe://example.org/writer");
/// let jws = agentmesh_sdk::jws::sign(&source, br#"{"answer":42}"#).unwrap();
/// let ok = agentmesh_sdk::jws::verify(
///     &jws, &ca.roots(), &"spiffe://example.org/writer".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap();
/// assert_eq!(ok.payload, br#"{"answer":42}"#);
/// ```
pub fn sign(source: &X509Source, payload: &[u8]) -> Result<String, JwsError> {
    sign_typed(source, "JOSE", payload)
}

/// [`sign`] with another `typ` header (the delegation links use their own, so a link can
/// never pass for a response JWS or the other way round).
pub(crate) fn sign_typed(
    source: &X509Source,
    typ: &str,
    payload: &[u8],
) -> Result<String, JwsError> {
    let svid = source.current().svid.clone();
    let input = signing_input(&svid, typ, &URL_SAFE_NO_PAD.encode(payload));
    let sig = sign_input(&svid, &input)?;
    Ok(format!("{input}.{sig}"))
}

/// Signs `payload` but leaves it out of the JWS (`header..signature`); send the body as is
/// and the JWS beside it.
///
/// # Errors
/// [`JwsError::Key`] if the SVID key is not P-256.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let source = ca.source("spiffe://example.org/writer");
/// let body = br#"{"answer":42}"#;
/// let jws = agentmesh_sdk::jws::sign_detached(&source, body).unwrap();
/// assert!(jws.contains(".."));
/// let ok = agentmesh_sdk::jws::verify_detached(
///     &jws, body, &ca.roots(), &"spiffe://example.org/writer".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap();
/// assert_eq!(ok.signer.path(), "/writer");
/// ```
pub fn sign_detached(source: &X509Source, payload: &[u8]) -> Result<String, JwsError> {
    let attached = sign(source, payload)?;
    let mut parts = attached.split('.');
    let (header, _, sig) = (parts.next(), parts.next(), parts.next());
    Ok(format!(
        "{}..{}",
        header.unwrap_or_default(),
        sig.unwrap_or_default()
    ))
}

/// Verifies an attached JWS: its `x5c` chain against `roots` at `now`, the signer against
/// `expected`, then the signature. Returns the signer and the payload.
///
/// # Errors
/// One [`JwsError`] per failure: malformed, wrong alg, no `x5c`, expired or untrusted signer
/// certificate, unexpected signer, bad signature.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let jws = agentmesh_sdk::jws::sign(&ca.source("spiffe://example.org/a"), b"{}").unwrap();
/// let err = agentmesh_sdk::jws::verify(
///     &jws, &ca.roots(), &"spiffe://example.org/b".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::JwsError::WrongSigner(_)));
/// ```
pub fn verify(
    jws: &str,
    roots: &[CertificateDer<'_>],
    expected: &SpiffeId,
    now: SystemTime,
) -> Result<VerifiedJws, JwsError> {
    verify_with(
        jws,
        None,
        roots,
        &*agentmesh_tls::exact([expected.clone()]),
        now,
    )
}

/// Verifies a detached JWS over `payload`; otherwise as [`verify`].
///
/// # Errors
/// As [`verify`], plus [`JwsError::DetachedMismatch`] if the JWS carries a payload.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let jws = agentmesh_sdk::jws::sign_detached(&ca.source("spiffe://example.org/a"), b"{}").unwrap();
/// let err = agentmesh_sdk::jws::verify_detached(
///     &jws, b"{\"x\":1}", &ca.roots(), &"spiffe://example.org/a".parse().unwrap(), std::time::SystemTime::now(),
/// ).unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::JwsError::BadSignature));
/// ```
pub fn verify_detached(
    jws: &str,
    payload: &[u8],
    roots: &[CertificateDer<'_>],
    expected: &SpiffeId,
    now: SystemTime,
) -> Result<VerifiedJws, JwsError> {
    verify_with(
        jws,
        Some(payload),
        roots,
        &*agentmesh_tls::exact([expected.clone()]),
        now,
    )
}

/// The general form: `detached` is the payload for a detached JWS (`None` for attached), and
/// any [`Authorizer`] decides which signers are acceptable.
///
/// # Errors
/// As [`verify`] and [`verify_detached`].
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let jws = agentmesh_sdk::jws::sign(&ca.source("spiffe://example.org/a"), b"{}").unwrap();
/// let signers = agentmesh_tls::member_of("example.org".parse().unwrap());
/// let ok = agentmesh_sdk::jws::verify_with(&jws, None, &ca.roots(), &*signers, std::time::SystemTime::now()).unwrap();
/// assert_eq!(ok.signer.to_string(), "spiffe://example.org/a");
/// ```
pub fn verify_with(
    jws: &str,
    detached: Option<&[u8]>,
    roots: &[CertificateDer<'_>],
    signers: &dyn Authorizer,
    now: SystemTime,
) -> Result<VerifiedJws, JwsError> {
    let malformed = |m: &str| JwsError::Malformed(m.to_owned());
    if jws.len() > MAX_JWS_LEN {
        return Err(malformed("longer than the 8 MiB limit"));
    }
    let mut parts = jws.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three '.'-separated segments"));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|e| JwsError::Malformed(format!("header is not base64url: {e}")))?;
    let header: Header = serde_json::from_slice(&header_json)
        .map_err(|e| JwsError::Malformed(format!("header is not the expected json: {e}")))?;
    if header.alg != "ES256" {
        return Err(JwsError::UnsupportedAlg(header.alg));
    }
    if let Some(crit) = &header.crit {
        return Err(JwsError::Malformed(format!(
            "header marks {crit:?} critical; no critical extensions are supported"
        )));
    }
    if header.x5c.is_empty() {
        return Err(JwsError::MissingX5c);
    }
    let chain = header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JwsError::Malformed(format!("x5c entry is not base64: {e}")))?;
    let leaf = &chain[0];
    let serial = agentmesh_tls::cert_serial_hex(leaf)
        .map_err(|e| JwsError::Malformed(format!("x5c leaf: {e}")))?;
    let (not_before, not_after) = agentmesh_tls::cert_validity(leaf)
        .map_err(|e| JwsError::Malformed(format!("x5c leaf: {e}")))?;
    if now < not_before || now > not_after {
        return Err(JwsError::SignerExpired { serial });
    }
    let roots: Vec<Vec<u8>> = roots.iter().map(|r| r.to_vec()).collect();
    let signer = agentmesh_tls::verify_chain(&chain, &roots, now)
        .map_err(|e| JwsError::UntrustedChain(e.to_string()))?;
    signers.authorize(&signer).map_err(JwsError::WrongSigner)?;

    let payload = match detached {
        Some(body) => {
            if !payload_b64.is_empty() {
                return Err(JwsError::DetachedMismatch(
                    "expected a detached jws (empty payload segment) but it carries a payload",
                ));
            }
            body.to_vec()
        }
        None => URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|e| JwsError::Malformed(format!("payload is not base64url: {e}")))?,
    };
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|e| JwsError::Malformed(format!("signature is not base64url: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| JwsError::Malformed(format!("x5c leaf: {e}")))?;
    let point = cert.public_key().subject_public_key.data.to_vec();
    let input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(&payload));
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| JwsError::BadSignature)?;
    Ok(VerifiedJws {
        signer,
        serial,
        payload,
    })
}

#[cfg(test)]
mod tests;
