//! A2A permissions: per-method decisions, default deny once named, first match, deny on a
//! tie, spelling, and the skill mapping.

use super::*;
use crate::a2a::{A2aCall, skill_methods};

const POST: HttpRequest<'static> = HttpRequest {
    method: "POST",
    path: "/a2a",
    headers: &[],
};

fn a2a(set: &PolicySet, method: &str) -> Decision {
    set.check_a2a(&id("a"), &id("b"), &POST, &A2aCall { method, user: None })
}

const SEND_ONLY: Doc = (
    "send",
    r#"{"source":"a","destination":"b","action":"allow","permissions":[
        {"a2a":{"methods":["SendMessage","GetExtendedAgentCard"]}}]}"#,
);

#[test]
fn a_named_method_is_allowed_and_every_other_refused() {
    let s = set(&[SEND_ONLY]);
    assert!(s.a2a_applies(&id("a"), &id("b")));
    assert!(!s.mcp_applies(&id("a"), &id("b")));
    let cases: &[(&str, Action, &str)] = &[
        (
            "SendMessage",
            Action::Allow,
            "permission 1 of intention send allows A2A SendMessage",
        ),
        ("GetExtendedAgentCard", Action::Allow, "permission 1"),
        (
            "GetTask",
            Action::Deny,
            "inside A2A, every method no permission names is refused",
        ),
        (
            "CancelTask",
            Action::Deny,
            "no permission of intention send matches A2A CancelTask",
        ),
        // Another spelling is not an A2A method at all.
        ("sendMessage", Action::Deny, "is not an A2A 1.0 method"),
        ("SendMessage ", Action::Deny, "is not an A2A 1.0 method"),
        ("tools/call", Action::Deny, "is not an A2A 1.0 method"),
    ];
    for (method, want, why) in cases {
        let d = a2a(&s, method);
        assert_eq!(d.action, *want, "{method}: {d}");
        assert_eq!(d.intention_id.as_deref(), Some("send"), "{method}");
        assert!(d.reason.contains(why), "{method}: {}", d.reason);
    }
}

#[test]
fn the_first_matching_permission_wins_and_a_deny_names_any_case() {
    let s = set(&[(
        "mixed",
        r#"{"source":"a","destination":"b","action":"allow","permissions":[
            {"action":"deny","a2a":{"methods":["CancelTask"]}},
            {"a2a":{"methods":["*"]}}]}"#,
    )]);
    assert_eq!(a2a(&s, "CancelTask").action, Action::Deny);
    assert!(a2a(&s, "CancelTask").reason.contains("permission 1"));
    assert_eq!(a2a(&s, "GetTask").action, Action::Allow);
    assert!(a2a(&s, "GetTask").reason.contains("permission 2"));
}

#[test]
fn deny_wins_a_tie_and_a_whole_deny_refuses_every_method() {
    let deny = (
        "deny",
        r#"{"source":"a","destination":"b","action":"deny"}"#,
    );
    let s = set(&[SEND_ONLY, deny]);
    let d = a2a(&s, "SendMessage");
    assert_eq!(
        (d.action, d.intention_id.as_deref()),
        (Action::Deny, Some("deny"))
    );
    assert!(!s.a2a_applies(&id("a"), &id("b")));
}

#[test]
fn housekeeping_passes_and_an_unread_body_is_refused() {
    let s = set(&[SEND_ONLY]);
    // The public agent card is a GET.
    let card = HttpRequest {
        method: "GET",
        path: "/.well-known/agent-card.json",
        headers: &[],
    };
    assert!(s.check_request(&id("a"), &id("b"), &card).is_allowed());
    let d = s.check_request(&id("a"), &id("b"), &POST);
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("has A2A permissions"), "{}", d.reason);
}

#[test]
fn a_user_rule_on_a_method_needs_the_claim() {
    let s = set(&[(
        "fin",
        r#"{"source":"a","destination":"b","action":"allow","permissions":[
            {"a2a":{"methods":["SendMessage"]},"user":{"claims":{"groups":"finance"}}}]}"#,
    )]);
    let d = a2a(&s, "SendMessage");
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("no verified user token"), "{}", d.reason);
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"sub":"alice","groups":["finance"]}"#).unwrap();
    let call = A2aCall {
        method: "SendMessage",
        user: Some(&claims),
    };
    assert!(s.check_a2a(&id("a"), &id("b"), &POST, &call).is_allowed());
}

#[test]
fn bad_a2a_rules_are_refused_when_written() {
    let cases = [
        (r#"{"a2a":{"methods":[]}}"#, "a2a names no method"),
        (
            r#"{"a2a":{"methods":["sendMessage"]}}"#,
            "\"sendMessage\" is not an A2A method",
        ),
        (
            r#"{"a2a":{"methods":["SendMessage"],"skills":["x"]}}"#,
            "unknown field",
        ),
        (
            r#"{"a2a":{"methods":["SendMessage"]},"mcp":{"tools":["search"]}}"#,
            "not both",
        ),
    ];
    for (perm, want) in cases {
        let json = format!(
            r#"{{"source":"a","destination":"b","action":"allow","permissions":[{perm}]}}"#
        );
        let e = IntentionSpec::from_json(&json)
            .and_then(|s| s.validate(&td(), "x".into(), 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{perm}: {e}");
    }
    let mixed = r#"{"source":"a","destination":"b","action":"allow","permissions":[
        {"mcp":{"tools":["search"]}},{"a2a":{"methods":["SendMessage"]}}]}"#;
    let e = IntentionSpec::from_json(mixed)
        .unwrap()
        .validate(&td(), "x".into(), 0)
        .unwrap_err();
    assert!(
        matches!(e, IntentionError::McpAndA2a { mcp: 1, a2a: 2 }),
        "{e}"
    );
}

#[test]
fn a_skill_needs_the_methods_its_tags_name_or_send_message() {
    assert_eq!(skill_methods(["planning"]), ["SendMessage"]);
    assert_eq!(
        skill_methods(["x", "a2a:SendMessage", "a2a:GetTask"]),
        ["SendMessage", "GetTask"]
    );
}
