//! Path normalisation: the form a request's path is decided in and forwarded in.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run path_normalize` (from `fuzz/`).
#![no_main]

use agentmesh_policy::{EscapedSlashesAction, NormalizeOptions, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    for escaped_slashes in [
        EscapedSlashesAction::KeepUnchanged,
        EscapedSlashesAction::RejectRequest,
        EscapedSlashesAction::UnescapeAndForward,
    ] {
        let options = NormalizeOptions {
            escaped_slashes,
            ..NormalizeOptions::default()
        };
        let Ok(out) = normalize_path(input, &options) else {
            continue;
        };
        // The normal form is absolute, has no empty or dot segment, and is a fixed point:
        // deciding on it again decides on the same path.
        assert!(out.starts_with('/'), "{input:?} -> {out:?}");
        assert!(!out.contains("//"), "{input:?} -> {out:?}");
        assert!(
            !out.split('/').any(|s| s == "." || s == ".."),
            "{input:?} -> {out:?}"
        );
        let again = normalize_path(&out, &options)
            .unwrap_or_else(|e| panic!("{input:?} -> {out:?} is refused the second time: {e}"));
        assert_eq!(again, out, "{input:?}");
        // An escaped slash never survives as a separator the rules did not see.
        if escaped_slashes == EscapedSlashesAction::UnescapeAndForward {
            let upper = out.to_ascii_uppercase();
            assert!(!upper.contains("%2F") && !upper.contains("%5C") && !out.contains('\\'));
        }
    }
});
