//! Each network provider against its published API transcript: a loopback server checks the
//! request the gateway sends upstream (method, path, auth header, JSON body) against the one
//! the provider's docs show, and answers with the docs' response, which must come back to the
//! caller intact. Sources are in `tests/transcripts/README.md`.

#[path = "support/harness.rs"]
mod harness;

use harness::*;
use serde_json::{Value, json};

/// No real Ollama can run here (no network beyond package registries), so this checks
/// against the published transcript: the request of Ollama's "Chat request (No streaming)"
/// example, and its response relayed to an Ollama-API caller with the same text and counts.
#[tokio::test]
async fn ollama_request_and_answer_match_the_published_transcript() {
    let t = Transcript::load("ollama-chat");
    let up = FakeProvider::start(vec![Reply::Json(200, t.response.clone())]).await;
    let gw = TestGateway::new(
        &format!(
            "[[provider]]\nname = \"local\"\nkind = \"ollama\"\nurl = \"{}\"\n[[model]]\nname = \"llama3.2\"\nproviders = [\"local\"]\n",
            up.url
        ),
        &[],
    );

    let (status, body) = gw
        .post(
            "/api/chat",
            json!({"model": "llama3.2", "messages": t.request["messages"], "stream": false}),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri.path(), "/api/chat");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].header("authorization"), None, "Ollama takes no key");
    assert_eq!(seen[0].json(), t.request, "the documented request, exactly");

    assert_eq!(body["message"]["content"], "Hello! How are you today?");
    assert_eq!(body["prompt_eval_count"], 26);
    assert_eq!(body["eval_count"], 298);
    let audit = gw.audit();
    assert_eq!(audit[0]["provider"], "local");
    assert_eq!(audit[0]["attempts"], 1);
}

/// No real OpenAI-compatible server can run here (no network beyond package registries), so
/// this checks against the published transcript: the `Default` example of OpenAI's
/// `createChatCompletion`, with the url written the way the SDKs take it (`.../v1`), a key
/// from `OPENAI_API_KEY`, and the documented answer relayed to an OpenAI-API caller.
#[tokio::test]
async fn openai_request_and_answer_match_the_published_transcript() {
    let t = Transcript::load("openai-chat");
    let up = FakeProvider::start(vec![Reply::Json(200, t.response.clone())]).await;
    let gw = TestGateway::new(
        &format!(
            "[[provider]]\nname = \"cloud\"\nkind = \"openai\"\nurl = \"{}/v1\"\n[[model]]\nname = \"gpt-4o-mini\"\nproviders = [\"cloud\"]\n",
            up.url
        ),
        &[("OPENAI_API_KEY", "sk-test-transcript-key")],
    );

    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": t.request["messages"]}),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri.path(), "/v1/chat/completions");
    assert_eq!(seen[0].uri.query(), None);
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-test-transcript-key")
    );
    let mut sent = seen[0].json();
    assert_eq!(
        sent.as_object_mut().unwrap().remove("stream"),
        Some(Value::Bool(false)),
        "asks for one answer (the documented default)"
    );
    assert_eq!(sent, t.request, "otherwise the documented request, exactly");

    assert_eq!(
        body["choices"][0]["message"]["content"],
        "\n\nHello there, how may I assist you today?"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 9);
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert!(
        !gw.audit_text().contains("sk-test-transcript-key"),
        "the key is in the audit log"
    );
}

/// Gemini's JSON mapping accepts proto field names and a single object where a list is
/// expected; the docs use those forms, the gateway the reference's. Brings both to one.
fn gemini_canonical(v: &Value) -> Value {
    fn list(v: &Value) -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        }
    }
    let mut out = serde_json::Map::new();
    if let Some(si) = v
        .get("systemInstruction")
        .or_else(|| v.get("system_instruction"))
    {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": list(&si["parts"])}),
        );
    }
    let contents: Vec<Value> = list(&v["contents"])
        .iter()
        .map(|c| json!({"role": c["role"], "parts": list(&c["parts"])}))
        .collect();
    out.insert("contents".into(), Value::Array(contents));
    Value::Object(out)
}

/// No real Gemini can run here (no network beyond package registries), so this checks
/// against the published transcript: the Gemini cookbook's generateContent request with a
/// system instruction and user/model turns, produced from an OpenAI-API caller's
/// system/user/assistant messages, with the key in `x-goog-api-key`; the documented answer
/// comes back as the assistant's text.
#[tokio::test]
async fn gemini_request_and_answer_match_the_published_transcript() {
    let t = Transcript::load("gemini-generate");
    let up = FakeProvider::start(vec![Reply::Json(200, t.response.clone())]).await;
    let gw = TestGateway::new(
        &format!(
            "[[provider]]\nname = \"google\"\nkind = \"gemini\"\nurl = \"{}\"\n[[model]]\nname = \"gemini-2.0-flash\"\nproviders = [\"google\"]\n",
            up.url
        ),
        &[("GEMINI_API_KEY", "test-gemini-key")],
    );
    let messages = json!([
        {"role": "system", "content": "You are Neko the cat respond like one"},
        {"role": "user", "content": "Hello cat."},
        {"role": "assistant", "content": "Meow? 😻 \n"},
        {"role": "user", "content": "What is your name? What do like to drink?"},
    ]);

    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            json!({"model": "gemini-2.0-flash", "messages": messages}),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].uri.path(),
        "/v1beta/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(seen[0].uri.query(), None, "the key never goes in the URL");
    assert_eq!(seen[0].header("x-goog-api-key"), Some("test-gemini-key"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let sent = seen[0].json();
    assert!(
        sent.get("systemInstruction").is_some(),
        "the reference's field name: {sent}"
    );
    assert_eq!(gemini_canonical(&sent), gemini_canonical(&t.request));

    assert_eq!(body["choices"][0]["message"]["content"], "Meow 😺 \n");
    // The published answer has no usageMetadata: the gateway's estimate stands in.
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}
