use serde_json::json;

use super::*;

fn parse(body: &str) -> Result<Request, (A2aError, Option<Value>)> {
    Request::parse(body.as_bytes())
}

#[test]
fn a_request_is_named_by_its_method() {
    let r = parse(r#"{"jsonrpc":"2.0","id":"x1","method":"SendMessage","params":{"message":{}}}"#)
        .unwrap();
    assert_eq!((r.id, r.method.as_str()), (json!("x1"), "SendMessage"));
    let r = parse(r#"{"jsonrpc":"2.0","id":7,"method":"GetExtendedAgentCard"}"#).unwrap();
    assert_eq!(r.id, json!(7));
}

/// (body, expected error, whether the id comes back to answer with)
type BadCase = (&'static str, fn(&A2aError) -> bool, bool);

#[test]
fn bad_requests_get_one_clear_error_each() {
    let cases: &[BadCase] = &[
        (
            "{\"jsonrpc\":\"2.0\",",
            |e| matches!(e, A2aError::Malformed(_)),
            false,
        ),
        ("not json", |e| matches!(e, A2aError::Malformed(_)), false),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","method":"GetTask"}"#,
            |e| matches!(e, A2aError::Malformed(m) if m.contains("duplicate key")),
            false,
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"SendMessage"}]"#,
            |e| matches!(e, A2aError::Batch),
            false,
        ),
        ("42", |e| matches!(e, A2aError::Invalid(_)), false),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"SendMessage"}"#,
            |e| matches!(e, A2aError::Invalid(_)),
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"SendMessage"}"#,
            |e| matches!(e, A2aError::Invalid(m) if m.contains("no \"id\"")),
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"SendMessage"}"#,
            |e| matches!(e, A2aError::Invalid(_)),
            false,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"message/send"}"#,
            |e| matches!(e, A2aError::UnknownMethod(m) if m == "message/send"),
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"sendMessage"}"#,
            |e| matches!(e, A2aError::UnknownMethod(_)),
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":[1]}"#,
            |e| matches!(e, A2aError::InvalidParams(_)),
            true,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            |e| matches!(e, A2aError::Invalid(_)),
            true,
        ),
    ];
    for (body, want, with_id) in cases {
        let (e, id) = parse(body).unwrap_err();
        assert!(want(&e), "{body}: {e:?}");
        assert_eq!(id.is_some(), *with_id, "{body}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    let (status, code) = A2aError::Batch.status_and_code();
    assert_eq!((status.as_u16(), code), (400, INVALID_REQUEST));
    let (status, code) = A2aError::UnknownMethod("x".into()).status_and_code();
    assert_eq!((status.as_u16(), code), (200, METHOD_NOT_FOUND));
    let (status, code) = A2aError::NotJson("text/plain".into()).status_and_code();
    assert_eq!((status.as_u16(), code), (415, PARSE_ERROR));
}

fn card_answer() -> Value {
    json!({"jsonrpc": "2.0", "id": "c1", "result": {
        "name": "executor",
        "skills": [
            {"id": "answer", "name": "Answer", "tags": ["executor", "a2a:SendMessage"]},
            {"id": "untagged", "name": "Untagged", "tags": ["executor"]},
            {"id": "status", "name": "Status", "tags": ["a2a:GetTask", "a2a:SendMessage"]},
            {"id": "odd", "tags": [1]},
            "not a skill",
        ],
        "signatures": [{"protected": "x", "signature": "y"}],
    }})
}

fn skill_ids(msg: &Value) -> Vec<&str> {
    msg.pointer("/result/skills")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(|s| s.get("id")?.as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn the_extended_card_shows_only_the_skills_the_callers_methods_allow() {
    let send_only: Allowed = Arc::new(|m: &str| m == "SendMessage");
    let mut msg = card_answer();
    assert_eq!(filter_card(&mut msg, &json!("c1"), &send_only), 3);
    assert_eq!(skill_ids(&msg), ["answer", "untagged"]);
    assert!(msg["result"].get("signatures").is_none(), "{msg}");

    let both: Allowed = Arc::new(|m: &str| m == "SendMessage" || m == "GetTask");
    let mut msg = card_answer();
    filter_card(&mut msg, &json!("c1"), &both);
    assert_eq!(skill_ids(&msg), ["answer", "untagged", "status"]);

    let none: Allowed = Arc::new(|_: &str| false);
    let mut msg = card_answer();
    filter_card(&mut msg, &json!("c1"), &none);
    assert!(skill_ids(&msg).is_empty());

    // Another id, or an error answer, is left alone.
    let mut msg = card_answer();
    assert_eq!(filter_card(&mut msg, &json!("other"), &none), 0);
    assert_eq!(msg, card_answer());
    let mut err = json!({"jsonrpc": "2.0", "id": "c1", "error": {"code": -32007}});
    assert_eq!(filter_card(&mut err, &json!("c1"), &none), 0);

    assert!(filter_card_answer(b"<html>", &json!("c1"), &none).is_err());
}
