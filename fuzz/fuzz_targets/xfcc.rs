//! The SDK's reader of `x-forwarded-client-cert`, which the gateway and the agents use.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run xfcc` (from `fuzz/`).
#![no_main]

use agentmesh_sdk::xfcc::parse_xfcc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Some(caller) = parse_xfcc(input) else {
        return;
    };
    // Only the nearest element (after the last ',') may name the caller: an earlier element
    // is whatever the client sent, and trusting it would let a caller pick its identity.
    let nearest = input.rsplit(',').next().unwrap_or_default();
    assert!(
        nearest.contains(&caller.id.to_string()),
        "caller {} is not in the nearest element {nearest:?}",
        caller.id
    );
    if let Some(by) = &caller.by {
        assert!(nearest.contains(&by.to_string()));
    }
});
