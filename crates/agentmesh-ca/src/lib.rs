//! agentmesh-ca: the certificate authority: keys, CSR checks, X.509-SVID and JWT-SVID minting,
//! CA rotation. Not for networking or deciding who gets an SVID (the server attests and
//! authorizes), and not TLS: certificate reading and signature normalisation live in
//! agentmesh-tls.
#![forbid(unsafe_code)]

mod authority;
mod csr;
mod jwt;
mod keys;

// Signing normalisation moved to agentmesh-tls with certificate reading; kept at its old path.
pub use agentmesh_tls::ecdsa;
// Certificate and PEM reading moved to agentmesh-tls; re-exported so the CA's callers keep one
// import.
pub use agentmesh_tls::{
    CertError, cert_serial_hex, cert_spiffe_id, cert_validity, pem_decode_all, pem_encode,
    split_der_certs, verify_chain,
};
pub use authority::{Authority, CaError, X509Svid, new_intermediate, new_root};
pub use csr::{CsrError, CsrPublicKey, build_csr, verify_csr};
// The JWT bundle format moved to agentmesh-tls so verifiers need not depend on the CA;
// re-exported so the CA's callers keep one import.
pub use agentmesh_tls::{Jwk, JwkError, Jwks, SpiffeBundle, SpiffeBundleError};
pub use jwt::{JwtClaims, JwtError, JwtKey, peek_claims, sign_jwt_svid, validate_jwt_svid};
pub use keys::{KeyError, PrivateKey, read_secret_file, write_secret_file};
