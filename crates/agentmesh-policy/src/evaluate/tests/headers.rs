//! Header rules and path normalisation: every value of a repeated header is seen, values
//! that cannot be read fail closed, and requests are decided on the normalised path.

use super::*;

/// Deny rules on headers, with an allow-everything permission last so a deny rule that fails
/// to match shows as an allow.
const HEADER_DENIES: (&str, &str) = (
    "denies",
    r#"{"source":"a","destination":"b","action":"allow","permissions":[
        {"action":"deny","http":{"path_prefix":"/present/","headers":[{"name":"x-debug","present":true}]}},
        {"action":"deny","http":{"path_prefix":"/exact/","headers":[{"name":"x-env","exact":"dev"}]}},
        {"action":"deny","http":{"path_prefix":"/prefix/","headers":[{"name":"x-team","prefix":"ops-"}]}},
        {"action":"deny","http":{"path_prefix":"/suffix/","headers":[{"name":"x-file","suffix":".sh"}]}},
        {"action":"deny","http":{"path_prefix":"/regex/","headers":[{"name":"x-ver","regex":"v[0-9]+-beta"}]}},
        {"action":"deny","http":{"path_prefix":"/not-prod/","headers":[{"name":"x-env","exact":"prod","invert":true}]}},
        {"http":{"path_prefix":"/"}}
    ]}"#,
);

/// Allow rules on headers and nothing else, so an allow that fails to match is a deny.
const HEADER_ALLOWS: (&str, &str) = (
    "allows",
    r#"{"source":"a","destination":"c","action":"allow","permissions":[
        {"http":{"path_prefix":"/exact/","headers":[{"name":"x-env","exact":"prod"}]}},
        {"http":{"path_prefix":"/not-dev/","headers":[{"name":"x-env","exact":"dev","invert":true}]}},
        {"http":{"path_prefix":"/prefix/","headers":[{"name":"x-team","prefix":"ai-"}]}},
        {"http":{"path_prefix":"/suffix/","headers":[{"name":"x-file","suffix":".json"}]}},
        {"http":{"path_prefix":"/regex/","headers":[{"name":"x-ver","regex":"v[0-9]"}]}},
        {"http":{"path_prefix":"/present/","headers":[{"name":"x-token","present":true}]}},
        {"http":{"path_prefix":"/absent/","headers":[{"name":"x-debug","present":true,"invert":true}]}}
    ]}"#,
);

/// (destination, path, headers with raw values, expected action, why)
type HeaderCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static [u8])],
    Action,
    &'static str,
);

// One piece: the cases are one table that reads top to bottom as the specification of header
// rules;
// split, the rows would no longer be seen against each other.
#[test]
fn header_rules_see_every_value_and_unreadable_values_fail_closed() {
    use Action::{Allow, Deny};
    let cases: &[HeaderCase] = &[
        // present: any value, ASCII or not, even empty.
        (
            "b",
            "/present/x",
            &[],
            Allow,
            "absent: the deny does not apply",
        ),
        ("b", "/present/x", &[("x-debug", b"1")], Deny, "present"),
        (
            "b",
            "/present/x",
            &[("X-Debug", b"")],
            Deny,
            "empty value is present",
        ),
        (
            "b",
            "/present/x",
            &[("x-debug", b"\xff\xfe")],
            Deny,
            "non-UTF-8 value is present",
        ),
        (
            "b",
            "/present/x",
            &[("x-debug", b"\xc3\xa9")],
            Deny,
            "non-ASCII value is present",
        ),
        (
            "c",
            "/present/x",
            &[("x-token", b"\xff")],
            Allow,
            "present for any value",
        ),
        (
            "c",
            "/present/x",
            &[("x-token", b"\xc3\xa9")],
            Allow,
            "present for non-ASCII",
        ),
        ("c", "/present/x", &[], Deny, "absent"),
        ("c", "/absent/x", &[], Allow, "inverted present, absent"),
        (
            "c",
            "/absent/x",
            &[("x-debug", b"\x80")],
            Deny,
            "inverted present, non-ASCII value",
        ),
        // exact.
        ("b", "/exact/x", &[("x-env", b"dev")], Deny, "exact"),
        (
            "b",
            "/exact/x",
            &[("x-env", b"prod")],
            Allow,
            "another value",
        ),
        (
            "b",
            "/exact/x",
            &[("x-env", b"prod"), ("x-env", b"dev")],
            Deny,
            "dev hidden second",
        ),
        (
            "b",
            "/exact/x",
            &[("x-env", b"dev"), ("x-env", b"prod")],
            Deny,
            "dev first",
        ),
        (
            "b",
            "/exact/x",
            &[("x-env", b"d\xffev")],
            Deny,
            "unreadable may be dev",
        ),
        (
            "b",
            "/exact/x",
            &[("x-env", b"prod"), ("x-env", b"\x80")],
            Deny,
            "one unreadable",
        ),
        ("c", "/exact/x", &[("x-env", b"prod")], Allow, "exact"),
        (
            "c",
            "/exact/x",
            &[("x-env", b"prod"), ("x-env", b"prod")],
            Allow,
            "all values match",
        ),
        (
            "c",
            "/exact/x",
            &[("x-env", b"prod"), ("x-env", b"dev")],
            Deny,
            "not all values match",
        ),
        (
            "c",
            "/exact/x",
            &[("x-env", b"dev"), ("x-env", b"prod")],
            Deny,
            "first does not match",
        ),
        (
            "c",
            "/exact/x",
            &[("x-env", b"prod\xff")],
            Deny,
            "unreadable never allows",
        ),
        (
            "c",
            "/exact/x",
            &[("x-env", b"prod\xc3\xa9")],
            Deny,
            "non-ASCII never allows",
        ),
        ("c", "/exact/x", &[], Deny, "absent"),
        // inverted exact.
        (
            "b",
            "/not-prod/x",
            &[("x-env", b"prod")],
            Allow,
            "prod is let through",
        ),
        (
            "b",
            "/not-prod/x",
            &[("x-env", b"prod"), ("x-env", b"dev")],
            Deny,
            "one is not prod",
        ),
        (
            "b",
            "/not-prod/x",
            &[("x-env", b"pr\xffod")],
            Deny,
            "unreadable may not be prod",
        ),
        ("b", "/not-prod/x", &[], Deny, "absent is not prod"),
        ("c", "/not-dev/x", &[("x-env", b"prod")], Allow, "not dev"),
        ("c", "/not-dev/x", &[], Allow, "absent is not dev"),
        (
            "c",
            "/not-dev/x",
            &[("x-env", b"prod"), ("x-env", b"dev")],
            Deny,
            "one is dev",
        ),
        (
            "c",
            "/not-dev/x",
            &[("x-env", b"\xff")],
            Deny,
            "unreadable may be dev",
        ),
        (
            "c",
            "/not-dev/x",
            &[("x-env", b"d\xc3\xa9v")],
            Deny,
            "non-ASCII may be dev",
        ),
        // prefix.
        (
            "b",
            "/prefix/x",
            &[("x-team", b"ai-x")],
            Allow,
            "another prefix",
        ),
        (
            "b",
            "/prefix/x",
            &[("x-team", b"ai-x"), ("x-team", b"ops-root")],
            Deny,
            "second",
        ),
        (
            "b",
            "/prefix/x",
            &[("x-team", b"ops-\xc3\xa9")],
            Deny,
            "non-ASCII",
        ),
        (
            "c",
            "/prefix/x",
            &[("x-team", b"ai-a"), ("x-team", b"ai-b")],
            Allow,
            "all match",
        ),
        (
            "c",
            "/prefix/x",
            &[("x-team", b"ai-a"), ("x-team", b"ops")],
            Deny,
            "one does not",
        ),
        (
            "c",
            "/prefix/x",
            &[("x-team", b"ai-\xc3\xa9")],
            Deny,
            "non-ASCII",
        ),
        // suffix.
        (
            "b",
            "/suffix/x",
            &[("x-file", b"a.json"), ("x-file", b"run.sh")],
            Deny,
            "second",
        ),
        (
            "b",
            "/suffix/x",
            &[("x-file", b"a.json")],
            Allow,
            "another suffix",
        ),
        (
            "c",
            "/suffix/x",
            &[("x-file", b"a.json"), ("x-file", b"b.sh")],
            Deny,
            "one does not",
        ),
        (
            "c",
            "/suffix/x",
            &[("x-file", b"\xe9.json")],
            Deny,
            "Latin-1 byte",
        ),
        // regex.
        ("b", "/regex/x", &[("x-ver", b"v1")], Allow, "no match"),
        (
            "b",
            "/regex/x",
            &[("x-ver", b"v1"), ("x-ver", b"v2-beta")],
            Deny,
            "second",
        ),
        (
            "b",
            "/regex/x",
            &[("x-ver", b"v2-beta\xff")],
            Deny,
            "unreadable",
        ),
        (
            "c",
            "/regex/x",
            &[("x-ver", b"v1"), ("x-ver", b"v2")],
            Allow,
            "all match",
        ),
        (
            "c",
            "/regex/x",
            &[("x-ver", b"v1"), ("x-ver", b"x")],
            Deny,
            "one does not",
        ),
        ("c", "/regex/x", &[("x-ver", b"v1\x80")], Deny, "unreadable"),
    ];
    let policy = set(&[HEADER_DENIES, HEADER_ALLOWS]);
    for (destination, path, headers, action, why) in cases {
        let req = HttpRequest {
            method: "GET",
            path,
            headers,
        };
        let d = policy.check_request(&id("a"), &id(destination), &req);
        assert_eq!(
            d.action, *action,
            "{destination} {path} {headers:?}: {why}: {d}"
        );
    }
}

#[test]
fn unnormalized_requests_are_decided_on_the_normalised_path_or_refused() {
    use crate::normalize::{EscapedSlashesAction, HeadersWithUnderscoresAction, NormalizeOptions};
    let l7 = set(&[L7]);
    let header_denies = set(&[HEADER_DENIES]);
    let check_in =
        |policy: &PolicySet, path: &str, headers: &[(&str, &[u8])], options: &NormalizeOptions| {
            let req = HttpRequest {
                method: "GET",
                path,
                headers,
            };
            policy.check_unnormalized_request(&id("a"), &id("b"), &req, options)
        };
    let check = |path: &str, headers: &[(&str, &[u8])], options: &NormalizeOptions| {
        check_in(&l7, path, headers, options)
    };
    let defaults = NormalizeOptions::default();
    // Spellings of the denied /v1/secret prefix are denied by permission 1.
    for path in [
        "/v1/secret/k",
        "//v1/secret/k",
        "/v1//secret/k",
        "/v1/x/../secret/k",
        "/v1/./secret/k",
        "/v1/%73ecret/k",
        "/v1/%2e%2E/v1/secret/k?x=1",
        "/X/../v1/secret/k",
    ] {
        let d = check(path, &[], &defaults);
        assert_eq!(d.action, Action::Deny, "{path}: {d}");
        assert!(
            d.reason.contains("permission 1 of intention l7"),
            "{path}: {d}"
        );
        if path != "/v1/secret/k" {
            assert!(d.reason.contains("normalised to"), "{path}: {d}");
        }
    }
    // The normalised form of an allowed path is still allowed.
    let d = check("/v1//models/./x/..", &[], &defaults);
    assert!(d.is_allowed(), "{d}");
    // Refusals name why and no intention.
    for (path, why) in [
        ("/v1/secret%2Fk", "escaped slash"),
        ("/v1\\secret", "escaped slash"),
        ("/../v1/secret", "above '/'"),
        ("/v1/%zz", "percent-escape"),
    ] {
        let d = check(path, &[], &defaults);
        assert_eq!(
            (d.action, d.intention_id.as_deref()),
            (Action::Deny, None),
            "{path}"
        );
        assert!(d.reason.contains("refused before any intention"), "{d}");
        assert!(d.reason.contains(why), "{path}: {d}");
    }
    // With unescape_and_forward, the escaped slash is a real one and the rule sees it.
    let decode = NormalizeOptions {
        escaped_slashes: EscapedSlashesAction::UnescapeAndForward,
        ..defaults
    };
    let d = check("/v1%2Fsecret%5Ck", &[], &decode);
    assert!(d.reason.contains("permission 1 of intention l7"), "{d}");
    // Underscore header names: refused, dropped, or matched only under their own spelling.
    let debug: &[(&str, &[u8])] = &[("x_debug", b"1")];
    let check = |path: &str, headers: &[(&str, &[u8])], options: &NormalizeOptions| {
        check_in(&header_denies, path, headers, options)
    };
    assert!(check("/present/x", &[], &defaults).is_allowed());
    let d = check("/present/x", debug, &defaults);
    assert!(!d.is_allowed() && d.reason.contains("\"x_debug\""), "{d}");
    let drop = NormalizeOptions {
        headers_with_underscores: HeadersWithUnderscoresAction::DropHeader,
        ..defaults
    };
    assert!(check("/present/x", debug, &drop).is_allowed());
    let allow = NormalizeOptions {
        headers_with_underscores: HeadersWithUnderscoresAction::Allow,
        ..defaults
    };
    assert!(check("/present/x", debug, &allow).is_allowed());
    assert!(!check("/present/x", &[("x-debug", b"1")], &allow).is_allowed());
}
