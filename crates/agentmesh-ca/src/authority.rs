//! The certificate authority: root and intermediate CA certificates and X.509-SVID minting.
//! Reading and verifying certificates lives in [`agentmesh_tls::x509`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::x509::{CertError, parse_cert, serial_hex, spiffe_id_of, system_time};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::csr::CsrPublicKey;
use crate::keys::PrivateKey;

/// Why a CA certificate or SVID could not be made, or a chain did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen refused to build or sign a certificate.
    #[error("could not sign the {what}: {source}")]
    Sign {
        /// Which certificate was being made.
        what: &'static str,
        /// rcgen's complaint.
        #[source]
        source: rcgen::Error,
    },
    /// A TTL of zero (or under one second) was asked for.
    #[error("TTL for the {what} must be at least one second")]
    ZeroTtl {
        /// Which certificate.
        what: &'static str,
    },
    /// The clock is before 1970 or beyond what X.509 can express.
    #[error("time {0:?} cannot be put in a certificate; check the system clock")]
    BadTime(SystemTime),
    /// The signing CA has already expired, so nothing it signs would be valid.
    #[error("the {what} expired at {not_after:?} (now {now:?}); rotate to a fresh CA")]
    IssuerExpired {
        /// Which CA.
        what: &'static str,
        /// When it expired.
        not_after: SystemTime,
        /// The time used.
        now: SystemTime,
    },
    /// A private key does not belong to the certificate it was paired with.
    #[error(
        "the {what} private key does not match its certificate's public key; the key and cert files are mismatched"
    )]
    KeyMismatch {
        /// Which CA.
        what: &'static str,
    },
    /// A certificate names a different trust domain than expected.
    #[error("{what} has SPIFFE ID {id}, which is not in trust domain {trust_domain}")]
    TrustDomainMismatch {
        /// Which certificate or request.
        what: String,
        /// The offending ID.
        id: String,
        /// The expected trust domain.
        trust_domain: String,
    },
    /// A certificate could not be read (see [`CertError`]).
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A DNS name that cannot go in a SAN.
    #[error("DNS SAN {0:?} is not a valid DNS name")]
    BadDnsName(String),
}

/// A minted X.509-SVID (without its private key, which never leaves the workload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate DER first, then the intermediate's.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's serial number, lowercase hex without separators.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

const ORG: &str = "agentmesh";

fn unix_secs(t: SystemTime) -> Result<i64, CaError> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or(CaError::BadTime(t))
}

fn odt(secs: i64, orig: SystemTime) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::BadTime(orig))
}

fn ttl_secs(ttl: Duration, what: &'static str) -> Result<i64, CaError> {
    match i64::try_from(ttl.as_secs()) {
        Ok(0) => Err(CaError::ZeroTtl { what }),
        Ok(s) => Ok(s),
        // Absurd TTLs are simply capped by the issuer's own expiry below.
        Err(_) => Ok(i64::MAX / 2),
    }
}

/// A random positive 128-bit serial, as SPIRE uses.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign {
            what: "serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
    // Clear the sign bit so the INTEGER is positive, and set the next one so DER never strips a
    // leading zero byte: the serial is always exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn uri_san(uri: String) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CaError::Sign {
            what: "URI SAN",
            source: e,
        })
}

fn ca_name(kind: &str, td: &TrustDomain) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("agentmesh {kind} {td}"));
    dn.push(DnType::OrganizationName, ORG);
    dn
}

/// Makes a self-signed root CA certificate for `td`, returned as DER.
///
/// # Errors
/// [`CaError::ZeroTtl`], [`CaError::BadTime`] or [`CaError::Sign`].
pub fn new_root(
    td: &TrustDomain,
    key: &PrivateKey,
    ttl: Duration,
    now: SystemTime,
) -> Result<Vec<u8>, CaError> {
    let start = unix_secs(now)?;
    let end = start.saturating_add(ttl_secs(ttl, "root CA")?);
    let mut params = CertificateParams::default();
    params.not_before = odt(start, now)?;
    params.not_after = odt(end, now)?;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = ca_name("root", td);
    params.subject_alt_names = vec![uri_san(td.id_string())?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(key.as_rcgen())
        .map_err(|source| CaError::Sign {
            what: "root CA certificate",
            source,
        })?;
    Ok(cert.der().to_vec())
}

/// Makes an intermediate CA certificate for `td`, signed by the root, returned as DER.
///
/// Its expiry is capped at the root's, since a chain is only as valid as its shortest link.
///
/// # Errors
/// [`CaError::KeyMismatch`] if `root_key` is not the root's key, [`CaError::IssuerExpired`] if
/// the root has expired, [`CaError::Cert`], [`CaError::ZeroTtl`] or [`CaError::Sign`].
pub fn new_intermediate(
    td: &TrustDomain,
    key: &PrivateKey,
    ttl: Duration,
    now: SystemTime,
    root_cert_der: &[u8],
    root_key: &PrivateKey,
) -> Result<Vec<u8>, CaError> {
    let root = parse_cert(root_cert_der, "root CA certificate")?;
    if root.public_key().raw != root_key.public_key_der().as_slice() {
        return Err(CaError::KeyMismatch { what: "root CA" });
    }
    if !root.is_ca() {
        return Err(CertError::NotCa("root CA certificate".to_owned()).into());
    }
    let start = unix_secs(now)?;
    let root_end = root.validity().not_after.timestamp();
    if root_end <= start {
        return Err(CaError::IssuerExpired {
            what: "root CA",
            not_after: system_time(root_end),
            now,
        });
    }
    let end = start
        .saturating_add(ttl_secs(ttl, "intermediate CA")?)
        .min(root_end);

    let issuer =
        Issuer::from_ca_cert_der(&root_cert_der.into(), root_key.as_rcgen()).map_err(|source| {
            CaError::Sign {
                what: "intermediate CA certificate (reading the root)",
                source,
            }
        })?;
    let mut params = CertificateParams::default();
    params.not_before = odt(start, now)?;
    params.not_after = odt(end, now)?;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = ca_name("intermediate", td);
    params.subject_alt_names = vec![uri_san(td.id_string())?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(key.as_rcgen(), &issuer)
        .map_err(|source| CaError::Sign {
            what: "intermediate CA certificate",
            source,
        })?;
    Ok(cert.der().to_vec())
}

/// The active signing CA: an intermediate certificate and its key.
pub struct Authority {
    trust_domain: TrustDomain,
    cert_der: Vec<u8>,
    /// CA certificates between the intermediate and the root (an upstream authority's own
    /// intermediates), appended to every minted chain; empty when our root signs directly.
    chain_tail: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
    serial: String,
    not_after: SystemTime,
    not_after_secs: i64,
}

impl Authority {
    /// Builds the signer from an intermediate certificate and its key.
    ///
    /// # Errors
    /// [`CaError::Cert`] (unparseable, not a CA), [`CaError::KeyMismatch`] if the key is not
    /// the certificate's, [`CaError::TrustDomainMismatch`] if the certificate is for another
    /// trust domain.
    pub fn new(
        td: &TrustDomain,
        intermediate_cert_der: Vec<u8>,
        intermediate_key: PrivateKey,
    ) -> Result<Self, CaError> {
        let what = "intermediate CA certificate";
        let cert = parse_cert(&intermediate_cert_der, what)?;
        if !cert.is_ca() {
            return Err(CertError::NotCa(what.to_owned()).into());
        }
        if cert.public_key().raw != intermediate_key.public_key_der().as_slice() {
            return Err(CaError::KeyMismatch {
                what: "intermediate CA",
            });
        }
        let id = spiffe_id_of(&cert, what)?;
        if id.trust_domain() != td {
            return Err(CaError::TrustDomainMismatch {
                what: what.to_owned(),
                id: id.to_string(),
                trust_domain: td.to_string(),
            });
        }
        let not_after_secs = cert.validity().not_after.timestamp();
        let serial = serial_hex(&cert);
        let issuer = Issuer::from_ca_cert_der(
            &intermediate_cert_der.as_slice().into(),
            intermediate_key.into_rcgen(),
        )
        .map_err(|source| CaError::Sign {
            what: "intermediate CA issuer",
            source,
        })?;
        Ok(Self {
            trust_domain: td.clone(),
            cert_der: intermediate_cert_der,
            chain_tail: Vec::new(),
            issuer,
            serial,
            not_after: system_time(not_after_secs),
            not_after_secs,
        })
    }

    /// Appends `certs` (DER, nearest first) to every chain this authority mints: the upstream
    /// authority's intermediates, when the intermediate's issuer is not itself a bundle root.
    #[must_use]
    pub fn with_chain_tail(mut self, certs: Vec<Vec<u8>>) -> Self {
        self.chain_tail = certs;
        self
    }

    /// Mints an X.509-SVID for `id` over `public_key`, following the SPIFFE X509-SVID profile.
    ///
    /// The validity starts at `now` (truncated to whole seconds, not backdated) and lasts `ttl`,
    /// cut short at the intermediate's own expiry.
    ///
    /// # Errors
    /// [`CaError::TrustDomainMismatch`] for an ID outside this CA's trust domain,
    /// [`CaError::IssuerExpired`], [`CaError::BadDnsName`], [`CaError::ZeroTtl`] or
    /// [`CaError::Sign`].
    pub fn mint_x509_svid(
        &self,
        id: &SpiffeId,
        public_key: &CsrPublicKey,
        ttl: Duration,
        dns_names: &[String],
        now: SystemTime,
    ) -> Result<X509Svid, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::TrustDomainMismatch {
                what: "requested SVID".to_owned(),
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        let start = unix_secs(now)?;
        if self.not_after_secs <= start {
            return Err(CaError::IssuerExpired {
                what: "intermediate CA",
                not_after: self.not_after,
                now,
            });
        }
        let end = start
            .saturating_add(ttl_secs(ttl, "X509-SVID")?)
            .min(self.not_after_secs);

        let mut sans = Vec::with_capacity(1 + dns_names.len());
        sans.push(uri_san(id.to_string())?);
        for name in dns_names {
            if !is_dns_name(name) {
                return Err(CaError::BadDnsName(name.clone()));
            }
            let ia5 = Ia5String::try_from(name.as_str())
                .map_err(|_| CaError::BadDnsName(name.clone()))?;
            sans.push(SanType::DnsName(ia5));
        }

        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORG);

        let mut params = CertificateParams::default();
        params.not_before = odt(start, now)?;
        params.not_after = odt(end, now)?;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        // SPIRE's set: keyEncipherment and keyAgreement keep RSA/ECDH TLS stacks happy.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                what: "X509-SVID",
                source,
            })?;
        let leaf = cert.der().to_vec();
        let serial = serial_hex(&parse_cert(&leaf, "minted X509-SVID")?);
        tracing::debug!(spiffe_id = %id, serial = %serial, "minted X509-SVID");
        Ok(X509Svid {
            spiffe_id: id.clone(),
            chain: [vec![leaf, self.cert_der.clone()], self.chain_tail.clone()].concat(),
            serial,
            not_before: system_time(start),
            not_after: system_time(end),
        })
    }

    /// When the intermediate certificate expires; nothing minted outlives this.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The intermediate certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Accepts LDH labels, optionally with a leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests;
