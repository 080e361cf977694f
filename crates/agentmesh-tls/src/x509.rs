//! Reading X.509 certificates without minting any: splitting concatenated DER, validity,
//! serial and SPIFFE ID, and verifying an X.509-SVID chain against trusted roots.
//!
//! Lives here rather than in the CA so that workloads, sidecars and the frontend, which only
//! ever read certificates, need not link the certificate-building code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_spiffe::SpiffeId;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Why a certificate could not be read, or a chain did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A certificate could not be parsed.
    #[error("{what} is not a valid DER X.509 certificate: {reason}")]
    ParseCert {
        /// Which certificate, such as "intermediate certificate" or `chain[1]`.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate that must be a CA is not one.
    #[error("{0} is not a CA certificate (basicConstraints CA:true missing)")]
    NotCa(String),
    /// A certificate without a URI SAN, where a SPIFFE ID is required.
    #[error("{0} has no URI SAN, so it carries no SPIFFE ID")]
    NoUriSan(String),
    /// A certificate with several URI SANs; SPIFFE allows exactly one.
    #[error("{what} has {count} URI SANs; an X509-SVID must have exactly one")]
    MultipleUriSans {
        /// Which certificate.
        what: String,
        /// How many were found.
        count: usize,
    },
    /// A URI SAN that is not a valid SPIFFE ID.
    #[error("{what} has URI SAN {uri:?}, which is not a valid SPIFFE ID: {source}")]
    BadSpiffeId {
        /// Which certificate.
        what: String,
        /// The URI.
        uri: String,
        /// Why it is invalid.
        #[source]
        source: agentmesh_spiffe::SpiffeIdError,
    },
    /// An empty chain was given to verify.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate is outside its validity window.
    #[error("{what} is not valid at {now:?} (valid {not_before:?} to {not_after:?})")]
    NotValidNow {
        /// Which certificate.
        what: String,
        /// The time checked.
        now: SystemTime,
        /// Start of validity.
        not_before: SystemTime,
        /// End of validity.
        not_after: SystemTime,
    },
    /// A signature in the chain does not verify.
    #[error("{what} is not signed by {issuer}")]
    BadChainSignature {
        /// The certificate whose signature failed.
        what: String,
        /// The certificate whose key was tried.
        issuer: String,
    },
    /// The top of the chain is not signed by any trusted root.
    #[error("{0} is not signed by any of the {1} trusted roots")]
    UntrustedRoot(String, usize),
    /// A constraint of the X.509 / SPIFFE profile is broken.
    #[error("{what}: {reason}")]
    Profile {
        /// Which certificate.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Seconds since the Unix epoch (negative before it) as a [`SystemTime`].
pub fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses one DER certificate, refusing trailing bytes; `what` names it in errors.
///
/// # Errors
/// [`CertError::ParseCert`].
pub fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CertError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::ParseCert {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CertError::ParseCert {
            what: what.to_owned(),
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(cert)
}

/// The validity window `(notBefore, notAfter)` of a parsed certificate.
pub fn validity_of(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let v = cert.validity();
    (
        system_time(v.not_before.timestamp()),
        system_time(v.not_after.timestamp()),
    )
}

/// The serial number of a parsed certificate, lowercase hex without separators.
pub fn serial_hex(cert: &X509Certificate<'_>) -> String {
    cert.serial
        .to_bytes_be()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SPIFFE ID in a parsed certificate's single URI SAN; `what` names it in errors.
///
/// # Errors
/// [`CertError::NoUriSan`], [`CertError::MultipleUriSans`], [`CertError::BadSpiffeId`] or
/// [`CertError::ParseCert`] for an unreadable subjectAltName.
pub fn spiffe_id_of(cert: &X509Certificate<'_>, what: &str) -> Result<SpiffeId, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::ParseCert {
            what: what.to_owned(),
            reason: format!("subjectAltName: {e}"),
        })?
        .ok_or_else(|| CertError::NoUriSan(what.to_owned()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::NoUriSan(what.to_owned())),
        [uri] => uri
            .parse::<SpiffeId>()
            .map_err(|source| CertError::BadSpiffeId {
                what: what.to_owned(),
                uri: (*uri).to_owned(),
                source,
            }),
        many => Err(CertError::MultipleUriSans {
            what: what.to_owned(),
            count: many.len(),
        }),
    }
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` fields)
/// into one buffer per certificate.
///
/// # Errors
/// [`CertError::ParseCert`] naming the first certificate (1-based) that is not valid DER.
pub fn split_der_certs(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(bytes).map_err(|e| CertError::ParseCert {
                what: format!("certificate #{}", certs.len() + 1),
                reason: e.to_string(),
            })?;
        let used = bytes.len() - rest.len();
        certs.push(bytes[..used].to_vec());
        bytes = rest;
    }
    Ok(certs)
}

/// The validity window `(notBefore, notAfter)` of a DER certificate.
///
/// # Errors
/// [`CertError::ParseCert`].
pub fn cert_validity(der: &[u8]) -> Result<(SystemTime, SystemTime), CertError> {
    Ok(validity_of(&parse_cert(der, "certificate")?))
}

/// The serial number of a DER certificate, lowercase hex without separators.
///
/// # Errors
/// [`CertError::ParseCert`].
pub fn cert_serial_hex(der: &[u8]) -> Result<String, CertError> {
    Ok(serial_hex(&parse_cert(der, "certificate")?))
}

/// The SPIFFE ID in a DER certificate's single URI SAN.
///
/// # Errors
/// [`CertError::NoUriSan`], [`CertError::MultipleUriSans`], [`CertError::BadSpiffeId`] or
/// [`CertError::ParseCert`].
pub fn cert_spiffe_id(der: &[u8]) -> Result<SpiffeId, CertError> {
    spiffe_id_of(&parse_cert(der, "certificate")?, "certificate")
}

/// Verifies an X.509-SVID chain (leaf first, then intermediates) against trusted roots at
/// `now`, and returns the leaf's SPIFFE ID.
///
/// Checks every signature up to one of `roots`, every validity window (roots included), that
/// issuers are CAs allowed to sign certificates within their path length, that the leaf is not
/// a CA, and that no certificate carries a critical extension this code does not understand.
/// A copy of the root at the end of the chain is tolerated.
///
/// # Errors
/// The first check that fails, naming the certificate by its position (`chain[i]`).
pub fn verify_chain(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<SpiffeId, CertError> {
    let verified = verify_chain_to_root(chain, roots, now)?;
    let leaf = parse_cert(&verified.chain[0], "chain[0] (leaf)")?;
    spiffe_id_of(&leaf, "chain[0] (leaf)")
}

/// A chain that verified: its certificates leaf first, and the trusted root that signed the
/// top of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The chain as checked, leaf first, without a trailing copy of the root.
    pub chain: Vec<Vec<u8>>,
    /// The root of `roots` it chains to.
    pub root: Vec<u8>,
}

/// [`verify_chain`] without the SPIFFE ID: the same checks of signatures, validity, CA
/// constraints and critical extensions for any certificate chain (x509pop node
/// certificates), returning the chain and the root it verified against.
///
/// # Errors
/// The first check that fails, naming the certificate by its position (`chain[i]`).
pub fn verify_chain_to_root(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<VerifiedChain, CertError> {
    if chain.is_empty() {
        return Err(CertError::EmptyChain);
    }
    // A trailing root copy adds nothing: trust comes from `roots`, not from the chain.
    let chain: &[Vec<u8>] = match chain.split_last() {
        Some((last, rest)) if !rest.is_empty() && roots.contains(last) => rest,
        _ => chain,
    };
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_cert(der, &format!("chain[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    for (i, cert) in parsed.iter().enumerate() {
        let what = format!("chain[{i}]");
        check_common(cert, &what, now)?;
        if i == 0 {
            if cert.is_ca() {
                return Err(CertError::Profile {
                    what,
                    reason: "leaf X509-SVID must not be a CA (basicConstraints CA:true)".into(),
                });
            }
            if let Ok(Some(ku)) = cert.key_usage()
                && (ku.value.key_cert_sign() || ku.value.crl_sign())
            {
                return Err(CertError::Profile {
                    what,
                    reason: "leaf X509-SVID must not have keyCertSign or cRLSign".into(),
                });
            }
        } else {
            // i - 1 CA certificates sit between this issuer and the leaf.
            check_issuer(cert, &what, i - 1)?;
        }
        if let Some(issuer) = parsed.get(i + 1) {
            cert.verify_signature(Some(issuer.public_key()))
                .map_err(|_| CertError::BadChainSignature {
                    what: what.clone(),
                    issuer: format!("chain[{}]", i + 1),
                })?;
        }
    }

    let top_index = parsed.len() - 1;
    let top = &parsed[top_index];
    let mut anchor = None;
    for (r, root_der) in roots.iter().enumerate() {
        let root = parse_cert(root_der, &format!("roots[{r}]"))?;
        if top.verify_signature(Some(root.public_key())).is_ok() {
            anchor = Some((r, root));
            break;
        }
    }
    let Some((r, root)) = anchor else {
        return Err(CertError::UntrustedRoot(
            format!("chain[{top_index}]"),
            roots.len(),
        ));
    };
    let what = format!("roots[{r}]");
    check_common(&root, &what, now)?;
    check_issuer(&root, &what, top_index)?;

    Ok(VerifiedChain {
        chain: chain.to_vec(),
        root: roots[r].clone(),
    })
}

fn check_common(cert: &X509Certificate<'_>, what: &str, now: SystemTime) -> Result<(), CertError> {
    let (not_before, not_after) = validity_of(cert);
    if now < not_before || now > not_after {
        return Err(CertError::NotValidNow {
            what: what.to_owned(),
            now,
            not_before,
            not_after,
        });
    }
    if let Some(ext) = cert.extensions().iter().find(|e| {
        e.critical
            && matches!(
                e.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            )
    }) {
        return Err(CertError::Profile {
            what: what.to_owned(),
            reason: format!("unknown critical extension {}", ext.oid),
        });
    }
    Ok(())
}

fn check_issuer(cert: &X509Certificate<'_>, what: &str, cas_below: usize) -> Result<(), CertError> {
    let bc = cert
        .basic_constraints()
        .ok()
        .flatten()
        .filter(|bc| bc.value.ca)
        .ok_or_else(|| CertError::NotCa(what.to_owned()))?;
    if let Some(max) = bc.value.path_len_constraint
        && usize::try_from(max).is_ok_and(|max| cas_below > max)
    {
        return Err(CertError::Profile {
            what: what.to_owned(),
            reason: format!("pathLenConstraint {max} but {cas_below} CAs below it"),
        });
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(CertError::Profile {
            what: what.to_owned(),
            reason: "CA certificate lacks keyCertSign".into(),
        });
    }
    Ok(())
}
