//! rustls configurations built from SVIDs and bundles, and the SPIFFE peer verifier.
//!
//! Everything inside the mesh speaks TLS 1.3 only, with the ring provider chosen
//! explicitly so that whatever process-wide default another crate installs cannot
//! change what the mesh accepts. Peers are identified by the single SPIFFE ID in
//! their X509-SVID's URI SAN, never by DNS name: the chain is checked against the
//! trust bundle and the ID is then handed to an [`Authorizer`].
#![forbid(unsafe_code)]

pub mod authorize;
pub mod config;
pub mod credentials;
pub mod ecdsa;
pub mod peer;
pub mod pem;
pub mod verifier;
pub mod x509;

pub use authorize::{AuthorizeError, Authorizer, any_id, exact, from_fn, member_of};
pub use config::{
    ClientAuth, RotatingCert, TlsError, client_config, client_config_rotating, server_config,
    server_config_rotating,
};
pub use credentials::{CredentialsError, SvidCredentials};
pub use peer::{PeerError, peer_identity, peer_spiffe_id, spiffe_id_from_cert};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier, VerifierError};
pub use x509::{
    CertError, cert_serial_hex, cert_spiffe_id, cert_validity, split_der_certs, verify_chain,
};

/// The one crypto provider the mesh uses, built fresh so the process default never leaks in.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Prefer the SHA-256 suites: the handshake transcript and key schedule then hash with
    // SHA-256, which has CPU instructions on current x86 and ARM, instead of SHA-384 in
    // software (about a tenth of a sidecar's handshake CPU). AES-128-GCM is TLS 1.3's
    // mandatory suite; AES-256-GCM stays available to peers that only offer it.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    std::sync::Arc::new(provider)
}
