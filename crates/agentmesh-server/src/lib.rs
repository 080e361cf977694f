//! The control plane: the datastore, the CA, registration entries, join tokens, node
//! attestation, and the node and admin APIs.
#![forbid(unsafe_code)]

pub mod admin_api;
pub mod ca;
pub mod datastore;
pub mod node_api;
pub mod oidc_discovery;
pub mod registration;
pub mod server;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls_incoming;
pub mod upstream;

pub use ca::CaLifetimes;
pub use server::{RunningServer, ServerConfig, ServerError, start};
pub use state::IssuanceSettings;
