//! SPIFFE IDs, trust domains, service names and selectors, from arbitrary text.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run spiffe` (from `fuzz/`).
#![no_main]

use agentmesh_spiffe::{Selector, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    // A valid ID prints back exactly as it was written, and what it prints parses to the
    // same ID: the string form is the identity.
    if let Ok(id) = SpiffeId::new(input) {
        assert_eq!(id.to_string(), input);
        assert_eq!(SpiffeId::new(&id.to_string()).as_ref(), Ok(&id));
        assert!(id.path().is_empty() || id.path().starts_with('/'));
        assert!(!id.path().ends_with('/'));
        assert!(id.is_member_of(id.trust_domain()));
    }

    if let Ok(td) = TrustDomain::new(input) {
        assert_eq!(TrustDomain::new(&td.id_string()).as_ref(), Ok(&td));
        // Every service name either resolves inside the trust domain or is a full SPIFFE ID.
        if let Ok(id) = SpiffeId::from_service_name(&td, input) {
            assert!(id.is_member_of(&td) || input.starts_with("spiffe://"));
        }
    }

    let td = TrustDomain::new("fuzz.example").unwrap_or_else(|e| panic!("{e}"));
    if let Ok(id) = SpiffeId::from_service_name(&td, input)
        && !input.starts_with("spiffe://")
    {
        assert!(id.is_member_of(&td));
        assert!(id.path().starts_with("/ns/"));
    }
    let _ = SpiffeId::from_path(&td, input);

    // A selector prints back as written: TYPE:KEY:VALUE, the value keeping its own colons.
    if let Ok(selector) = input.parse::<Selector>() {
        assert_eq!(selector.to_string(), input);
        assert!(!selector.kind().is_empty() && !selector.key().is_empty());
        assert!(!selector.value().is_empty());
        assert!(!selector.key().contains(':'));
    }
});
