use super::*;
use agentmesh_proto::v1::{Intention, PolicySnapshot};
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http_body_util::BodyExt as _;
use std::sync::Mutex;
use tower::ServiceExt as _;

fn snapshot(action: &str) -> PolicySnapshot {
    PolicySnapshot {
        revision: 3,
        intentions: vec![Intention {
            id: "int-1".into(),
            spec_json: format!(
                r#"{{"source":"spiffe://td/researcher","destination":"spiffe://td/writer","action":"{action}"}}"#
            ),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn call(
    watch: &Arc<PolicyWatch>,
    peer: Option<&str>,
) -> (u16, serde_json::Value, Vec<DecisionRecord>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().route("/ask", post(|| async { "ok" })).layer(
        RequireIntention::new(watch.clone(), "spiffe://td/writer".parse().unwrap())
            .with_sink(Arc::new(move |d| s.lock().unwrap().push(d.clone()))),
    );
    let mut req = http::Request::post("/ask")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Body::empty())
        .unwrap();
    if let Some(p) = peer {
        req.extensions_mut()
            .insert(crate::PeerIdentity(p.parse().unwrap()));
    }
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let seen = seen.lock().unwrap().clone();
    (status, json, seen)
}

#[tokio::test]
async fn requests_follow_the_intentions_and_deny_before_the_first_snapshot() {
    let td: TrustDomain = "td".parse().unwrap();
    let watch = PolicyWatch::new();
    let (status, body, seen) = call(&watch, Some("spiffe://td/researcher")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "denied by intentions");
    assert_eq!(seen[0].decision, "deny");

    watch.set(PolicyState::from_snapshot(&snapshot("allow"), &td));
    let (status, _, seen) = call(&watch, Some("spiffe://td/researcher")).await;
    assert_eq!(status, 200);
    assert_eq!(seen[0].decision, "allow");
    assert_eq!(seen[0].intention.as_deref(), Some("int-1"));
    assert_eq!(seen[0].trace_id, "0af7651916cd43dd8448eb211c80319c");

    // Someone the intention does not name: the default deny, no intention.
    let (status, body, _) = call(&watch, Some("spiffe://td/frontend")).await;
    assert_eq!(status, 403);
    assert!(body["intention"].is_null(), "{body}");

    // The intention turned to deny: the next request is refused by it.
    watch.set(PolicyState::from_snapshot(&snapshot("deny"), &td));
    let (status, body, _) = call(&watch, Some("spiffe://td/researcher")).await;
    assert_eq!(status, 403);
    assert_eq!(body["intention"], "int-1");

    // No verified identity at all: refused, whatever the policy.
    watch.set(PolicyState::from_snapshot(&snapshot("allow"), &td));
    let (status, body, _) = call(&watch, None).await;
    assert_eq!(status, 403);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("no verified caller")
    );
}

/// researcher -> writer: /admin denied, a header rule denying x-debug, anything else
/// allowed.
fn l7_snapshot() -> PolicySnapshot {
    PolicySnapshot {
            revision: 4,
            intentions: vec![Intention {
                id: "int-l7".into(),
                spec_json: r#"{"source":"spiffe://td/researcher","destination":"spiffe://td/writer","action":"allow","permissions":[
                    {"action":"deny","http":{"path_prefix":"/admin"}},
                    {"action":"deny","http":{"headers":[{"name":"x-debug","present":true}]}},
                    {"http":{"path_prefix":"/"}}
                ]}"#.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
}

/// One request through RequireIntention in front of a handler that answers with the URI
/// and the header names it received; `(status, body)`.
async fn call_l7(
    options: NormalizeOptions,
    path: &str,
    headers: &[(&str, &[u8])],
) -> (u16, String) {
    let td: TrustDomain = "td".parse().unwrap();
    let watch = PolicyWatch::new();
    watch.set(PolicyState::from_snapshot(&l7_snapshot(), &td));
    let app = Router::new()
        .fallback(|req: http::Request<Body>| async move {
            let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
            format!("{} {}", req.uri(), names.join(","))
        })
        .layer(
            RequireIntention::new(watch, "spiffe://td/writer".parse().unwrap())
                .with_normalize_options(options),
        );
    let mut req = http::Request::get(path).body(Body::empty()).unwrap();
    for (n, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    req.extensions_mut().insert(crate::PeerIdentity(
        "spiffe://td/researcher".parse().unwrap(),
    ));
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_are_decided_and_handled_in_their_normalised_form() {
    use agentmesh_policy::EscapedSlashesAction;
    let defaults = NormalizeOptions::default();
    for path in [
        "/admin",
        "//admin",
        "/v1/../admin",
        "/%61dmin",
        "/%41dmin/../admin/x",
        "/v1/%2e%2E/admin",
        "/V1/./../admin?x=1",
    ] {
        let (status, body) = call_l7(defaults, path, &[]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("permission 1 of intention int-l7"),
            "{path}: {body}"
        );
    }
    for path in [
        "/v1%2Fadmin",
        "/v1%5cadmin",
        "/v1\\..\\admin",
        "/../admin",
        "/a%zz",
    ] {
        let (status, body) = call_l7(defaults, path, &[]).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains("bad request") && body.contains("refused"),
            "{path}: {body}"
        );
    }
    // Allowed paths reach the handler normalised, the query as sent.
    let (status, body) = call_l7(defaults, "/v1/./x//y/%7Ez?q=/../%2f", &[]).await;
    assert_eq!((status, body.as_str()), (200, "/v1/x/y/~z?q=/../%2f "));
    // unescape_and_forward: the decoded slash is decided on and forwarded.
    let decode = NormalizeOptions {
        escaped_slashes: EscapedSlashesAction::UnescapeAndForward,
        ..defaults
    };
    assert_eq!(call_l7(decode, "/v1%2F..%2Fadmin", &[]).await.0, 403);
    let (status, body) = call_l7(decode, "/v1%2Fx%5Cy", &[]).await;
    assert_eq!((status, body.as_str()), (200, "/v1/x/y "));
    let keep = NormalizeOptions {
        escaped_slashes: EscapedSlashesAction::KeepUnchanged,
        ..defaults
    };
    let (status, body) = call_l7(keep, "/v1%2fx", &[]).await;
    assert_eq!((status, body.as_str()), (200, "/v1%2Fx "));
}

#[tokio::test]
async fn header_names_with_underscores_follow_the_setting_and_header_values_fail_closed() {
    let defaults = NormalizeOptions::default();
    let underscored: &[(&str, &[u8])] = &[("x_debug", b"1"), ("x-ok", b"1")];
    let (status, body) = call_l7(defaults, "/v1/x", underscored).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("x_debug"), "{body}");
    let drop = NormalizeOptions {
        headers_with_underscores: HeadersWithUnderscoresAction::DropHeader,
        ..defaults
    };
    let (status, body) = call_l7(drop, "/v1/x", underscored).await;
    assert_eq!((status, body.as_str()), (200, "/v1/x x-ok"));
    let allow = NormalizeOptions {
        headers_with_underscores: HeadersWithUnderscoresAction::Allow,
        ..defaults
    };
    let (status, body) = call_l7(allow, "/v1/x", underscored).await;
    assert_eq!((status, body.as_str()), (200, "/v1/x x_debug,x-ok"));
    // The deny on x-debug holds for any value, readable or not, first or repeated.
    for value in [&b"1"[..], b"\xff\xfe", "é".as_bytes(), b""] {
        let (status, body) = call_l7(defaults, "/v1/x", &[("x-debug", value)]).await;
        assert_eq!(status, 403, "{value:?}: {body}");
    }
    let repeated: &[(&str, &[u8])] = &[("x-ok", b"1"), ("x-debug", b"\x80"), ("x-debug", b"2")];
    assert_eq!(call_l7(defaults, "/v1/x", repeated).await.0, 403);
}
