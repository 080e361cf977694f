//! MCP permissions: exact tool names (spelling tricks refused), resource prefixes, argument
//! constraints, user claims, first match and deny precedence, housekeeping and listings.

use serde_json::{Map, Value, json};

use super::*;
use crate::mcp::{McpCall, McpItem};

/// search for everyone, export only for finance, delete_all never, public files, one prompt.
const MCP: (&str, &str) = (
    "mcp",
    r#"{"source":"a","destination":"b","action":"allow","permissions":[
        {"action":"deny","mcp":{"tools":["delete_all"]}},
        {"mcp":{"tools":["search"],"resources":["file:///srv/public/"],"prompts":["summary"]}},
        {"mcp":{"tools":["export"]},"user":{"claims":{"groups":"finance"}}},
        {"mcp":{"tools":["read_file"],"arguments":{"path":{"prefix":"/srv/public/"}}}}
    ]}"#,
);

/// Every tool but the denied ones: a deny must hold whatever the spelling.
const STAR: (&str, &str) = (
    "star",
    r#"{"source":"a","destination":"c","action":"allow","permissions":[
        {"action":"deny","mcp":{"tools":["delete_all"],"resources":["file:///etc/"]}},
        {"action":"deny","mcp":{"tools":["write_file"],"arguments":{"path":{"prefix":"/etc/"}}}},
        {"mcp":{"tools":["*"],"resources":["*"]}}
    ]}"#,
);

fn post() -> HttpRequest<'static> {
    HttpRequest {
        method: "POST",
        path: "/mcp",
        headers: &[],
    }
}

fn decide(
    set: &PolicySet,
    dst: &str,
    method: &str,
    item: Option<McpItem<'_>>,
    arguments: Option<Value>,
    user: Option<Value>,
) -> Decision {
    let arguments: Option<Map<String, Value>> = arguments.map(|v| v.as_object().unwrap().clone());
    let user: Option<Map<String, Value>> = user.map(|v| v.as_object().unwrap().clone());
    set.check_mcp(
        &id("a"),
        &id(dst),
        &post(),
        &McpCall {
            method,
            item,
            arguments: arguments.as_ref(),
            user: user.as_ref(),
        },
    )
}

fn tool(set: &PolicySet, dst: &str, name: &str, args: Value) -> Decision {
    decide(
        set,
        dst,
        "tools/call",
        Some(McpItem::Tool(name)),
        Some(args),
        None,
    )
}

#[test]
fn only_named_tools_pass_and_the_refusal_names_the_intention() {
    let set = set(&[MCP]);
    assert!(set.mcp_applies(&id("a"), &id("b")));
    let ok = tool(&set, "b", "search", json!({"q": "x"}));
    assert!(ok.is_allowed(), "{ok}");
    assert_eq!(
        ok.reason,
        r#"permission 2 of intention mcp allows tools/call tool "search""#
    );
    let d = tool(&set, "b", "delete_all", json!({}));
    assert!(!d.is_allowed());
    assert_eq!(d.intention_id.as_deref(), Some("mcp"));
    assert!(
        d.reason.contains("permission 1 of intention mcp denies"),
        "{d}"
    );
    // Not named anywhere: default deny inside MCP.
    let d = tool(&set, "b", "rename", json!({}));
    assert!(!d.is_allowed());
    assert!(
        d.reason.contains("no permission of intention mcp matches")
            && d.reason.contains("no permission names is refused"),
        "{d}"
    );
}

#[test]
fn tool_names_are_exact_and_other_spellings_are_refused() {
    let set = set(&[MCP, STAR]);
    // (destination, name, allowed?)
    let cases: &[(&str, &str, bool)] = &[
        ("b", "search", true),
        ("b", "Search", false),
        ("b", "SEARCH", false),
        ("b", "search ", false),
        ("b", " search", false),
        ("b", "search\n", false),
        ("b", "sea\u{200b}rch", false),
        ("b", "ｓearch", false),
        ("b", "search\u{0}", false),
        ("b", "", false),
        // Under `*`, a deny holds for every case of its name, and odd spellings never pass.
        ("c", "anything", true),
        ("c", "delete_all", false),
        ("c", "DELETE_ALL", false),
        ("c", "Delete_All", false),
        ("c", "delete_all ", false),
        ("c", "delete_all\t", false),
        ("c", "ｄelete_all", false),
        ("c", "delete\u{00a0}all", false),
        ("c", "delete_\u{0430}ll", false),
    ];
    for (dst, name, want) in cases {
        let d = tool(&set, dst, name, json!({}));
        assert_eq!(d.is_allowed(), *want, "{dst} {name:?}: {d}");
        assert!(d.intention_id.is_some(), "{name:?}: {d}");
    }
    let d = tool(&set, "c", "delete_all ", json!({}));
    assert!(d.reason.contains("is not an MCP name"), "{d}");
}

#[test]
fn resources_are_prefixes_and_traversal_is_refused() {
    let set = set(&[MCP, STAR]);
    let read = |dst: &str, uri: &str| {
        decide(
            &set,
            dst,
            "resources/read",
            Some(McpItem::Resource(uri)),
            None,
            None,
        )
    };
    let cases: &[(&str, &str, bool)] = &[
        ("b", "file:///srv/public/a.txt", true),
        ("b", "file:///srv/public/", true),
        ("b", "file:///srv/private/a.txt", false),
        ("b", "file:///srv/public/../private/a", false),
        ("b", "file:///srv/public/%2e%2e/private/a", false),
        ("b", "file:///srv/public/%2E%2E/private/a", false),
        ("b", "file:///srv/public/..%2fprivate", false),
        ("b", "file:///srv/public/a\\..\\b", false),
        ("b", "file:///srv/public/a b", false),
        ("b", "file:///srv/public/%zz", false),
        ("b", "FILE:///srv/public/a", false),
        ("c", "file:///home/x", true),
        ("c", "file:///etc/passwd", false),
        ("c", "FILE:///ETC/passwd", false),
        ("c", "file:///%65tc/passwd", false),
    ];
    for (dst, uri, want) in cases {
        let d = read(dst, uri);
        assert_eq!(d.is_allowed(), *want, "{dst} {uri:?}: {d}");
    }
    // A prompt is matched by name.
    let get = |name| {
        decide(
            &set,
            "b",
            "prompts/get",
            Some(McpItem::Prompt(name)),
            None,
            None,
        )
    };
    assert!(get("summary").is_allowed());
    assert!(!get("other").is_allowed());
    assert!(!get("Summary").is_allowed());
}

#[test]
fn argument_prefixes_hold_for_allows_and_lean_to_refusal_for_denies() {
    let set = set(&[MCP, STAR]);
    let cases: &[(&str, &str, Value, bool)] = &[
        ("b", "read_file", json!({"path": "/srv/public/a.txt"}), true),
        (
            "b",
            "read_file",
            json!({"path": "/srv/public/a.txt", "n": 3}),
            true,
        ),
        (
            "b",
            "read_file",
            json!({"path": "/srv/private/a.txt"}),
            false,
        ),
        (
            "b",
            "read_file",
            json!({"path": "/srv/public/../private"}),
            false,
        ),
        (
            "b",
            "read_file",
            json!({"path": "/srv/public/..\\x"}),
            false,
        ),
        ("b", "read_file", json!({"path": ["/srv/public/a"]}), false),
        ("b", "read_file", json!({"path": null}), false),
        ("b", "read_file", json!({}), false),
        ("b", "read_file", json!({"Path": "/srv/public/a"}), false),
        ("c", "write_file", json!({"path": "/tmp/x"}), true),
        ("c", "write_file", json!({}), true),
        ("c", "write_file", json!({"path": "/etc/passwd"}), false),
        ("c", "write_file", json!({"path": "/ETC/passwd"}), false),
        ("c", "write_file", json!({"path": "%2Fetc/passwd"}), false),
        ("c", "write_file", json!({"path": ["/etc/passwd"]}), false),
        ("c", "write_file", json!({"path": 7}), false),
    ];
    for (dst, name, args, want) in cases {
        let d = tool(&set, dst, name, args.clone());
        assert_eq!(d.is_allowed(), *want, "{dst} {name} {args}: {d}");
    }
    let d = tool(&set, "b", "read_file", json!({"path": "/etc/passwd"}));
    assert!(
        d.reason
            .contains("permission 4 names it, but argument \"path\""),
        "{d}"
    );
}

#[test]
fn user_claims_allow_one_user_and_refuse_another() {
    let set = set(&[MCP]);
    let export = |user: Option<Value>| {
        decide(
            &set,
            "b",
            "tools/call",
            Some(McpItem::Tool("export")),
            Some(json!({})),
            user,
        )
    };
    assert!(export(Some(json!({"sub": "alice", "groups": ["eng", "finance"]}))).is_allowed());
    assert!(export(Some(json!({"sub": "carol", "groups": "finance"}))).is_allowed());
    let d = export(Some(json!({"sub": "bob", "groups": ["eng"]})));
    assert!(!d.is_allowed());
    assert!(d.reason.contains("has no groups=finance"), "{d}");
    assert!(!export(Some(json!({"groups": "Finance"}))).is_allowed());
    assert!(!export(Some(json!({"groups": [["finance"]]}))).is_allowed());
    let d = export(None);
    assert!(!d.is_allowed());
    assert!(d.reason.contains("carries no verified user token"), "{d}");
}

#[test]
fn housekeeping_and_listings_pass_for_an_allowed_pair_only() {
    let set = set(&[MCP, A_B_DENY]);
    // The deny wins the tie at the same precedence, so nothing passes for a -> b.
    for m in ["initialize", "ping", "tools/list"] {
        assert!(!decide(&set, "b", m, None, None, None).is_allowed());
    }
    let set = super::set(&[MCP, STAR]);
    for m in [
        "initialize",
        "ping",
        "notifications/initialized",
        "tools/list",
    ] {
        let d = decide(&set, "b", m, None, None, None);
        assert!(d.is_allowed(), "{m}: {d}");
    }
    // A plain request (an SSE GET) on the pair is housekeeping too.
    assert!(
        set.check_request(
            &id("a"),
            &id("b"),
            &HttpRequest {
                method: "GET",
                path: "/mcp",
                headers: &[]
            }
        )
        .is_allowed()
    );
    // A POST decided without reading its MCP message is refused.
    let d = set.check_request(
        &id("a"),
        &id("b"),
        &HttpRequest {
            method: "POST",
            path: "/mcp",
            headers: &[],
        },
    );
    assert!(!d.is_allowed());
    assert!(d.reason.contains("which this check does not read"), "{d}");
    // No intention: the default deny, and MCP is not read at all.
    assert!(!set.mcp_applies(&id("x"), &id("b")));
    assert!(!decide(&set, "x", "ping", None, None, None).is_allowed());
}

#[test]
fn http_criteria_of_an_mcp_permission_still_bound_housekeeping() {
    let set = set(&[(
        "p",
        r#"{"source":"a","destination":"b","action":"allow","permissions":[
            {"http":{"path_prefix":"/mcp"},"mcp":{"tools":["search"]}}
        ]}"#,
    )]);
    let call = McpCall {
        method: "ping",
        item: None,
        arguments: None,
        user: None,
    };
    let at = |path| {
        set.check_mcp(
            &id("a"),
            &id("b"),
            &HttpRequest {
                method: "POST",
                path,
                headers: &[],
            },
            &call,
        )
    };
    assert!(at("/mcp").is_allowed());
    assert!(!at("/admin").is_allowed());
}

#[test]
fn listed_items_are_shown_when_some_call_could_pass() {
    let set = set(&[MCP, STAR]);
    let shown = |dst: &str, name| {
        decide(
            &set,
            dst,
            "tools/list",
            Some(McpItem::Tool(name)),
            None,
            None,
        )
        .is_allowed()
    };
    assert!(shown("b", "search"));
    assert!(shown("b", "read_file"));
    assert!(!shown("b", "delete_all"));
    // Needs a verified user, and a listing without one hides it.
    assert!(!shown("b", "export"));
    assert!(shown("c", "write_file"));
    assert!(!shown("c", "delete_all"));
}

#[test]
fn bad_mcp_rules_are_refused_with_the_reason() {
    let cases = [
        (r#"{"mcp":{}}"#, "names no tool"),
        (r#"{"mcp":{"tools":["Delete All"]}}"#, "is not an MCP name"),
        (r#"{"mcp":{"tools":[""]}}"#, "is not an MCP name"),
        (r#"{"mcp":{"tools":["ｓearch"]}}"#, "is not an MCP name"),
        (r#"{"mcp":{"prompts":["a/b"]}}"#, "prompt \"a/b\""),
        (r#"{"mcp":{"resources":[""]}}"#, "not a URI prefix"),
        (
            r#"{"mcp":{"resources":["file:///a b"]}}"#,
            "not a URI prefix",
        ),
        (
            r#"{"mcp":{"resources":["x:"],"arguments":{"p":{"prefix":"/"}}}}"#,
            "name the tools",
        ),
        (
            r#"{"mcp":{"tools":["t"],"arguments":{"":{"prefix":"/"}}}}"#,
            "argument",
        ),
        (
            r#"{"mcp":{"tools":["t"],"arguments":{"p":{"suffix":"/"}}}}"#,
            "unknown field",
        ),
        (r#"{"mcp":{"tool":["t"]}}"#, "unknown field `tool`"),
        (r#"{"user":{"claims":{}}}"#, "user.claims"),
        (r#"{"user":{"claims":{"groups":["a"]}}}"#, "invalid type"),
    ];
    for (perm, want) in cases {
        let json = format!(
            r#"{{"source":"a","destination":"b","action":"allow","permissions":[{perm}]}}"#
        );
        let err = IntentionSpec::from_json(&json)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                s.validate(&td(), String::new(), 0)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap_err();
        assert!(err.contains(want), "{perm}: {err}");
    }
    // The spec round-trips through JSON (what the server stores) unchanged.
    let spec = IntentionSpec::from_json(MCP.1).unwrap();
    assert_eq!(IntentionSpec::from_json(&spec.to_json()).unwrap(), spec);
}
