//! x509pop node attestation, as SPIRE's: the server trusts the CA bundle that
//! `[node_attestation.x509pop] ca_bundle_path` names, and a node that proves possession of the
//! key of a certificate chaining to it becomes
//! `spiffe://<td>/agentmesh/node/x509pop/<SHA-1 of the leaf>`, with SPIRE's selectors:
//! `x509pop:subject:cn:NAME`, `x509pop:ca:fingerprint:HEX` for every CA certificate above the
//! leaf (intermediates sent by the node and the root of the bundle), and
//! `x509pop:serialnumber:HEX`. Node alias entries match these selectors.
//!
//! x509pop is re-attestable: the same certificate attests again after a restart, or once the
//! node SVID has expired, and gets the same node ID.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::x509pop::{self as pop, X509PopError};

/// `[node_attestation.x509pop]` of the server's config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509PopConfig {
    /// PEM file of the CA certificates node certificates must chain to (SPIRE's
    /// `ca_bundle_path`).
    pub ca_bundle_path: PathBuf,
}

/// Why x509pop could not be set up, or refused a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509PopAttestError {
    /// The CA bundle file cannot be read.
    #[error("x509pop CA bundle {0}: {1}")]
    ReadBundle(PathBuf, std::io::Error),
    /// The CA bundle file holds no usable CA certificate.
    #[error("x509pop CA bundle {0} is malformed: {1}")]
    BadBundle(PathBuf, String),
    /// The node sent no certificate.
    #[error("the node sent no certificate")]
    NoCertificate,
    /// The node's chain does not verify against the bundle.
    #[error("the node certificate does not chain to the server's x509pop CA bundle: {0}")]
    Untrusted(agentmesh_tls::CertError),
    /// The signature over the challenge is wrong, or the certificate cannot be used.
    #[error("proof of possession failed: {0}")]
    Proof(#[from] X509PopError),
}

/// The server's side of x509pop: the trusted CAs.
#[derive(Debug, Clone)]
pub struct X509PopVerifier {
    roots: Vec<Vec<u8>>,
}

/// What a node proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedX509Pop {
    /// `spiffe://<td>/agentmesh/node/x509pop/<fingerprint>`.
    pub node_id: SpiffeId,
    /// Sorted `x509pop:…` selectors.
    pub selectors: Vec<String>,
}

impl X509PopVerifier {
    /// Reads the CA bundle: PEM `CERTIFICATE` blocks, each a CA certificate that is valid now.
    ///
    /// # Errors
    /// [`X509PopAttestError::ReadBundle`] or [`X509PopAttestError::BadBundle`], naming the
    /// file.
    pub fn load(cfg: &X509PopConfig) -> Result<Self, X509PopAttestError> {
        let path = &cfg.ca_bundle_path;
        let text = std::fs::read_to_string(path)
            .map_err(|e| X509PopAttestError::ReadBundle(path.clone(), e))?;
        Self::from_pem(&text, path)
    }

    /// As [`X509PopVerifier::load`], from the file's text; `path` is for messages.
    ///
    /// # Errors
    /// As [`X509PopVerifier::load`].
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, X509PopAttestError> {
        let bad = |m: String| X509PopAttestError::BadBundle(path.to_owned(), m);
        let roots = agentmesh_tls::pem_decode_all(text, "CERTIFICATE").map_err(|e| {
            bad(format!(
                "{e}; it must hold the PEM CA certificates that sign node certificates"
            ))
        })?;
        let now = SystemTime::now();
        for (i, der) in roots.iter().enumerate() {
            let what = format!("certificate {} of {}", i + 1, roots.len());
            let cert =
                agentmesh_tls::x509::parse_cert(der, &what).map_err(|e| bad(e.to_string()))?;
            if !cert.is_ca() {
                return Err(bad(format!(
                    "{what} (subject {}) is not a CA certificate (basicConstraints CA:true missing)",
                    cert.subject()
                )));
            }
            let (_, not_after) = agentmesh_tls::x509::validity_of(&cert);
            if not_after <= now {
                return Err(bad(format!(
                    "{what} (subject {}) has expired",
                    cert.subject()
                )));
            }
        }
        Ok(Self { roots })
    }

    /// How many CA certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Whether the bundle is empty (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Checks a node's proof: its chain verifies against the bundle at `now`, and `signature`
    /// (under TLS scheme `scheme`) signs the challenge message for `challenge` and `csr` with
    /// the leaf's key.
    ///
    /// # Errors
    /// The first check that fails, as an [`X509PopAttestError`].
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        td: &TrustDomain,
        chain: &[Vec<u8>],
        challenge: &[u8],
        csr: &[u8],
        scheme: u16,
        signature: &[u8],
        now: SystemTime,
    ) -> Result<AttestedX509Pop, X509PopAttestError> {
        let leaf = chain.first().ok_or(X509PopAttestError::NoCertificate)?;
        let verified = agentmesh_tls::verify_chain_to_root(chain, &self.roots, now)
            .map_err(X509PopAttestError::Untrusted)?;
        pop::verify_signature(
            leaf,
            scheme,
            &pop::challenge_message(challenge, csr),
            signature,
        )?;
        Ok(AttestedX509Pop {
            node_id: pop::node_id(td, leaf),
            selectors: selectors(&verified)?,
        })
    }
}

/// SPIRE's x509pop selectors of a verified chain.
fn selectors(verified: &agentmesh_tls::VerifiedChain) -> Result<Vec<String>, X509PopAttestError> {
    let leaf = agentmesh_tls::x509::parse_cert(&verified.chain[0], "the node certificate")
        .map_err(|e| X509PopError::Cert(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(cn) = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        out.push(format!("x509pop:subject:cn:{cn}"));
    }
    out.push(format!(
        "x509pop:serialnumber:{}",
        agentmesh_tls::x509::serial_hex(&leaf).to_ascii_lowercase()
    ));
    for ca in verified.chain[1..]
        .iter()
        .chain(std::iter::once(&verified.root))
    {
        out.push(format!("x509pop:ca:fingerprint:{}", pop::fingerprint(ca)));
    }
    // Only selectors an entry could name: a CN with control characters or over the value
    // limit is dropped rather than stored.
    out.retain(|s| s.parse::<agentmesh_spiffe::Selector>().is_ok());
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn new_ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(ca: &Ca, cn: &str) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).unwrap();
        (p.signed_by(&key, &issuer).unwrap().der().to_vec(), key)
    }

    fn pem(ca: &Ca) -> String {
        agentmesh_tls::pem_encode("CERTIFICATE", ca.cert.der())
    }

    #[test]
    fn a_node_holding_a_key_the_bundle_vouches_for_gets_its_fingerprint_id_and_selectors() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = new_ca("node CA");
        let v = X509PopVerifier::from_pem(&pem(&ca), Path::new("ca.pem")).unwrap();
        let (cert, key) = leaf(&ca, "host-a");
        let pop_key = pop::PopKey::from_pem(&agentmesh_tls::pem_encode(
            "PRIVATE KEY",
            &key.serialize_der(),
        ))
        .unwrap();
        let challenge = [1u8; pop::CHALLENGE_LEN];
        let (scheme, sig) = pop_key
            .sign(&pop::challenge_message(&challenge, b"csr"))
            .unwrap();
        let now = SystemTime::now();
        let got = v
            .verify(
                &td,
                std::slice::from_ref(&cert),
                &challenge,
                b"csr",
                scheme,
                &sig,
                now,
            )
            .unwrap();
        assert_eq!(got.node_id, pop::node_id(&td, &cert));
        let ca_fp = pop::fingerprint(ca.cert.der());
        assert!(
            got.selectors
                .contains(&"x509pop:subject:cn:host-a".to_owned()),
            "{:?}",
            got.selectors
        );
        assert!(
            got.selectors
                .contains(&format!("x509pop:ca:fingerprint:{ca_fp}")),
            "{:?}",
            got.selectors
        );

        // A signature for another CSR, a certificate of another CA: refused, saying why.
        let err = v
            .verify(
                &td,
                std::slice::from_ref(&cert),
                &challenge,
                b"other",
                scheme,
                &sig,
                now,
            )
            .unwrap_err();
        assert!(matches!(err, X509PopAttestError::Proof(_)), "{err}");
        let other = new_ca("other CA");
        let (foreign, foreign_key) = leaf(&other, "host-x");
        let foreign_pop = pop::PopKey::from_pem(&agentmesh_tls::pem_encode(
            "PRIVATE KEY",
            &foreign_key.serialize_der(),
        ))
        .unwrap();
        let (scheme, sig) = foreign_pop
            .sign(&pop::challenge_message(&challenge, b"csr"))
            .unwrap();
        let err = v
            .verify(&td, &[foreign], &challenge, b"csr", scheme, &sig, now)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not chain to the server's x509pop CA bundle"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_bundle_is_refused_naming_the_file() {
        let path = Path::new("/etc/agentmesh/x509pop-ca.pem");
        let ca = new_ca("node CA");
        let (leaf_der, _) = leaf(&ca, "host-a");
        let cases = [
            ("", "no '-----BEGIN CERTIFICATE-----' block"),
            ("not pem at all", "no '-----BEGIN CERTIFICATE-----' block"),
            (
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "malformed base64",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "not a valid DER X.509 certificate",
            ),
            (
                &agentmesh_tls::pem_encode("CERTIFICATE", &leaf_der),
                "is not a CA certificate",
            ),
        ];
        for (text, want) in cases {
            let err = X509PopVerifier::from_pem(text, path)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("x509pop CA bundle /etc/agentmesh/x509pop-ca.pem is malformed")
                    && err.contains(want),
                "{text:?}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
