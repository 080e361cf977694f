//! DLP sees everything the gateway forwards: for each place a request can carry text (role,
//! content as a string and as parts, tool calls, tool results, names, Ollama's prompt,
//! system and images), an e-mail address hidden with a zero-width space or written in
//! full-width letters never reaches the provider. Where the field is forwarded it arrives
//! redacted, or the request is refused under `block`; fields the gateway does not forward
//! never arrive at all.

#[path = "support/harness.rs"]
mod harness;

use agentmesh_gateway::dlp_normalize as normalize;
use harness::*;
use serde_json::{Value, json};

const OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// Spellings of jane.doe@example.com that a pattern on the raw text would miss.
const HIDDEN: [&str; 2] = [
    "jane.doe@exa\u{200b}mple.com",
    "ｊａｎｅ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
];

fn gateway(url: &str, dlp: &str) -> TestGateway {
    TestGateway::new(
        &format!(
            "[[provider]]\nname = \"p\"\nkind = \"openai\"\nurl = \"{url}/v1\"\napi_key = \"sk-dlp-test-0123456789abcdef\"\nretries = 0\n\
             [[model]]\nname = \"m\"\nproviders = [\"p\"]\n[dlp]\n{dlp}\n"
        ),
        &[],
    )
}

/// Where the secret sits, the API path, the body, and whether that field is forwarded.
fn cases(secret: &str) -> Vec<(&'static str, &'static str, Value, bool)> {
    let user = |content: Value| json!({"role": "user", "content": content});
    vec![
        (
            "OpenAI content string",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [user(json!(format!("mail {secret}")))]}),
            true,
        ),
        (
            "OpenAI content parts, split across two parts",
            "/v1/chat/completions",
            {
                let (a, b) = secret.split_at(secret.find(['@', '＠']).unwrap());
                json!({"model": "m", "messages": [user(json!([
                    {"type": "text", "text": format!("mail {a}")},
                    {"type": "text", "text": b},
                ]))]})
            },
            true,
        ),
        (
            "OpenAI role",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": format!("user {secret}"), "content": "hi"}]}),
            true,
        ),
        (
            "OpenAI tool result",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [
                user(json!("look it up")),
                {"role": "tool", "tool_call_id": "call_1", "content": format!("found {secret}")},
            ]}),
            true,
        ),
        (
            "OpenAI name",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "name": secret, "content": "hi"}]}),
            false,
        ),
        (
            "OpenAI tool call: function name and arguments",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [
                user(json!("send it")),
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": format!("send_{secret}"),
                                 "arguments": json!({"to": secret}).to_string()}}]},
            ]}),
            false,
        ),
        (
            "Ollama chat content",
            "/api/chat",
            json!({"model": "m", "stream": false, "messages": [user(json!(format!("mail {secret}")))]}),
            true,
        ),
        (
            "Ollama chat images and tool calls",
            "/api/chat",
            json!({"model": "m", "stream": false, "messages": [
                {"role": "user", "content": "hi", "images": [secret]},
                {"role": "assistant", "content": "", "tool_calls": [{"function":
                    {"name": "send", "arguments": {"to": secret}}}]},
            ]}),
            false,
        ),
        (
            "Ollama generate prompt",
            "/api/generate",
            json!({"model": "m", "stream": false, "prompt": format!("mail {secret}")}),
            true,
        ),
        (
            "Ollama generate system",
            "/api/generate",
            json!({"model": "m", "stream": false, "prompt": "hi", "system": format!("you are {secret}")}),
            true,
        ),
    ]
}

/// What the provider received, normalised the way DLP sees text.
fn received(up: &FakeProvider) -> String {
    up.seen()
        .iter()
        .map(|s| normalize(&String::from_utf8_lossy(&s.body)).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn redact_reaches_every_forwarded_field_and_nothing_else_leaves() {
    for secret in HIDDEN {
        for (name, path, body, forwarded) in cases(secret) {
            let up = FakeProvider::start(vec![Reply::Json(200, OK.into())]).await;
            let gw = gateway(&up.url, "");
            let (status, answer) = gw.post(path, body).await;
            assert_eq!(status, 200, "{name}: {answer}");
            let seen = received(&up);
            assert_eq!(up.requests(), 1, "{name}");
            assert!(
                !seen.contains("example.com") && !seen.contains("jane"),
                "{name} ({secret}): the provider received {seen}"
            );
            let audit = &gw.audit()[0];
            if forwarded {
                assert!(seen.contains("[REDACTED:email]"), "{name}: {seen}");
                assert_eq!(audit["dlp_prompt"]["email"], 1, "{name}: {audit}");
            } else {
                assert!(!seen.contains("REDACTED"), "{name}: {seen}");
            }
        }
    }
}

#[tokio::test]
async fn block_refuses_every_forwarded_field_before_the_provider() {
    for secret in HIDDEN {
        for (name, path, body, forwarded) in cases(secret) {
            let up = FakeProvider::start(vec![Reply::Json(200, OK.into())]).await;
            let gw = gateway(&up.url, "email = \"block\"");
            let (status, answer) = gw.post(path, body).await;
            if forwarded {
                assert_eq!(status, 403, "{name}: {answer}");
                let message = answer["error"]["message"]
                    .as_str()
                    .or_else(|| answer["error"].as_str())
                    .unwrap_or_default();
                assert!(
                    message.contains("contains a email value"),
                    "{name}: {answer}"
                );
                assert_eq!(up.requests(), 0, "{name}: nothing reaches the provider");
                assert_eq!(gw.audit()[0]["decision"], "dlp_blocked", "{name}");
            } else {
                assert_eq!(status, 200, "{name}: {answer}");
                assert!(!received(&up).contains("example.com"), "{name}");
            }
        }
    }
}

#[tokio::test]
async fn a_card_in_full_width_or_other_script_digits_is_redacted_in_the_answer_too() {
    // The provider answers with a card number in Arabic-Indic digits and a zero-width joiner.
    let answer = json!({"choices": [{"message": {"role": "assistant",
        "content": "your card is ٤١١١ ١١١١ ١١١١ ١١١\u{200d}١"}}]})
    .to_string();
    let up = FakeProvider::start(vec![Reply::Json(200, answer)]).await;
    let gw = gateway(&up.url, "");
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "content": "card?"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "your card is [REDACTED:card]"
    );
    assert_eq!(gw.audit()[0]["dlp_response"]["card"], 1);
}
