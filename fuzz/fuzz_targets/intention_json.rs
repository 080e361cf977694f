//! Intentions as written (`intention create --file`, the admin API): the strict JSON model,
//! its validation and the L4 decisions of the result.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run intention_json` (from `fuzz/`).
#![no_main]

use agentmesh_policy::{Action, IntentionSpec, PolicySet, Target};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(spec) = IntentionSpec::from_json(input) else {
        return;
    };
    // What is stored is what was accepted: the stored form reads back to the same spec.
    let stored = spec.to_json();
    let reread = IntentionSpec::from_json(&stored)
        .unwrap_or_else(|e| panic!("stored form {stored:?} does not read back: {e}"));
    assert_eq!(reread, spec);

    let td = TrustDomain::new("fuzz.example").unwrap_or_else(|e| panic!("{e}"));
    let Ok(intention) = spec.validate(&td, "i-1".into(), 0) else {
        return;
    };
    // Normalising spells source and destination as full IDs; doing it twice changes nothing,
    // and the normalised spec validates to the same pair.
    let normal = spec
        .normalized(&td)
        .unwrap_or_else(|e| panic!("a valid spec failed to normalise: {e}"));
    let twice = normal
        .normalized(&td)
        .unwrap_or_else(|e| panic!("a normalised spec failed to normalise again: {e}"));
    assert_eq!(twice, normal);
    let again = normal
        .validate(&td, "i-1".into(), 0)
        .unwrap_or_else(|e| panic!("a normalised spec failed to validate: {e}"));
    assert_eq!(again.source, intention.source);
    assert_eq!(again.destination, intention.destination);

    // Decisions: a deny intention never admits anything, and a pair no intention names is
    // denied by default. A `*` source stands for callers of the destination's own trust
    // domain only (a federated caller needs an intention that names it).
    let outsider: SpiffeId = "spiffe://other.example/outsider"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let destination = match &intention.destination {
        Target::Any => {
            SpiffeId::from_service_name(&td, "anything").unwrap_or_else(|e| panic!("{e}"))
        }
        Target::Id(id) => id.clone(),
    };
    let source = match &intention.source {
        Target::Any => SpiffeId::from_service_name(destination.trust_domain(), "anyone")
            .unwrap_or_else(|e| panic!("{e}")),
        Target::Id(id) => id.clone(),
    };
    let set = PolicySet::new(vec![intention.clone()]);
    let connection = set.check_connection(&source, &destination);
    let tcp = set.check_tcp(&source, &destination);
    assert_eq!(connection.intention_id.as_deref(), Some("i-1"));
    if intention.action == Action::Deny {
        assert!(!connection.is_allowed() && !tcp.is_allowed());
    }
    if !intention.permissions.is_empty() {
        assert!(
            !tcp.is_allowed(),
            "raw TCP passed an intention with L7 rules"
        );
    }
    if intention.source == Target::Any && destination.trust_domain() != outsider.trust_domain() {
        let foreign = set.check_connection(&outsider, &destination);
        assert!(
            !foreign.is_allowed(),
            "a `*` source admitted a foreign caller"
        );
    }
    if intention.source.is_exact() && intention.source != Target::Id(outsider.clone()) {
        let stranger = set.check_connection(&outsider, &destination);
        assert!(!stranger.is_allowed());
        assert_eq!(stranger.intention_id, None);
    }
});
