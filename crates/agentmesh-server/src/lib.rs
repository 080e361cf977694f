//! agentmesh-server: the control plane. It keeps the datastore (registration entries,
//! intentions, the service catalog, join tokens, attested nodes), runs the CA (self-signed or
//! under an OpenBao upstream), attests nodes (join tokens, x509pop), and serves the node API over mTLS and the admin
//! API on a Unix socket. Not for workloads: they get their SVIDs from a node
//! (agentmesh-node), never from the server, and the server enforces no intentions (the
//! proxies do, with agentmesh-policy).
//!
//! [`start`] with a [`ServerConfig`] is the whole entry point; with the `testing` feature,
//! `ServerConfig::for_test` and `TestServer` give tests a server in a temporary directory.
#![forbid(unsafe_code)]

mod admin_api;
mod bootstrap;
mod ca;
mod datastore;
mod federation;
mod node_api;
mod oidc_discovery;
mod registration;
mod server;
mod state;
#[cfg(feature = "testing")]
mod testing;
mod tls_incoming;
mod upstream;
mod x509pop;

pub use bootstrap::{BootstrapConfig, BootstrapEntry, BootstrapError};
pub use ca::{CaLifetimes, CaManagerError};
pub use datastore::DatastoreError;
pub use federation::{
    BundleEndpointConfig, DEFAULT_REFRESH_HINT, FederatesWith, FederationConfig, FederationError,
    Profile,
};
pub use oidc_discovery::{OidcDiscoveryConfig, OidcDiscoveryError};
pub use registration::EntryError;
pub use server::{RunningServer, ServerConfig, ServerError, start};
pub use state::IssuanceSettings;
pub use state::{NODE_PATH_PREFIX, SERVER_PATH};
#[cfg(feature = "testing")]
pub use testing::{HarnessError, TEST_TRUST_DOMAIN, TestServer};
pub use upstream::{OpenBaoAuth, OpenBaoUpstreamConfig, UpstreamError};
pub use x509pop::{AttestedX509Pop, X509PopAttestError, X509PopConfig, X509PopVerifier};
