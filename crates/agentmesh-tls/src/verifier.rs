//! rustls verifiers that authenticate peers by X509-SVID instead of DNS name.
//!
//! Both sides do the same thing: build a path from the presented leaf to one of
//! the bundle's roots with webpki for the right extended key usage, read the one
//! SPIFFE ID from the leaf, and ask the [`Authorizer`]. The TLS server name is never
//! consulted because SVIDs carry no DNS SAN.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use agentmesh_spiffe::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::authorize::{AuthorizeError, Authorizer};
use crate::peer::{PeerError, spiffe_id_from_cert};

/// Why a verifier could not be built, or why it refused a peer.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum VerifierError {
    /// The bundle had no roots, which would make every peer fail; refuse to build instead.
    #[error(
        "trust bundle has no root certificates; refusing to build a verifier that trusts nothing"
    )]
    NoRoots,
    /// A bundle root could not be used as a trust anchor.
    #[error("trust bundle root {index} is not a usable trust anchor: {source}")]
    BadRoot {
        /// Position in the bundle.
        index: usize,
        /// webpki's reason.
        source: webpki::Error,
    },
    /// The peer's chain did not verify against the bundle.
    #[error("peer {side} certificate chain does not verify against the trust bundle: {source}")]
    Chain {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// webpki's reason.
        source: webpki::Error,
    },
    /// The chain verified but the leaf is not a usable X509-SVID.
    #[error("peer {side} certificate is not a valid x509-svid: {source}")]
    Peer {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// What is wrong with the leaf.
        source: PeerError,
    },
    /// The SVID is valid but the policy refuses its ID.
    #[error("peer {side} not authorized: {source}")]
    Authorize {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// The policy's reason.
        source: AuthorizeError,
    },
    /// A TLS 1.2 signature was offered; the mesh only speaks TLS 1.3.
    #[error("tls 1.2 handshake signature refused; the mesh only speaks tls 1.3")]
    Tls12,
    /// The peer's SPIFFE ID is in a trust domain this verifier holds no bundle of.
    #[error(
        "peer {side} {peer} is in trust domain {peer_domain}, which is not federated with {own}; \
         add it with [[federation.federates_with]] or `agentmesh bundle set`"
    )]
    NotFederated {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// The peer's SPIFFE ID, as its leaf claims it (unverified).
        peer: SpiffeId,
        /// The peer's trust domain.
        peer_domain: TrustDomain,
        /// The verifier's own trust domain.
        own: TrustDomain,
    },
}

/// The trust domains a verifier knows besides the one its `roots` belong to (SPIFFE
/// federation). Each federated bundle vouches only for SVIDs of its own trust domain, and
/// the own roots only for the own trust domain, so a federated CA can never sign an ID of
/// ours (or of a third domain) that we would accept.
///
/// # Examples
/// ```
/// let fed = agentmesh_tls::Federation::default();
/// assert!(fed.trust_domain.is_none() && fed.bundles.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federation {
    /// The trust domain of the own roots. `None`: the own roots vouch for an ID of any trust
    /// domain (one trust domain and no federation, the behaviour before federation existed).
    pub trust_domain: Option<TrustDomain>,
    /// The roots of each federated trust domain, DER.
    pub bundles: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
}

// rustls renders `CertificateError::Other` with `{:?}`, so Debug repeats the Display
// message; otherwise handshake errors would show struct dumps instead of sentences.
impl fmt::Debug for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<VerifierError> for rustls::Error {
    fn from(err: VerifierError) -> Self {
        // Common webpki failures map to the specific CertificateError so rustls sends
        // the matching alert (certificate_expired, unknown_ca, ...); the rest keep
        // our message through OtherError.
        if let VerifierError::Chain { source, .. } = &err {
            let specific = match source {
                webpki::Error::CertExpired { time, not_after } => {
                    Some(CertificateError::ExpiredContext {
                        time: *time,
                        not_after: *not_after,
                    })
                }
                webpki::Error::CertNotValidYet { time, not_before } => {
                    Some(CertificateError::NotValidYetContext {
                        time: *time,
                        not_before: *not_before,
                    })
                }
                webpki::Error::UnknownIssuer => Some(CertificateError::UnknownIssuer),
                webpki::Error::InvalidSignatureForPublicKey => Some(CertificateError::BadSignature),
                webpki::Error::BadDer | webpki::Error::BadDerTime => {
                    Some(CertificateError::BadEncoding)
                }
                _ => None,
            };
            if let Some(specific) = specific {
                return rustls::Error::InvalidCertificate(specific);
            }
        }
        if let VerifierError::Tls12 = err {
            return rustls::Error::Other(OtherError(Arc::new(err)));
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
    }
}

/// How many verified chains a verifier remembers before it starts over.
const VERIFIED_CACHE_LIMIT: usize = 1024;

/// A chain that verified against this verifier's roots: its SPIFFE ID and the time window
/// (seconds since the epoch, inclusive) in which every certificate presented with it is valid.
struct Verified {
    id: SpiffeId,
    not_before: u64,
    not_after: u64,
}

/// Chains that already verified, keyed by their exact DER bytes.
///
/// A peer presents the same SVID on every connection until it rotates, and checking its
/// leaf and intermediate signatures again (two ECDSA verifies) is the largest share of a
/// handshake's cost. Only the certificate checks are cached: the TLS CertificateVerify
/// signature, which proves the peer holds the key, is verified on every handshake, the time
/// window is checked on every use, and the authorizer is asked every time. The roots are
/// fixed for a verifier (a new bundle builds a new one), so a hit means the same bytes
/// chained to the same roots.
#[derive(Default)]
struct VerifiedCache {
    chains: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Verified>>,
}

impl VerifiedCache {
    fn key(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Vec<u8> {
        let mut key = Vec::with_capacity(
            end_entity.len() + intermediates.iter().map(|c| c.len() + 8).sum::<usize>() + 8,
        );
        // Length-prefixed, so different splits of the same bytes are different keys.
        for cert in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            key.extend_from_slice(&(cert.len() as u64).to_be_bytes());
            key.extend_from_slice(cert);
        }
        key
    }

    fn get(&self, key: &[u8], now: UnixTime) -> Option<SpiffeId> {
        let chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        let hit = chains.get(key)?;
        let t = now.as_secs();
        (hit.not_before <= t && t <= hit.not_after).then(|| hit.id.clone())
    }

    /// Remembers a chain that just verified. A chain whose validity cannot be read is not
    /// remembered (it will be verified in full next time).
    fn insert(
        &self,
        key: Vec<u8>,
        id: &SpiffeId,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
    ) {
        let mut not_before = 0_u64;
        let mut not_after = u64::MAX;
        for cert in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
                return;
            };
            let validity = parsed.validity();
            let (Ok(nb), Ok(na)) = (
                u64::try_from(validity.not_before.timestamp()),
                u64::try_from(validity.not_after.timestamp()),
            ) else {
                return;
            };
            not_before = not_before.max(nb);
            not_after = not_after.min(na);
        }
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if chains.len() >= VERIFIED_CACHE_LIMIT {
            chains.clear();
        }
        chains.insert(
            key,
            Verified {
                id: id.clone(),
                not_before,
                not_after,
            },
        );
    }
}

/// What the server and client verifiers share: the bundle, the policy and the algorithms.
struct Core {
    roots: Vec<TrustAnchor<'static>>,
    own: Option<TrustDomain>,
    federated: BTreeMap<TrustDomain, Vec<TrustAnchor<'static>>>,
    authorizer: Arc<dyn Authorizer>,
    algorithms: WebPkiSupportedAlgorithms,
    verified: VerifiedCache,
}

impl Core {
    fn new(
        roots: &[CertificateDer<'static>],
        federation: &Federation,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Self, VerifierError> {
        if roots.is_empty() {
            return Err(VerifierError::NoRoots);
        }
        let anchors = |roots: &[CertificateDer<'static>]| {
            roots
                .iter()
                .enumerate()
                .map(|(index, der)| {
                    webpki::anchor_from_trusted_cert(der)
                        .map(|anchor| anchor.to_owned())
                        .map_err(|source| VerifierError::BadRoot { index, source })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut federated = BTreeMap::new();
        for (td, roots) in &federation.bundles {
            // A federated bundle that is unusable is left out rather than failing the whole
            // config: its peers are then refused, the own trust domain keeps working.
            match anchors(roots) {
                Ok(a) if !a.is_empty() => {
                    federated.insert(td.clone(), a);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "federated bundle left out")
                }
            }
        }
        Ok(Self {
            roots: anchors(roots)?,
            own: federation.trust_domain.clone(),
            federated,
            authorizer,
            algorithms: crate::provider().signature_verification_algorithms,
            verified: VerifiedCache::default(),
        })
    }

    fn verify(
        &self,
        side: &'static str,
        usage: webpki::KeyUsage,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifierError> {
        let key = VerifiedCache::key(end_entity, intermediates);
        if let Some(id) = self.verified.get(&key, now) {
            self.authorizer
                .authorize(&id)
                .map_err(|source| VerifierError::Authorize { side, source })?;
            return Ok(id);
        }
        let chain = |source| VerifierError::Chain { side, source };
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(chain)?;
        let anchors = self.anchors_for(side, end_entity)?;
        leaf.verify_for_usage(
            self.algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain)?;
        let id = spiffe_id_from_cert(end_entity)
            .map_err(|source| VerifierError::Peer { side, source })?;
        self.verified.insert(key, &id, end_entity, intermediates);
        self.authorizer
            .authorize(&id)
            .map_err(|source| VerifierError::Authorize { side, source })?;
        Ok(id)
    }

    /// The roots that may vouch for this leaf: its trust domain's. The ID is read before the
    /// chain is verified only to choose the roots; it is trusted only once the chain verifies.
    fn anchors_for(
        &self,
        side: &'static str,
        end_entity: &CertificateDer<'_>,
    ) -> Result<&[TrustAnchor<'static>], VerifierError> {
        let Some(own) = &self.own else {
            return Ok(&self.roots);
        };
        let claimed = spiffe_id_from_cert(end_entity)
            .map_err(|source| VerifierError::Peer { side, source })?;
        let td = claimed.trust_domain();
        if td == own {
            return Ok(&self.roots);
        }
        match self.federated.get(td) {
            Some(anchors) => Ok(anchors),
            None => Err(VerifierError::NotFederated {
                side,
                peer_domain: td.clone(),
                peer: claimed,
                own: own.clone(),
            }),
        }
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn fmt_fields(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("roots", &self.roots.len())
            .field("federated", &self.federated.keys().collect::<Vec<_>>())
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

fn log_outcome(side: &str, result: &Result<SpiffeId, VerifierError>) {
    match result {
        Ok(id) => tracing::debug!(side, peer = %id, "peer svid verified"),
        Err(err) => tracing::debug!(side, error = %err, "peer svid refused"),
    }
}

/// Client-side verifier of the server's SVID. Ignores the TLS server name entirely.
pub struct SpiffeServerVerifier {
    core: Core,
}

impl SpiffeServerVerifier {
    /// Trusts chains ending at one of `roots`, then asks `authorizer` about the server's ID.
    ///
    /// # Errors
    /// Empty `roots`, or a root that is not a usable trust anchor.
    pub fn new(
        roots: &[CertificateDer<'static>],
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Self, VerifierError> {
        Self::federated(roots, &Federation::default(), authorizer)
    }

    /// Like [`SpiffeServerVerifier::new`], with federated trust domains: a server's chain
    /// must end at a root of the trust domain in its own SPIFFE ID.
    ///
    /// # Errors
    /// Empty `roots`, or a root that is not a usable trust anchor.
    pub fn federated(
        roots: &[CertificateDer<'static>],
        federation: &Federation,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Self, VerifierError> {
        Ok(Self {
            core: Core::new(roots, federation, authorizer)?,
        })
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt_fields("SpiffeServerVerifier", f)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.core.verify(
            "server",
            webpki::KeyUsage::server_auth(),
            end_entity,
            intermediates,
            now,
        );
        log_outcome("server", &result);
        result?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(VerifierError::Tls12.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algorithms.supported_schemes()
    }
}

/// Server-side verifier of the client's SVID.
pub struct SpiffeClientVerifier {
    core: Core,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// Trusts chains ending at one of `roots`, then asks `authorizer` about the client's ID.
    ///
    /// With `mandatory == false` a client may connect without any certificate, but a
    /// certificate that is presented must still pass every check.
    ///
    /// # Errors
    /// Empty `roots`, or a root that is not a usable trust anchor.
    pub fn new(
        roots: &[CertificateDer<'static>],
        authorizer: Arc<dyn Authorizer>,
        mandatory: bool,
    ) -> Result<Self, VerifierError> {
        Self::federated(roots, &Federation::default(), authorizer, mandatory)
    }

    /// Like [`SpiffeClientVerifier::new`], with federated trust domains: a client's chain
    /// must end at a root of the trust domain in its own SPIFFE ID.
    ///
    /// # Errors
    /// Empty `roots`, or a root that is not a usable trust anchor.
    pub fn federated(
        roots: &[CertificateDer<'static>],
        federation: &Federation,
        authorizer: Arc<dyn Authorizer>,
        mandatory: bool,
    ) -> Result<Self, VerifierError> {
        Ok(Self {
            core: Core::new(roots, federation, authorizer)?,
            mandatory,
        })
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt_fields(
            if self.mandatory {
                "SpiffeClientVerifier(mandatory)"
            } else {
                "SpiffeClientVerifier(optional)"
            },
            f,
        )
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Empty hints tell clients to send whatever SVID they hold.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self.core.verify(
            "client",
            webpki::KeyUsage::client_auth(),
            end_entity,
            intermediates,
            now,
        );
        log_outcome("client", &result);
        result?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(VerifierError::Tls12.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algorithms.supported_schemes()
    }
}
