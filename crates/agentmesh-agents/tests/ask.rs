//! An agent's own HTTP API, in-process: bad input gets a 400 naming the problem, and a
//! refusal or failure downstream comes back as a 502 that keeps the deciding proxy's reason
//! and intention. The "proxy" here is a loopback stand-in that answers the way our sidecar
//! answers a denied request (the real sidecars are exercised in crates/agentmesh/tests/up.rs).

use std::path::Path;

use agentmesh_agents::AgentConfig;
use axum::Router;

use http::StatusCode;

async fn fake_sidecar(status: StatusCode, body: &'static str) -> String {
    let app = Router::new()
        .fallback(move || async move { (status, [("content-type", "application/json")], body) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn executor(gateway_url: &str) -> String {
    let cfg = AgentConfig::parse(
        &format!(
            "role = \"executor\"\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"gateway\"\nrole = \"gateway\"\nurl = \"{gateway_url}\"\n"
        ),
        Path::new("agent.toml"),
    )
    .unwrap();
    let agent = agentmesh_agents::start(cfg).await.unwrap();
    let url = format!("http://{}", agent.addr);
    std::mem::forget(agent);
    url
}

async fn ask(url: &str, body: impl Into<String>) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.into();
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /ask HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let json = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn malformed_questions_get_a_400_that_names_the_problem() {
    let url = executor("http://127.0.0.1:9").await;
    for (body, want) in [
        (
            "{not json".to_owned(),
            "is not {\"question\": \"...\"} JSON",
        ),
        ("{\"q\": 1}".to_owned(), "missing field `question`"),
        ("{\"question\": \"  \"}".to_owned(), "the question is empty"),
        (
            format!("{{\"question\": \"{}\"}}", "a".repeat(300 * 1024)),
            "the most an agent accepts",
        ),
    ] {
        let (status, v) = ask(&url, body.clone()).await;
        assert_eq!(status, 400, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want), "{e}");
        assert_eq!(v["agent"], "executor");
    }
}

#[tokio::test]
async fn a_refusal_downstream_keeps_its_reason_and_intention() {
    let gw = fake_sidecar(
        StatusCode::FORBIDDEN,
        r#"{"error":"denied by intentions","source":"spiffe://agentmesh.local/ns/default/sa/executor","destination":"spiffe://agentmesh.local/ns/default/sa/gateway","intention":"abc-123","reason":"intention abc-123 denies POST /v1/chat/completions","trace_id":"t"}"#,
    )
    .await;
    let url = executor(&gw).await;
    let (status, v) = ask(&url, r#"{"question": "hi"}"#).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("gateway refused the call"),
        "{v}"
    );
    assert_eq!(v["refused"]["intention"], "abc-123");
    assert!(v["trace_id"].as_str().is_some_and(|t| t.len() == 32));
}

#[tokio::test]
async fn an_unreachable_or_broken_upstream_is_a_502_not_a_hang() {
    let url = executor("http://127.0.0.1:9").await;
    let (status, v) = ask(&url, r#"{"question": "hi"}"#).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("gateway is unreachable"),
        "{v}"
    );

    let gw = fake_sidecar(StatusCode::OK, r#"{"choices": []}"#).await;
    let url = executor(&gw).await;
    let (status, v) = ask(&url, r#"{"question": "hi"}"#).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no choices[0].message.content"),
        "{v}"
    );
}
