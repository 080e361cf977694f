//! The certificate authority: keys, CSR checks, X.509-SVID and JWT-SVID minting, CA rotation.
#![forbid(unsafe_code)]

pub mod authority;
pub mod csr;
pub mod ecdsa;
pub mod jwt;
pub mod keys;

pub use agentmesh_tls::pem::{pem_decode_all, pem_encode};
pub use authority::{
    Authority, CaError, X509Svid, cert_serial_hex, cert_spiffe_id, cert_validity, new_intermediate,
    new_root, split_der_certs, verify_chain,
};
pub use csr::{CsrError, CsrPublicKey, build_csr, verify_csr};
pub use jwt::{
    Jwk, Jwks, JwtClaims, JwtError, JwtKey, peek_claims, sign_jwt_svid, validate_jwt_svid,
};
pub use keys::{KeyError, PrivateKey, read_secret_file, write_secret_file};
