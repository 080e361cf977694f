//! SPIFFE IDs, trust domains, selectors and the validation rules of the SPIFFE specs.
#![forbid(unsafe_code)]

mod id;
mod selector;

pub use id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use selector::{Selector, SelectorError, SelectorSet};
