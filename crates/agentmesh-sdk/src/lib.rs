//! For Rust services that do mTLS themselves: a rotating identity source from the SPIFFE
//! Workload API, rustls configs built from it, identity checks for axum and tonic, an mTLS
//! client that pins the server's SPIFFE ID, JWS-signed responses, user-token verification and
//! the delegation chain (the user, then each agent that passed the request on, each link signed),
//! and the intentions enforced in process ([`RequireIntention`]), MCP tools and A2A methods
//! included, read by the same [`mcp`], [`a2a`] and [`jsonrpc`] modules the sidecar uses.
//!
//! Everything runs on one crypto backend (rustls with ring, TLS 1.3 only) and the mesh's own
//! Workload API client, so a service using the SDK trusts exactly what the sidecar would.
//!
//! Not an identity authority (it only follows what the node hands out) and not a sidecar: a
//! service that cannot use it runs behind `agentmesh-proxy` instead.
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

mod client;
mod local;
mod policy;
mod source;
mod token;

// Namespaces on purpose: their functions have short names that read well only with the
// module's (`grpc::incoming`, `grpc::channel`, `jws::sign`, `http::serve_limited`,
// `delegation::add_link`, `xfcc::parse_xfcc`, `tls::HANDSHAKE_TIMEOUT`), as in tonic's
// `transport` or axum's `routing`. Their main types are also at the root.
pub mod a2a;
pub mod delegation;
pub mod grpc;
pub mod http;
pub mod jsonrpc;
pub mod jws;
pub mod mcp;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod xfcc;

pub use agentmesh_spiffe::{SpiffeId, TrustDomain};
pub use agentmesh_tls::{AuthorizeError, Authorizer};
pub use client::{ClientError, MtlsClient, MtlsConnector, MtlsStream};
pub use delegation::{ChainConfig, ChainError, DELEGATION_HEADER, VerifiedChain};
pub use http::{PeerIdentity, RequireIdentity, ServeError, serve};
pub use jws::{JwsError, VerifiedJws};
pub use local::{
    LocalAddr, LocalConnector, LocalError, LocalListener, LocalPeer, LocalStream, MAX_SOCKET_PATH,
    StdLocalListener, check_unix_peer, http_client, own_uid, uid_allowed,
};
pub use policy::{
    DecisionRecord, DecisionSink, PolicyState, PolicyWatch, Registration, RequestHead,
    RequestRefused, RequireIntention, RequireIntentionService, header_pairs, normalize_request,
};
pub use source::{ENDPOINT_ENV, SourceError, Svid, X509Context, X509Source};
pub use token::{
    HttpJwks, JwksFetcher, MAX_JWKS_BYTES, MAX_TOKEN_LEN, RequireUserToken,
    RequireUserTokenService, TokenError, UserClaims, UserTokenConfig, UserTokenVerifier,
};
