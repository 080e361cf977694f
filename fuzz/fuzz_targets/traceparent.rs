//! The W3C `traceparent` header every hop continues.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run traceparent` (from `fuzz/`).
#![no_main]

use agentmesh_telemetry::TraceContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let ctx = TraceContext::continue_or_start(Some(input));
    // Whatever came in, the ids going out are valid: never all zero.
    assert!(ctx.trace_id.iter().any(|b| *b != 0));
    assert!(ctx.span_id.iter().any(|b| *b != 0));
    if ctx.parent_is_remote {
        // Continued: the caller's trace id and span id were read from the header itself,
        // as lowercase hex.
        let parent = ctx.parent_span_id.unwrap_or_else(|| panic!("no parent"));
        assert!(input.contains(&ctx.trace_id_hex()));
        let parent_hex: String = parent.iter().map(|b| format!("{b:02x}")).collect();
        assert!(input.contains(&parent_hex));
    } else {
        assert!(ctx.parent_span_id.is_none());
    }
    // The header this hop sends on is one the next hop continues.
    let next = TraceContext::continue_or_start(Some(&ctx.header()));
    assert!(next.parent_is_remote);
    assert_eq!(next.trace_id, ctx.trace_id);
    assert_eq!(next.parent_span_id, Some(ctx.span_id));
    assert_eq!(next.flags, ctx.flags);
});
