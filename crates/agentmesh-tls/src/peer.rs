//! Reading the SPIFFE ID out of a peer's X509-SVID.

use agentmesh_spiffe::{SpiffeId, SpiffeIdError};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Why a certificate does not carry a usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The DER did not parse as an X.509 certificate.
    #[error("peer certificate is not valid x.509 der: {0}")]
    Parse(String),
    /// An extension that decides the identity could not be read.
    #[error("peer certificate has an unreadable {extension} extension: {reason}")]
    Extension {
        /// Which extension.
        extension: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf claims to be a CA, which an X509-SVID leaf must not.
    #[error("peer leaf certificate is a ca (basicConstraints ca=true); an svid leaf must not be")]
    LeafIsCa,
    /// The leaf may sign certificates or CRLs, which an X509-SVID leaf must not.
    #[error("peer leaf certificate has keyCertSign or cRLSign key usage; an svid leaf must not")]
    LeafCanSign,
    /// No URI SAN at all.
    #[error("peer certificate has no uri san; expected exactly one spiffe:// uri")]
    NoUriSan,
    /// More than one URI SAN, so the identity is ambiguous.
    #[error("peer certificate has {count} uri sans ({uris}); expected exactly one spiffe:// uri")]
    MultipleUriSans {
        /// How many there were.
        count: usize,
        /// The URIs, comma separated.
        uris: String,
    },
    /// The single URI SAN is not a valid SPIFFE ID.
    #[error("peer certificate uri san {uri:?} is not a valid spiffe id: {source}")]
    InvalidSpiffeId {
        /// The URI as found in the certificate.
        uri: String,
        /// The SPIFFE ID rule it breaks.
        source: SpiffeIdError,
    },
}

/// The SPIFFE ID of an X509-SVID leaf.
///
/// Only identity is checked here, not the chain: callers must have verified the
/// chain first (the verifiers in this crate do both).
///
/// # Errors
/// Unparseable DER, a CA or signing leaf, or not exactly one URI SAN holding a valid SPIFFE ID.
pub fn spiffe_id_from_cert(der: &[u8]) -> Result<SpiffeId, PeerError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PeerError::Parse(e.to_string()))?;

    // x509-parser's `is_ca` treats an unreadable extension as "not a CA"; fail closed instead.
    let basic = cert.basic_constraints().map_err(|e| PeerError::Extension {
        extension: "basicConstraints",
        reason: e.to_string(),
    })?;
    if basic.is_some_and(|bc| bc.value.ca) {
        return Err(PeerError::LeafIsCa);
    }
    let usage = cert.key_usage().map_err(|e| PeerError::Extension {
        extension: "keyUsage",
        reason: e.to_string(),
    })?;
    if usage.is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign()) {
        return Err(PeerError::LeafCanSign);
    }

    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerError::Extension {
            extension: "subjectAltName",
            reason: e.to_string(),
        })?;
    let uris: Vec<&str> = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(PeerError::NoUriSan),
        [uri] => uri.parse().map_err(|source| PeerError::InvalidSpiffeId {
            uri: (*uri).to_owned(),
            source,
        }),
        many => Err(PeerError::MultipleUriSans {
            count: many.len(),
            uris: many.join(", "),
        }),
    }
}

/// The SPIFFE ID of the first (leaf) certificate of a peer's chain.
///
/// # Errors
/// An empty chain, or anything [`spiffe_id_from_cert`] rejects.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, PeerError> {
    let leaf = certs.first().ok_or(PeerError::NoCertificate)?;
    spiffe_id_from_cert(leaf)
}

/// The verified peer's SPIFFE ID on an established connection, if it presented an SVID.
///
/// `None` before the handshake completes, when the peer sent no certificate
/// (optional client auth), or if the certificate carries no usable ID.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    peer_spiffe_id(conn.peer_certificates()?).ok()
}
