//! SPIFFE IDs, trust domains, selectors and the validation rules of the SPIFFE specs.
//!
//! Only names and their rules: not certificates or keys (agentmesh-tls reads them,
//! agentmesh-ca issues them), and not attestation (the node decides which selectors hold).
#![forbid(unsafe_code)]

mod echo;
mod id;
mod selector;

pub use echo::{MAX_ECHO_CHARS, echo};
pub use id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use selector::{
    MAX_SELECTOR_KEY_LEN, MAX_SELECTOR_VALUE_LEN, NODE_SELECTOR_TYPES, Selector, SelectorError,
    SelectorSet,
};
