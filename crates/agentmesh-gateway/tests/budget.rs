//! Token budgets under concurrency, through the gateway's own HTTP API: fifty calls in flight
//! at once against a 1,000-token budget. A stand-in provider holds every call it receives
//! until the test has seen all fifty either reach it or be refused, so the calls really are
//! concurrent; nothing waits on a clock.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;

use harness::*;
use serde_json::{Value, json};

/// What the stand-in provider charges per call: 10 prompt + 90 completion tokens.
const PER_CALL: u64 = 100;
const BUDGET: u64 = 1000;
const CALLS: usize = 50;

const OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"an answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":90,"total_tokens":100}}"#;

fn gateway(url: &str, extra_provider_keys: &str) -> TestGateway {
    TestGateway::with_callers(
        &format!(
            "[[provider]]\nname = \"p\"\nkind = \"openai\"\nurl = \"{url}/v1\"\napi_key = \"sk-budget-test-0123456789abcdef\"\n\
             timeout = \"60s\"\nretry_backoff = \"1ms\"\nretry_backoff_max = \"2ms\"\n{extra_provider_keys}\n\
             [[model]]\nname = \"m\"\nproviders = [\"p\"]\n"
        ),
        &format!(
            "[[caller]]\nid = \"*\"\nmodels = [\"*\"]\ntokens_per_window = {BUDGET}\nwindow = \"1h\"\n"
        ),
        &[],
    )
}

/// Sends `CALLS` requests at once (`body(i)` to `path(i)`), opens the provider's gate once
/// every call has either reached the provider or been answered, and returns each call's
/// status and body.
async fn race(
    gw: &Arc<TestGateway>,
    up: &FakeProvider,
    gate: tokio::sync::watch::Sender<bool>,
    call: impl Fn(usize) -> (&'static str, Value),
) -> Vec<(u16, String)> {
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let gw = gw.clone();
            let answered = answered.clone();
            let (path, body) = call(i);
            tokio::spawn(async move {
                let (status, text) = gw.post_text(path, body).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (status.as_u16(), text)
            })
        })
        .collect();
    while answered.load(std::sync::atomic::Ordering::SeqCst) + up.requests() < CALLS {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let held = up.requests();
    assert!(
        held > 1,
        "the race needs several calls in flight at once, got {held}"
    );
    gate.send_replace(true);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The audited spend of every allowed call, and the largest single one.
fn audited_spend(gw: &TestGateway) -> (u64, u64) {
    let allowed: Vec<u64> = gw
        .audit()
        .iter()
        .filter(|l| l["decision"] == "allow")
        .map(|l| l["prompt_tokens"].as_u64().unwrap() + l["completion_tokens"].as_u64().unwrap())
        .collect();
    (
        allowed.iter().sum(),
        allowed.iter().copied().max().unwrap_or(0),
    )
}

fn assert_refusals_are_429_in_the_apis_shape(results: &[(u16, String)], ollama: bool) -> usize {
    let refused: Vec<&(u16, String)> = results.iter().filter(|(s, _)| *s != 200).collect();
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        if ollama {
            assert!(
                v["error"].as_str().unwrap().contains("tokens"),
                "Ollama's shape: {v}"
            );
        } else {
            assert_eq!(v["error"]["code"], "budget_exhausted", "{v}");
            assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("tokens"),
                "{v}"
            );
        }
    }
    refused.len()
}

#[tokio::test]
async fn fifty_concurrent_calls_spend_no_more_than_the_budget_plus_one_call() {
    let (gate, open) = tokio::sync::watch::channel(false);
    let up = FakeProvider::start(vec![Reply::Gated(
        open,
        Box::new(Reply::Json(200, OK.into())),
    )])
    .await;
    let gw = Arc::new(gateway(&up.url, ""));

    let results = race(&gw, &up, gate, |_| {
        (
            "/v1/chat/completions",
            json!({"model": "m", "max_tokens": 90,
                   "messages": [{"role": "user", "content": "hello"}]}),
        )
    })
    .await;

    let refused = assert_refusals_are_429_in_the_apis_shape(&results, false);
    let allowed = results.len() - refused;
    assert!(
        refused > 0 && allowed > 0,
        "{allowed} allowed, {refused} refused"
    );
    assert_eq!(
        allowed,
        up.requests(),
        "every allowed call reached the provider"
    );
    let (spent, largest) = audited_spend(&gw);
    assert_eq!(largest, PER_CALL);
    assert!(
        spent <= BUDGET + largest,
        "{allowed} concurrent calls spent {spent} tokens of a {BUDGET}-token budget"
    );
    let usage = gw
        .gateway
        .budget_usage(CALLER)
        .expect("the caller has a window");
    assert_eq!(usage.used, spent, "the gateway's own count is the audit's");
    assert_eq!(
        (usage.reserved, usage.in_flight),
        (0, 0),
        "everything settled"
    );

    // One at a time, a call that starts inside the budget still finishes; then 429.
    loop {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                json!({"model": "m", "messages": [{"role": "user", "content": "more"}]}),
            )
            .await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (spent, largest) = audited_spend(&gw);
    assert!(spent >= BUDGET && spent <= BUDGET + largest, "{spent}");
}

#[tokio::test]
async fn streamed_calls_hold_and_settle_the_budget_too() {
    let (gate, open) = tokio::sync::watch::channel(false);
    let up = FakeProvider::start(vec![Reply::Gated(
        open,
        Box::new(Reply::Json(200, OK.into())),
    )])
    .await;
    let gw = Arc::new(gateway(&up.url, ""));

    // Half OpenAI SSE, half Ollama NDJSON (streaming is Ollama's default).
    let results = race(&gw, &up, gate, |i| {
        if i % 2 == 0 {
            (
                "/v1/chat/completions",
                json!({"model": "m", "stream": true, "max_tokens": 90,
                       "messages": [{"role": "user", "content": "hello"}]}),
            )
        } else {
            (
                "/api/chat",
                json!({"model": "m", "options": {"num_predict": 90},
                       "messages": [{"role": "user", "content": "hello"}]}),
            )
        }
    })
    .await;

    for (status, body) in results.iter().filter(|(s, _)| *s == 200) {
        assert!(
            body.ends_with("data: [DONE]\n\n") || body.contains("\"done\":true"),
            "{status}: a whole stream: {body}"
        );
    }
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert!(refused > 0, "{results:?}");
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 429));
    let (spent, largest) = audited_spend(&gw);
    assert!(spent <= BUDGET + largest, "streamed calls spent {spent}");
    let usage = gw.gateway.budget_usage(CALLER).unwrap();
    assert_eq!(usage.used, spent);
    assert_eq!((usage.reserved, usage.in_flight), (0, 0));
}

#[tokio::test]
async fn a_failed_call_releases_what_it_held() {
    let up = FakeProvider::start(vec![Reply::Json(
        500,
        json!({"error": {"message": "down"}}).to_string(),
    )])
    .await;
    let gw = gateway(&up.url, "retries = 0\ncircuit_failures = 0");
    for _ in 0..3 {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                json!({"model": "m", "max_tokens": 900,
                       "messages": [{"role": "user", "content": "hello"}]}),
            )
            .await;
        assert_eq!(status, 502, "{body}");
    }
    let usage = gw.gateway.budget_usage(CALLER).unwrap();
    assert_eq!(
        (usage.used, usage.reserved, usage.in_flight),
        (0, 0, 0),
        "a call that got no answer costs nothing and holds nothing"
    );
}
