//! agentmesh-tls: rustls configurations built from SVIDs and bundles, the SPIFFE peer verifier,
//! and reading (never minting) certificates and PEM. Not for issuing certificates or keys (that
//! is agentmesh-ca), opening connections or deciding intentions (agentmesh-policy).
//!
//! Everything inside the mesh speaks TLS 1.3 only, with the ring provider chosen
//! explicitly so that whatever process-wide default another crate installs cannot
//! change what the mesh accepts. Peers are identified by the single SPIFFE ID in
//! their X509-SVID's URI SAN, never by DNS name: the chain is checked against the
//! trust bundle and the ID is then handed to an [`Authorizer`].
//!
//! The JWT bundle format ([`Jwk`], [`Jwks`]) lives here too, so that verifiers read bundles
//! without depending on the CA that mints them.
#![forbid(unsafe_code)]

mod authorize;
mod config;
mod credentials;
// A namespace of low-S signing helpers (`ecdsa::sign_p256_low_s`), also re-exported as
// `agentmesh_ca::ecdsa`.
pub mod ecdsa;
mod jwk;
mod peer;
mod pem;
mod spiffe_bundle;
mod verifier;
// Certificate reading: the crate root re-exports the DER-level calls; the helpers on parsed
// certificates (`parse_cert`, `serial_hex`, `spiffe_id_of`) are for agentmesh-ca.
pub mod x509;
// x509pop node attestation: what the node that proves and the server that checks share.
pub mod x509pop;

pub use authorize::{AuthorizeError, Authorizer, any_id, exact, from_fn, member_of};
pub use config::{
    ClientAuth, RotatingCert, TlsError, client_config, client_config_federated,
    client_config_rotating, server_config, server_config_federated, server_config_rotating,
};
pub use credentials::{CredentialsError, SvidCredentials};
pub use jwk::{Jwk, JwkError, Jwks};
pub use peer::{PeerError, peer_identity, peer_spiffe_id, spiffe_id_from_cert};
pub use pem::{PemError, pem_decode_all, pem_encode};
pub use spiffe_bundle::{SpiffeBundle, SpiffeBundleError};
pub use verifier::{Federation, SpiffeClientVerifier, SpiffeServerVerifier, VerifierError};
pub use x509::{
    CertError, VerifiedChain, cert_serial_hex, cert_spiffe_id, cert_validity, split_der_certs,
    verify_chain, verify_chain_to_root,
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
