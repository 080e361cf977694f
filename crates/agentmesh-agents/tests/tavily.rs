//! The researcher's `tavily` search tool against a transcript of Tavily's published API
//! (https://docs.tavily.com/documentation/api-reference/endpoint/search: `POST /search`,
//! `Authorization: Bearer tvly-…`, `{"query": …, "max_results": …}` → `{"results": [{"title",
//! "url", "content", "score"}], …}`). No real Tavily can run here (the network reaches only
//! package registries), so a loopback server checks our request against that transcript and
//! answers with the documented shape.

use std::sync::{Arc, Mutex};

use agentmesh_agents::{SearchError, TavilySearch};
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

const ANSWER: &str = r#"{
  "query": "Who is Leo Messi?",
  "answer": null,
  "images": [],
  "results": [
    {
      "title": "Lionel Messi Facts | Britannica",
      "url": "https://www.britannica.com/facts/Lionel-Messi",
      "content": "Lionel Messi, an Argentine footballer, is widely regarded as one of the greatest football players of his generation.",
      "score": 0.81025416,
      "raw_content": null
    }
  ],
  "response_time": "1.67"
}"#;

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn serve_answer(status: StatusCode, answer: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/search",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = s2.clone();
            async move {
                seen.lock().unwrap().push((headers, body));
                (status, [("content-type", "application/json")], answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// Our request matches the documented one, and the documented answer becomes notes with
/// their sources.
#[tokio::test]
async fn a_search_matches_the_published_transcript() {
    let (url, seen) = serve_answer(StatusCode::OK, ANSWER).await;
    let t = TavilySearch::new(Some(&url), "tvly-test-key".into()).unwrap();
    let hits = t.search("Who is Leo Messi?", 3).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].title, "Lionel Messi Facts | Britannica");
    assert_eq!(
        hits[0].source,
        "https://www.britannica.com/facts/Lionel-Messi"
    );
    assert!(
        hits[0]
            .snippet
            .starts_with("Lionel Messi, an Argentine footballer")
    );

    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(headers["authorization"], "Bearer tvly-test-key");
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"query": "Who is Leo Messi?", "max_results": 3})
    );
    // The key is in the header only, never in the body or the Debug output.
    assert!(!format!("{t:?}").contains("tvly-test-key"));
}

/// A refusal (Tavily's documented 401 shape) and a malformed answer are each one clear error.
#[tokio::test]
async fn refusals_and_malformed_answers_are_clear_errors() {
    let (url, _) = serve_answer(
        StatusCode::UNAUTHORIZED,
        r#"{"detail": {"error": "Unauthorized: missing or invalid API key."}}"#,
    )
    .await;
    let t = TavilySearch::new(Some(&url), "tvly-wrong".into()).unwrap();
    let e = t.search("anything", 3).await.unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("invalid API key"), "{e}");
    assert!(!e.contains("tvly-wrong"), "{e}");

    let (url, _) = serve_answer(StatusCode::OK, r#"{"query": "x"}"#).await;
    let t = TavilySearch::new(Some(&url), "tvly-test".into()).unwrap();
    let e = t.search("anything", 3).await.unwrap_err();
    assert!(
        matches!(e, SearchError::Tavily(ref m) if m.contains("no results list")),
        "{e}"
    );

    for (base, key, want) in [
        (Some("ftp://x"), "k", "not http(s)"),
        (None, " ", "the API key is empty"),
    ] {
        let e = TavilySearch::new(base, key.into()).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
