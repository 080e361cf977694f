//! What a caller sees when providers fail (threat-pipeline's failure cases: retry, timeout, failover), through the gateway's
//! own HTTP API: retries, timeouts, failover, the circuit breaker, malformed answers and 4xx.
//! Timeouts and backoffs are configured short so every test ends promptly; nothing asserts on
//! wall-clock time.

#[path = "support/harness.rs"]
mod harness;

use harness::*;
use serde_json::{Value, json};

const KEY: &str = "sk-test-failures-secret-0123456789";

const OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"recovered"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn err(status: u16, message: &str) -> Reply {
    Reply::Json(
        status,
        json!({"error": {"message": message, "type": "server_error", "code": null}}).to_string(),
    )
}

/// An OpenAI-compatible `[[provider]]` with short backoffs (timeouts stay generous so a busy
/// machine cannot fail a test; the timeout test sets its own); `extra` lines add keys or replace
/// the defaults here.
fn provider(name: &str, url: &str, extra: &str) -> String {
    let base = format!(
        "name = \"{name}\"\nkind = \"openai\"\nurl = \"{url}/v1\"\napi_key = \"{KEY}\"\ntimeout = \"5s\"\nconnect_timeout = \"5s\"\nretry_backoff = \"1ms\"\nretry_backoff_max = \"5ms\"\ncircuit_cooldown = \"1h\""
    );
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
    let replaced: Vec<String> = extra.lines().map(key).collect();
    let mut out = String::from("[[provider]]\n");
    for line in base.lines().filter(|l| !replaced.contains(&key(l))) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(extra);
    out.push('\n');
    out
}

fn model(providers: &[&str]) -> String {
    format!("[[model]]\nname = \"m\"\nproviders = {providers:?}\n")
}

fn openai_chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
}

fn ollama_chat(stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": stream})
}

fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test]
async fn a_5xx_is_retried_and_the_answer_arrives() {
    let up = FakeProvider::start(vec![err(500, "overloaded"), Reply::Json(200, OK.into())]).await;
    let gw = TestGateway::new(
        &(provider("flaky", &up.url, "retries = 2") + &model(&["flaky"])),
        &[],
    );

    let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "recovered");
    assert_eq!(up.requests(), 2);
    let line = &gw.audit()[0];
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["provider"], "flaky");
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["failed_providers"], json!([]));
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_to_a_502_in_each_apis_shape() {
    let up = FakeProvider::start(vec![Reply::Hang]).await;
    let gw = TestGateway::new(
        &(provider(
            "silent",
            &up.url,
            "timeout = \"200ms\"\nretries = 1\ncircuit_failures = 0",
        ) + &model(&["silent"])),
        &[],
    );

    let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "provider_failed");
    assert_eq!(body["error"]["type"], "api_error");
    assert!(
        message(&body).contains(
            "no provider answered for model \"m\": provider \"silent\": no answer within 200ms (after 2 attempts)"
        ),
        "{body}"
    );
    assert_eq!(up.requests(), 2, "a timeout is retried");

    for stream in [false, true] {
        let (status, body) = gw.post("/api/chat", ollama_chat(stream)).await;
        assert_eq!(status, 502, "{body}");
        assert!(body["error"].is_string(), "Ollama's shape: {body}");
        assert!(message(&body).contains("no answer within 200ms"), "{body}");
    }
    let line = gw.audit().pop().unwrap();
    assert_eq!(line["decision"], "provider_failed");
    assert_eq!(line["status"], 502);
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["failed_providers"], json!(["silent"]));
    assert_eq!(line["provider"], Value::Null);
}

#[tokio::test]
async fn failover_moves_to_the_next_provider_when_one_fails() {
    let gone = closed_port_url().await;
    let down = FakeProvider::start(vec![err(503, "maintenance")]).await;
    let up = FakeProvider::start(vec![Reply::Json(200, OK.into())]).await;
    let gw = TestGateway::new(
        &(provider("gone", &gone, "retries = 1")
            + &provider("down", &down.url, "retries = 1")
            + &provider("up", &up.url, "")
            + &model(&["gone", "down", "up"])),
        &[],
    );

    let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "recovered");
    assert_eq!(
        down.requests(),
        2,
        "a 503 is retried, then the next provider"
    );
    assert_eq!(up.requests(), 1);
    let line = &gw.audit()[0];
    assert_eq!(line["provider"], "up");
    assert_eq!(
        line["attempts"], 5,
        "2 refused connections, 2 × 503, 1 answer"
    );
    assert_eq!(line["failed_providers"], json!(["gone", "down"]));
}

#[tokio::test]
async fn the_circuit_opens_after_n_failures_and_the_upstream_hears_nothing_during_cooldown() {
    let up = FakeProvider::start(vec![err(500, "boom")]).await;
    let gw = TestGateway::new(
        &(provider("flaky", &up.url, "retries = 0\ncircuit_failures = 3") + &model(&["flaky"])),
        &[],
    );

    for n in 1..=3 {
        let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;
        assert_eq!(status, 502, "{body}");
        assert!(message(&body).contains("answered HTTP 500: boom"), "{body}");
        assert_eq!(up.requests(), n);
    }

    let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "provider_unavailable");
    assert!(
        message(&body).contains(
            "no provider is available for model \"m\": provider \"flaky\" skipped: circuit open after 3 consecutive failures; next probe in"
        ),
        "{body}"
    );
    let (status, body) = gw.post("/api/chat", ollama_chat(false)).await;
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("circuit open"), "{body}");
    assert_eq!(up.requests(), 3, "nothing reaches an open circuit");

    let line = gw.audit().pop().unwrap();
    assert_eq!(line["decision"], "provider_unavailable");
    assert_eq!(line["status"], 503);
    assert_eq!(line["attempts"], 0);
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_that_says_what_was_wrong() {
    let html = FakeProvider::start(vec![Reply::Json(200, "<html>proxy error</html>".into())]).await;
    let hollow = FakeProvider::start(vec![Reply::Json(
        200,
        r#"{"object":"chat.completion"}"#.into(),
    )])
    .await;
    let gw = TestGateway::new(
        &(provider("html", &html.url, "retries = 2")
            + &provider("hollow", &hollow.url, "retries = 2")
            + "[[model]]\nname = \"m\"\nproviders = [\"html\"]\n[[model]]\nname = \"h\"\nproviders = [\"hollow\"]\n"),
        &[],
    );

    let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        message(&body).contains("provider \"html\" sent a malformed answer: not JSON"),
        "{body}"
    );
    assert!(message(&body).contains("<html>proxy error"), "{body}");

    let (status, body) = gw
        .post(
            "/api/chat",
            json!({"model": "h", "messages": [{"role": "user", "content": "x"}], "stream": false}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        message(&body)
            .contains("provider \"hollow\" sent a malformed answer: no choices in the answer"),
        "{body}"
    );
    assert_eq!((html.requests(), hollow.requests()), (1, 1), "not retried");
}

#[tokio::test]
async fn a_4xx_is_not_retried_does_not_open_the_circuit_and_never_shows_the_key() {
    let up = FakeProvider::start(vec![err(
        401,
        &format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
    )])
    .await;
    let gw = TestGateway::new(
        &(provider("cloud", &up.url, "retries = 2\ncircuit_failures = 1") + &model(&["cloud"])),
        &[],
    );

    for n in 1..=2 {
        let (status, body) = gw.post("/v1/chat/completions", openai_chat()).await;
        assert_eq!(status, 502, "{body}");
        let m = message(&body);
        assert!(
            m.contains("provider \"cloud\" answered HTTP 401: Incorrect API key provided: [REDACTED:api_key]."),
            "{body}"
        );
        assert!(!m.contains(KEY), "the key is in the error: {m}");
        assert_eq!(
            up.requests(),
            n,
            "a 4xx is not retried, and the provider stays in use"
        );
    }
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(
        !gw.audit_text().contains(KEY),
        "the key is in the audit log"
    );
    assert!(!gw.config_debug.contains(KEY), "the key is in Debug output");
}
