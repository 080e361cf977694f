use super::*;

const REJECT: NormalizeOptions = NormalizeOptions {
    escaped_slashes: EscapedSlashesAction::RejectRequest,
    headers_with_underscores: HeadersWithUnderscoresAction::RejectRequest,
};
const DECODE: NormalizeOptions = NormalizeOptions {
    escaped_slashes: EscapedSlashesAction::UnescapeAndForward,
    headers_with_underscores: HeadersWithUnderscoresAction::RejectRequest,
};
const KEEP: NormalizeOptions = NormalizeOptions {
    escaped_slashes: EscapedSlashesAction::KeepUnchanged,
    headers_with_underscores: HeadersWithUnderscoresAction::RejectRequest,
};

#[test]
fn the_default_options_are_the_secure_ones() {
    assert_eq!(NormalizeOptions::default(), REJECT);
}

#[test]
fn paths_are_normalised_to_what_the_app_sees() {
    // (input, expected under every escaped-slashes action, why)
    let cases: &[(&str, &str, &str)] = &[
        ("/", "/", "root"),
        ("/v1/models", "/v1/models", "already normal"),
        ("/v1/models/", "/v1/models/", "a trailing slash is kept"),
        ("//admin", "/admin", "leading double slash"),
        ("/v1//admin///x", "/v1/admin/x", "repeated slashes merged"),
        ("////", "/", "only slashes"),
        ("/v1/./admin", "/v1/admin", "single dot"),
        ("/v1/../admin", "/admin", "double dot"),
        ("/v1/x/../../admin", "/admin", "two levels"),
        ("/v1/..", "/", "ends in .. at root"),
        (
            "/v1/x/..",
            "/v1/",
            "a final .. leaves a slash (RFC 3986 5.2.4)",
        ),
        ("/v1/.", "/v1/", "a final . leaves a slash"),
        ("/v1/..//admin", "/admin", "dot-segment then double slash"),
        ("/%61dmin", "/admin", "escaped letter"),
        (
            "/%41DMIN",
            "/ADMIN",
            "escaped uppercase letter; case is kept",
        ),
        (
            "/v1/%2e%2e/admin",
            "/admin",
            "escaped dots are dot-segments",
        ),
        ("/v1/%2E%2e/admin", "/admin", "mixed-case escaped dots"),
        ("/v1/.%2E/admin", "/admin", "half-escaped dot-segment"),
        ("/V1/../admin", "/admin", "mixed-case segment with .."),
        (
            "/a%2db%5fc%7ed",
            "/a-b_c~d",
            "escaped unreserved punctuation",
        ),
        ("/%30%39", "/09", "escaped digits"),
        (
            "/a%3fb",
            "/a%3Fb",
            "a reserved escape stays, in uppercase hex",
        ),
        ("/a%3Fb", "/a%3Fb", "already uppercase"),
        ("/a%25", "/a%25", "an escaped % is not decoded twice"),
        (
            "/a%252e%252e/x",
            "/a%252e%252e/x",
            "double escapes stay escapes",
        ),
        ("/caf%c3%a9", "/caf%C3%A9", "non-ASCII escapes stay escaped"),
        ("/café", "/café", "raw UTF-8 is kept"),
        ("/a;b=c", "/a;b=c", "path parameters are not segments here"),
        (
            "/a..b/..c",
            "/a..b/..c",
            "dots inside a segment are not dot-segments",
        ),
    ];
    for (input, want, why) in cases {
        for opts in [REJECT, DECODE, KEEP] {
            assert_eq!(
                normalize_path(input, &opts).as_deref(),
                Ok(*want),
                "{input}: {why} ({opts:?})"
            );
        }
    }
}

#[test]
fn escaped_slashes_follow_the_setting() {
    // (input, reject_request, unescape_and_forward, keep_unchanged)
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("/a%2Fb", None, "/a/b", "/a%2Fb"),
        ("/a%2fb", None, "/a/b", "/a%2Fb"),
        ("/a%5Cb", None, "/a/b", "/a%5Cb"),
        ("/a%5cb", None, "/a/b", "/a%5Cb"),
        ("/a\\b", None, "/a/b", "/a%5Cb"),
        (
            "/public%2F..%2Fadmin",
            None,
            "/admin",
            "/public%2F..%2Fadmin",
        ),
        ("/public\\..\\admin", None, "/admin", "/public%5C..%5Cadmin"),
        ("/v1/%2F%2Fadmin", None, "/v1/admin", "/v1/%2F%2Fadmin"),
        ("/plain", Some("/plain"), "/plain", "/plain"),
    ];
    for (input, reject, decode, keep) in cases {
        match reject {
            Some(want) => assert_eq!(normalize_path(input, &REJECT).as_deref(), Ok(*want)),
            None => assert_eq!(
                normalize_path(input, &REJECT),
                Err(PathError::EscapedSlash),
                "{input}"
            ),
        }
        assert_eq!(
            normalize_path(input, &DECODE).as_deref(),
            Ok(*decode),
            "{input}"
        );
        assert_eq!(
            normalize_path(input, &KEEP).as_deref(),
            Ok(*keep),
            "{input}"
        );
    }
    // Decoded slashes take part in dot-segments, so climbing out still fails.
    assert_eq!(
        normalize_path("/a%2F..%2F..%2Fetc", &DECODE),
        Err(PathError::AboveRoot)
    );
}

#[test]
fn bad_paths_get_one_specific_error() {
    let cases: &[(&str, PathError)] = &[
        ("", PathError::NotAbsolute),
        ("admin", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("%2Fadmin", PathError::NotAbsolute),
        ("/..", PathError::AboveRoot),
        ("/../admin", PathError::AboveRoot),
        ("/a/../../admin", PathError::AboveRoot),
        ("/%2e%2e/admin", PathError::AboveRoot),
        ("/%2E./etc/passwd", PathError::AboveRoot),
        ("//..//admin", PathError::AboveRoot),
        ("/a%", PathError::BadEscape(2)),
        ("/a%4", PathError::BadEscape(2)),
        ("/a%zz", PathError::BadEscape(2)),
        ("/a%%41", PathError::BadEscape(2)),
        ("/a b", PathError::BadByte { byte: b' ', at: 2 }),
        ("/a\0", PathError::BadByte { byte: 0, at: 2 }),
        ("/a\tb", PathError::BadByte { byte: b'\t', at: 2 }),
        ("/a?b", PathError::BadByte { byte: b'?', at: 2 }),
        ("/a#b", PathError::BadByte { byte: b'#', at: 2 }),
        ("/a\x7f", PathError::BadByte { byte: 0x7f, at: 2 }),
    ];
    for (input, want) in cases {
        for opts in [REJECT, DECODE, KEEP] {
            let got = normalize_path(input, &opts);
            assert_eq!(got.as_ref(), Err(want), "{input:?} ({opts:?})");
            let msg = got.unwrap_err().to_string();
            assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}");
        }
    }
}

#[test]
fn the_query_is_kept_as_sent() {
    assert_eq!(
        normalize_path_and_query("//v1/../admin?x=/../%2f&y", &REJECT).as_deref(),
        Ok("/admin?x=/../%2f&y")
    );
    assert_eq!(
        normalize_path_and_query("/v1/%61?", &REJECT).as_deref(),
        Ok("/v1/a?")
    );
    assert_eq!(
        normalize_path_and_query("/..?x", &REJECT),
        Err(PathError::AboveRoot)
    );
}

#[test]
fn normalising_twice_changes_nothing() {
    let inputs = [
        "/v1/../admin",
        "//a//b/./c/..",
        "/%61%2e%2E/x",
        "/a%3f%2fb",
        "/a%5C..%5Cb",
        "/caf%c3%a9/",
        "/x/%252e",
    ];
    for input in inputs {
        for opts in [REJECT, DECODE, KEEP] {
            let Ok(once) = normalize_path(input, &opts) else {
                continue;
            };
            assert_eq!(
                normalize_path(&once, &opts).as_deref(),
                Ok(once.as_str()),
                "{input} ({opts:?})"
            );
        }
    }
}

#[test]
fn the_fast_path_agrees_with_the_full_normalisation() {
    // Every path the sweep below produces that is_normal accepts must come out of the slow
    // path unchanged; checked here on the spellings that sit at the boundary.
    let normal = ["/", "/a", "/a/", "/a/b.c/..d/.e/", "/~user/-_"];
    let not_normal = [
        "//", "/a//b", "/.", "/..", "/a/./b", "/a/..", "/%41", "/a\\b", "/a?b",
    ];
    for p in normal {
        assert!(is_normal(p.as_bytes()), "{p}");
    }
    for p in not_normal {
        assert!(!is_normal(p.as_bytes()), "{p}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic sweep standing in for the fuzzer: every short string over an
    // alphabet of the characters normalisation cares about.
    let alphabet = [
        "/", ".", "%", "2", "e", "F", "5", "c", "\\", "a", "é", "?", "%2e",
    ];
    let mut count = 0;
    let mut stack = vec![String::new()];
    while let Some(s) = stack.pop() {
        if s.starts_with('/') && is_normal(s.as_bytes()) {
            // The fast path returns its input: the full normalisation must agree.
            let mut slow = s.replace('/', "/x/");
            slow.insert_str(0, "/x/..");
            assert_eq!(
                normalize_path(&slow, &KEEP)
                    .ok()
                    .map(|o| o.replace("/x/", "/")),
                Some(s.clone()),
                "{s:?}"
            );
        }
        for opts in [REJECT, DECODE, KEEP] {
            if let Ok(out) = normalize_path(&s, &opts) {
                assert!(out.starts_with('/'), "{s:?} -> {out:?}");
                assert!(!out.contains("//"), "{s:?} -> {out:?}");
                assert!(
                    !out.split('/').any(|seg| seg == "." || seg == ".."),
                    "{s:?} -> {out:?}"
                );
            }
        }
        count += 1;
        if s.chars().count() < 5 {
            for c in alphabet {
                stack.push(format!("{s}{c}"));
            }
        }
    }
    assert!(count > 100_000, "{count}");
}

#[test]
fn underscores_in_header_names_are_found() {
    assert!(header_name_has_underscore("x_debug"));
    assert!(header_name_has_underscore("_"));
    assert!(!header_name_has_underscore("x-debug"));
}
