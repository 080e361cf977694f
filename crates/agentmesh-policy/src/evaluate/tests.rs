use agentmesh_spiffe::{SpiffeId, TrustDomain};

use super::*;
use crate::intention::{IntentionError, IntentionSpec};

mod a2a;
mod headers;
mod mcp;

/// `(id, json)` of one intention.
type Doc = (&'static str, &'static str);
/// (intentions, source, destination, expected action, expected intention id)
type ConnectionCase = (
    &'static [Doc],
    &'static str,
    &'static str,
    Action,
    Option<&'static str>,
);
/// (method, path, headers, expected action, why)
type RequestCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Action,
    &'static str,
);

/// Header pairs with byte values, as `HttpRequest` takes them.
fn bytes<'a>(headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
    headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

fn td() -> TrustDomain {
    TrustDomain::new("agentmesh.local").unwrap()
}

fn id(name: &str) -> SpiffeId {
    SpiffeId::from_service_name(&td(), name).unwrap()
}

/// `(id, json)` pairs into a set; created_at follows the order given.
fn set(docs: &[(&str, &str)]) -> PolicySet {
    PolicySet::new(
        docs.iter()
            .enumerate()
            .map(|(n, (iid, json))| {
                IntentionSpec::from_json(json)
                    .unwrap()
                    .validate(&td(), (*iid).to_owned(), n as i64)
                    .unwrap()
            })
            .collect(),
    )
}

const A_B_ALLOW: (&str, &str) = (
    "ab-allow",
    r#"{"source":"a","destination":"b","action":"allow"}"#,
);
const A_B_DENY: (&str, &str) = (
    "ab-deny",
    r#"{"source":"a","destination":"b","action":"deny"}"#,
);
const ANY_B_ALLOW: (&str, &str) = (
    "anyb-allow",
    r#"{"source":"*","destination":"b","action":"allow"}"#,
);
const ANY_B_DENY: (&str, &str) = (
    "anyb-deny",
    r#"{"source":"*","destination":"b","action":"deny"}"#,
);
const A_ANY_ALLOW: (&str, &str) = (
    "aany-allow",
    r#"{"source":"a","destination":"*","action":"allow"}"#,
);
const A_ANY_DENY: (&str, &str) = (
    "aany-deny",
    r#"{"source":"a","destination":"*","action":"deny"}"#,
);
const ANY_ANY_ALLOW: (&str, &str) = (
    "anyany-allow",
    r#"{"source":"*","destination":"*","action":"allow"}"#,
);
const ANY_ANY_DENY: (&str, &str) = (
    "anyany-deny",
    r#"{"source":"*","destination":"*","action":"deny"}"#,
);
// The same pair as A_B_ALLOW, spelled with full SPIFFE IDs.
const A_B_ALLOW_BY_ID: (&str, &str) = (
    "ab-allow-id",
    r#"{"source":"spiffe://agentmesh.local/ns/default/sa/a","destination":"spiffe://agentmesh.local/ns/default/sa/b","action":"allow"}"#,
);

// One piece: the cases are one table that reads top to bottom as the specification of L4
// precedence;
// split, the rows would no longer be seen against each other.
#[test]
fn connection_precedence_table() {
    // (intentions, source, destination, expected action, expected intention id)
    let cases: &[ConnectionCase] = &[
        // Default deny.
        (&[], "a", "b", Action::Deny, None),
        (&[A_B_ALLOW], "b", "a", Action::Deny, None),
        (&[A_B_ALLOW], "a", "c", Action::Deny, None),
        (&[A_B_ALLOW], "c", "b", Action::Deny, None),
        // A single match decides.
        (&[A_B_ALLOW], "a", "b", Action::Allow, Some("ab-allow")),
        (
            &[A_B_ALLOW_BY_ID],
            "a",
            "b",
            Action::Allow,
            Some("ab-allow-id"),
        ),
        (&[A_B_DENY], "a", "b", Action::Deny, Some("ab-deny")),
        (&[ANY_B_ALLOW], "c", "b", Action::Allow, Some("anyb-allow")),
        (&[A_ANY_ALLOW], "a", "c", Action::Allow, Some("aany-allow")),
        (
            &[ANY_ANY_ALLOW],
            "x",
            "y",
            Action::Allow,
            Some("anyany-allow"),
        ),
        // Exact source beats wildcard source (same destination).
        (
            &[ANY_B_DENY, A_B_ALLOW],
            "a",
            "b",
            Action::Allow,
            Some("ab-allow"),
        ),
        (
            &[ANY_B_ALLOW, A_B_DENY],
            "a",
            "b",
            Action::Deny,
            Some("ab-deny"),
        ),
        (
            &[ANY_B_DENY, A_B_ALLOW],
            "c",
            "b",
            Action::Deny,
            Some("anyb-deny"),
        ),
        // Exact destination beats wildcard destination, even with a wildcard source.
        (
            &[A_ANY_DENY, ANY_B_ALLOW],
            "a",
            "b",
            Action::Allow,
            Some("anyb-allow"),
        ),
        (
            &[A_ANY_ALLOW, ANY_B_DENY],
            "a",
            "b",
            Action::Deny,
            Some("anyb-deny"),
        ),
        // Exact source + wildcard destination beats wildcard both.
        (
            &[ANY_ANY_DENY, A_ANY_ALLOW],
            "a",
            "c",
            Action::Allow,
            Some("aany-allow"),
        ),
        (
            &[ANY_ANY_ALLOW, A_ANY_DENY],
            "a",
            "c",
            Action::Deny,
            Some("aany-deny"),
        ),
        // Wildcard both is the last resort.
        (
            &[ANY_ANY_DENY, A_B_ALLOW],
            "a",
            "b",
            Action::Allow,
            Some("ab-allow"),
        ),
        (
            &[ANY_ANY_ALLOW, A_B_DENY],
            "c",
            "d",
            Action::Allow,
            Some("anyany-allow"),
        ),
        // Deny wins a tie, whatever the order given.
        (
            &[A_B_ALLOW, A_B_DENY],
            "a",
            "b",
            Action::Deny,
            Some("ab-deny"),
        ),
        (
            &[A_B_DENY, A_B_ALLOW],
            "a",
            "b",
            Action::Deny,
            Some("ab-deny"),
        ),
        (
            &[ANY_B_ALLOW, ANY_B_DENY],
            "a",
            "b",
            Action::Deny,
            Some("anyb-deny"),
        ),
        (
            &[ANY_ANY_ALLOW, ANY_ANY_DENY],
            "a",
            "b",
            Action::Deny,
            Some("anyany-deny"),
        ),
        (
            &[A_B_ALLOW_BY_ID, A_B_DENY],
            "a",
            "b",
            Action::Deny,
            Some("ab-deny"),
        ),
        // Two allows tie: the older decides, and the answer is still allow.
        (
            &[A_B_ALLOW, A_B_ALLOW_BY_ID],
            "a",
            "b",
            Action::Allow,
            Some("ab-allow"),
        ),
    ];
    for (n, (intentions, src, dst, action, matched)) in cases.iter().enumerate() {
        let d = set(intentions).check_connection(&id(src), &id(dst));
        assert_eq!(d.action, *action, "case {n}: {d}");
        assert_eq!(d.intention_id.as_deref(), *matched, "case {n}: {d}");
        assert_eq!(
            d.action,
            set(intentions).check_tcp(&id(src), &id(dst)).action,
            "case {n}: tcp"
        );
        assert!(!d.reason.is_empty());
    }
}

#[test]
fn reasons_say_what_happened() {
    let d = set(&[]).check_connection(&id("a"), &id("b"));
    assert!(d.reason.contains("default is deny"), "{d}");
    assert!(
        d.reason
            .contains("spiffe://agentmesh.local/ns/default/sa/a"),
        "{d}"
    );
    let d = set(&[A_B_ALLOW, A_B_DENY]).check_connection(&id("a"), &id("b"));
    assert!(d.reason.contains("deny wins a tie"), "{d}");
    assert!(
        d.reason.contains("ab-allow"),
        "names the other intention: {d}"
    );
    let d = set(&[A_B_ALLOW]).check_connection(&id("a"), &id("b"));
    assert!(
        d.reason.contains("ab-allow") && d.reason.contains("allows"),
        "{d}"
    );
}

const L7: (&str, &str) = (
    "l7",
    r#"{"source":"a","destination":"b","action":"allow","permissions":[
        {"action":"deny","http":{"path_prefix":"/v1/secret"}},
        {"http":{"methods":["GET","head"],"path_prefix":"/v1/"}},
        {"http":{"methods":["POST"],"path_exact":"/v1/submit"}},
        {"http":{"path_regex":"/items/[0-9]+"}},
        {"http":{"path_prefix":"/h/","headers":[
            {"name":"X-Env","exact":"prod"},
            {"name":"x-team","prefix":"ai-"},
            {"name":"x-file","suffix":".json"},
            {"name":"x-ver","regex":"v[0-9]"},
            {"name":"x-debug","present":true,"invert":true}
        ]}},
        {"action":"allow","http":{"path_prefix":"/inv/","headers":[{"name":"x-env","exact":"prod","invert":true}]}}
    ]}"#,
);

// One piece: the cases are one table that reads top to bottom as the specification of L7
// permissions;
// split, the rows would no longer be seen against each other.
#[test]
fn l7_permissions_table() {
    let good_headers: &[(&str, &str)] = &[
        ("x-env", "prod"),
        ("X-Team", "ai-research"),
        ("x-file", "report.json"),
        ("x-ver", "v2"),
    ];
    let debug_headers: &[(&str, &str)] = &[
        ("x-env", "prod"),
        ("x-team", "ai-research"),
        ("x-file", "report.json"),
        ("x-ver", "v2"),
        ("x-debug", "1"),
    ];
    // (method, path, headers, expected action, why)
    let cases: &[RequestCase] = &[
        ("GET", "/v1/models", &[], Action::Allow, "permission 2"),
        (
            "get",
            "/v1/models",
            &[],
            Action::Allow,
            "methods are case-insensitive",
        ),
        (
            "HEAD",
            "/v1/",
            &[],
            Action::Allow,
            "lowercase in the spec still matches",
        ),
        (
            "GET",
            "/v1/models?x=/admin",
            &[],
            Action::Allow,
            "query ignored",
        ),
        (
            "GET",
            "/v1/secret/key",
            &[],
            Action::Deny,
            "first match wins: permission 1 denies",
        ),
        (
            "POST",
            "/v1/models",
            &[],
            Action::Deny,
            "POST only on /v1/submit",
        ),
        ("POST", "/v1/submit", &[], Action::Allow, "permission 3"),
        ("POST", "/v1/submit/x", &[], Action::Deny, "exact is exact"),
        ("POST", "/admin", &[], Action::Deny, "nothing matches"),
        ("GET", "/admin", &[], Action::Deny, "nothing matches"),
        (
            "DELETE",
            "/items/42",
            &[],
            Action::Allow,
            "regex, any method",
        ),
        (
            "DELETE",
            "/items/42/x",
            &[],
            Action::Deny,
            "regex is anchored",
        ),
        (
            "DELETE",
            "/x/items/42",
            &[],
            Action::Deny,
            "regex is anchored at the start",
        ),
        (
            "GET",
            "/h/x",
            good_headers,
            Action::Allow,
            "all header matches hold",
        ),
        (
            "GET",
            "/h/x",
            &good_headers[1..],
            Action::Deny,
            "missing exact header",
        ),
        (
            "GET",
            "/h/x",
            debug_headers,
            Action::Deny,
            "inverted present",
        ),
        (
            "GET",
            "/h/x",
            &[
                ("x-env", "prod"),
                ("x-team", "ml-x"),
                ("x-file", "a.json"),
                ("x-ver", "v1"),
            ],
            Action::Deny,
            "prefix",
        ),
        (
            "GET",
            "/h/x",
            &[
                ("x-env", "prod"),
                ("x-team", "ai-x"),
                ("x-file", "a.yaml"),
                ("x-ver", "v1"),
            ],
            Action::Deny,
            "suffix",
        ),
        (
            "GET",
            "/h/x",
            &[
                ("x-env", "prod"),
                ("x-team", "ai-x"),
                ("x-file", "a.json"),
                ("x-ver", "v10"),
            ],
            Action::Deny,
            "regex anchored",
        ),
        (
            "GET",
            "/h/x",
            &[
                ("x-env", "production"),
                ("x-team", "ai-x"),
                ("x-file", "a.json"),
                ("x-ver", "v1"),
            ],
            Action::Deny,
            "exact",
        ),
        (
            "GET",
            "/inv/x",
            &[("x-env", "dev")],
            Action::Allow,
            "inverted exact",
        ),
        (
            "GET",
            "/inv/x",
            &[("x-env", "prod")],
            Action::Deny,
            "inverted exact",
        ),
        // An inverted match on an absent header holds (Envoy's semantics).
        (
            "GET",
            "/inv/x",
            &[],
            Action::Allow,
            "inverted exact, header absent",
        ),
    ];
    let policy = set(&[L7]);
    for (method, path, headers, action, why) in cases {
        let headers = bytes(headers);
        let req = HttpRequest {
            method,
            path,
            headers: &headers,
        };
        let d = policy.check_request(&id("a"), &id("b"), &req);
        assert_eq!(d.action, *action, "{method} {path}: {why}: {d}");
        assert_eq!(d.intention_id.as_deref(), Some("l7"));
    }
    // The connection is admitted; the requests decide.
    assert!(policy.check_connection(&id("a"), &id("b")).is_allowed());
    // Raw TCP cannot be checked at L7, so it is refused.
    let d = policy.check_tcp(&id("a"), &id("b"));
    assert!(!d.is_allowed() && d.reason.contains("need HTTP"), "{d}");
}

#[test]
fn l7_reasons_name_the_permission() {
    let policy = set(&[L7]);
    let req = HttpRequest {
        method: "GET",
        path: "/v1/secret/x",
        headers: &[],
    };
    let d = policy.check_request(&id("a"), &id("b"), &req);
    assert!(
        d.reason
            .contains("permission 1 of intention l7 denies GET /v1/secret/x"),
        "{d}"
    );
    let req = HttpRequest {
        method: "POST",
        path: "/admin",
        headers: &[],
    };
    let d = policy.check_request(&id("a"), &id("b"), &req);
    assert!(
        d.reason
            .contains("no permission of intention l7 matches POST /admin"),
        "{d}"
    );
}

#[test]
fn l4_deny_beats_l7_at_the_same_precedence_and_more_specific_l7_beats_wildcard_deny() {
    let req = HttpRequest {
        method: "GET",
        path: "/v1/x",
        headers: &[],
    };
    let d = set(&[L7, A_B_DENY]).check_request(&id("a"), &id("b"), &req);
    assert_eq!(d.intention_id.as_deref(), Some("ab-deny"), "{d}");
    let d = set(&[ANY_B_DENY, L7]).check_request(&id("a"), &id("b"), &req);
    assert_eq!(
        (d.action, d.intention_id.as_deref()),
        (Action::Allow, Some("l7")),
        "{d}"
    );
    // A plain intention (no permissions) decides every request.
    let d = set(&[A_B_ALLOW]).check_request(&id("a"), &id("b"), &req);
    assert_eq!(d.action, Action::Allow);
    let d = set(&[]).check_request(&id("a"), &id("b"), &req);
    assert_eq!((d.action, d.intention_id), (Action::Deny, None));
}

#[test]
fn malformed_intentions_are_refused_with_the_field_named() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"source":"a","destination":"b","action":"allow","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"source":"a","destination":"b","action":"maybe"}"#,
            "unknown variant `maybe`",
        ),
        (
            r#"{"source":"a","destination":"b"}"#,
            "missing field `action`",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"path_prefx":"/"}}]}"#,
            "unknown field `path_prefx`",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"path_prefix":"/a","path_exact":"/b"}}]}"#,
            "at most one of path_exact",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"path_prefix":"v1"}}]}"#,
            "must start with '/'",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"path_regex":"(["}}]}"#,
            "does not compile",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"methods":["GE T"]}}]}"#,
            "not an HTTP method",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"headers":[{"name":"x"}]}}]}"#,
            "exactly one of present",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"headers":[{"name":"x","exact":"1","prefix":"2"}]}}]}"#,
            "exactly one of present",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"headers":[{"name":"","present":true}]}}]}"#,
            "needs a name",
        ),
        (
            r#"{"source":"a","destination":"b","action":"allow","permissions":[{"http":{"headers":[{"name":"x","present":false}]}}]}"#,
            "invert: true",
        ),
        (
            r#"{"source":"Spiffe://x/y","destination":"b","action":"allow"}"#,
            "source",
        ),
        (
            r#"{"source":"a","destination":"a/b/c","action":"allow"}"#,
            "destination",
        ),
        (r#"{"source":"a","destination":"b","action":"allow""#, "EOF"),
    ];
    for (json, expected) in cases {
        let err = IntentionSpec::from_json(json)
            .and_then(|s| s.validate(&td(), "x".into(), 0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(expected), "{json}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    assert!(matches!(
        IntentionSpec::from_json("{}").unwrap_err(),
        IntentionError::Document(_)
    ));
}

#[test]
fn normalized_spellings_compare_equal_and_round_trip() {
    let by_name = IntentionSpec::from_json(A_B_ALLOW.1)
        .unwrap()
        .normalized(&td())
        .unwrap();
    let by_id = IntentionSpec::from_json(A_B_ALLOW_BY_ID.1)
        .unwrap()
        .normalized(&td())
        .unwrap();
    assert_eq!(by_name, by_id);
    let l7 = IntentionSpec::from_json(L7.1).unwrap();
    assert_eq!(IntentionSpec::from_json(&l7.to_json()).unwrap(), l7);
}

#[test]
fn a_federated_peer_is_admitted_only_by_an_intention_that_names_it() {
    let foreign = "spiffe://other.td/ns/default/sa/planner";
    let wildcard = set(&[(
        "w",
        r#"{"source":"*","destination":"executor","action":"allow"}"#,
    )]);
    let d = wildcard.check_connection(&foreign.parse().unwrap(), &id("executor"));
    assert_eq!(d.action, Action::Deny, "{}", d.reason);
    assert_eq!(
        wildcard
            .check_connection(&id("planner"), &id("executor"))
            .action,
        Action::Allow
    );
    let named = set(&[(
        "n",
        r#"{"source":"spiffe://other.td/ns/default/sa/planner","destination":"*","action":"allow"}"#,
    )]);
    let d = named.check_connection(&foreign.parse().unwrap(), &id("executor"));
    assert_eq!(d.action, Action::Allow, "{}", d.reason);
    assert_eq!(d.intention_id.as_deref(), Some("n"));
}
