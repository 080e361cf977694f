//! For Rust services that do mTLS themselves: a rotating identity source from the SPIFFE
//! Workload API, rustls configs built from it, identity checks for axum and tonic, an mTLS
//! client that pins the server's SPIFFE ID, JWS-signed responses, user-token verification and
//! the delegation chain (the user, then each agent that passed the request on, each link signed).
//!
//! Everything runs on one crypto backend (rustls with ring, TLS 1.3 only) and the mesh's own
//! Workload API client, so a service using the SDK trusts exactly what the sidecar would.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use agentmesh_sdk::{RequireIdentity, PeerIdentity};
//! use axum::{Router, routing::get};
//!
//! // One route that only spiffe://example.org/client may call.
//! let app: Router = Router::new().route(
//!     "/hello",
//!     get(|PeerIdentity(peer): PeerIdentity| async move { format!("hello {peer}") })
//!         .route_layer(RequireIdentity::exact(["spiffe://example.org/client".parse().unwrap()])),
//! );
//! # let _ = app;
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod delegation;
pub mod grpc;
pub mod http;
pub mod jws;
pub mod local;
pub mod policy;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod token;
pub mod xfcc;

pub use agentmesh_spiffe::{SpiffeId, TrustDomain};
pub use agentmesh_tls::{AuthorizeError, Authorizer};
pub use client::{ClientError, MtlsClient, MtlsConnector};
pub use delegation::{ChainConfig, ChainError, DELEGATION_HEADER, VerifiedChain};
pub use http::{PeerIdentity, RequireIdentity, ServeError, serve};
pub use jws::{JwsError, VerifiedJws};
pub use local::{
    LocalAddr, LocalConnector, LocalListener, LocalPeer, LocalStream, StdLocalListener,
};
pub use policy::{PolicyWatch, RequireIntention};
pub use source::{SourceError, Svid, X509Source};
pub use token::{RequireUserToken, TokenError, UserClaims, UserTokenVerifier};
