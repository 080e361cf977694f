use std::time::Duration;

use serde_json::json;

use super::*;
use crate::testing::{StaticJwks, TestIssuer};

fn verifier(issuer: &TestIssuer) -> UserTokenVerifier {
    UserTokenVerifier::new(
        UserTokenConfig::new("api").with_issuer("https://frontend"),
        issuer.fetcher(),
    )
}

fn good_claims() -> Value {
    json!({"sub": "alice", "email": "alice@example.org", "name": "Alice",
           "aud": "api", "iss": "https://frontend", "jti": "t-1"})
}

#[tokio::test]
async fn a_good_token_verifies_with_its_claims() {
    let issuer = TestIssuer::new();
    let claims = verifier(&issuer)
        .verify(&issuer.mint(good_claims(), 300))
        .await
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.email.as_deref(), Some("alice@example.org"));
    assert_eq!(claims.name.as_deref(), Some("Alice"));
    assert_eq!(claims.jti.as_deref(), Some("t-1"));
}

#[tokio::test]
async fn each_failure_gets_its_own_error() {
    let issuer = TestIssuer::new();
    let v = verifier(&issuer);
    let mut other_aud = good_claims();
    other_aud["aud"] = json!(["billing"]);
    let mut other_iss = good_claims();
    other_iss["iss"] = json!("https://evil");
    let forger = TestIssuer::new();

    let err = v
        .verify(&issuer.mint(good_claims(), -600))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired { .. }), "{err}");
    let err = v.verify(&issuer.mint(other_aud, 300)).await.unwrap_err();
    assert!(matches!(err, TokenError::WrongAudience { .. }), "{err}");
    let err = v.verify(&issuer.mint(other_iss, 300)).await.unwrap_err();
    assert!(matches!(err, TokenError::WrongIssuer { .. }), "{err}");
    let err = v.verify("").await.unwrap_err();
    assert!(matches!(err, TokenError::Missing), "{err}");
    let err = v.verify_headers(&http::HeaderMap::new()).await.unwrap_err();
    assert!(matches!(err, TokenError::Missing), "{err}");
    // Signed by another key under an unknown kid.
    let err = v
        .verify(&forger.mint(good_claims(), 300))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Forged(_)), "{err}");
    // Our kid, someone else's signature.
    let ours = issuer.mint(good_claims(), 300);
    let theirs = forger.mint(good_claims(), 300);
    let spliced = format!(
        "{}.{}",
        ours.rsplit_once('.').unwrap().0,
        theirs.rsplit_once('.').unwrap().1
    );
    let err = v.verify(&spliced).await.unwrap_err();
    assert!(matches!(err, TokenError::Forged(_)), "{err}");
    // Claims changed after signing.
    let (head, rest) = ours.split_once('.').unwrap();
    let sig = rest.rsplit_once('.').unwrap().1;
    let mut admin = good_claims();
    admin["sub"] = json!("admin");
    admin["exp"] = json!(unix_now() + 300);
    let tampered = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(admin.to_string()));
    let err = v.verify(&tampered).await.unwrap_err();
    assert!(matches!(err, TokenError::Forged(_)), "{err}");
}

#[tokio::test]
async fn malformed_tokens_get_a_specific_error_and_no_panic() {
    let issuer = TestIssuer::new();
    let v = verifier(&issuer);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );
    let hs = format!(
        "{}.e30.AAAA",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k"}"#)
    );
    let no_kid = format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#));
    for (token, want) in [
        ("abc", "segments"),
        ("a.b.c.d", "segments"),
        ("!!.e30.AAAA", "header"),
        (none.as_str(), "only ES256"),
        (hs.as_str(), "only ES256"),
        (no_kid.as_str(), "no 'kid'"),
    ] {
        let err = v.verify(token).await.unwrap_err().to_string();
        assert!(err.contains(want), "{token}: {err}");
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        v.verify(&huge).await,
        Err(TokenError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_do_not_refetch_within_the_interval() {
    let issuer = TestIssuer::new();
    let v = UserTokenVerifier::new(
        UserTokenConfig {
            min_refetch: Duration::from_millis(300),
            ..UserTokenConfig::new("api")
        },
        issuer.fetcher(),
    );
    v.verify(&issuer.mint(good_claims(), 300)).await.unwrap();
    v.verify(&issuer.mint(good_claims(), 300)).await.unwrap();
    assert_eq!(issuer.fetcher().fetches(), 1, "cached");

    // Forged tokens with unknown kids inside the interval: no new fetch.
    let forger = TestIssuer::new();
    for _ in 0..5 {
        assert!(matches!(
            v.verify(&forger.mint(good_claims(), 300)).await,
            Err(TokenError::Forged(_))
        ));
    }
    assert_eq!(issuer.fetcher().fetches(), 1, "rate limited");

    tokio::time::sleep(Duration::from_millis(350)).await;
    issuer.rotate();
    v.verify(&issuer.mint(good_claims(), 300)).await.unwrap();
    assert_eq!(issuer.fetcher().fetches(), 2, "refetched on the new kid");
}

#[tokio::test]
async fn a_bad_jwks_answer_is_a_jwks_error() {
    let issuer = TestIssuer::new();
    let jwks: Arc<StaticJwks> = issuer.fetcher();
    jwks.set("<html>not json</html>");
    let err = verifier(&issuer)
        .verify(&issuer.mint(good_claims(), 300))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Jwks { .. }), "{err}");
    assert_eq!(
        err.into_response().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn the_jwks_is_fetched_over_http() {
    let issuer = TestIssuer::new();
    let doc = issuer.jwks_json();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || async move { doc }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let v = UserTokenVerifier::from_url(
        UserTokenConfig::new("api"),
        &format!("http://{addr}/.well-known/jwks.json"),
    )
    .unwrap();
    v.verify(&issuer.mint(good_claims(), 300)).await.unwrap();

    let missing =
        UserTokenVerifier::from_url(UserTokenConfig::new("api"), &format!("http://{addr}/nope"))
            .unwrap();
    let err = missing
        .verify(&issuer.mint(good_claims(), 300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

/// A fetcher that answers the first fetch at once and every later one after `delay`.
#[derive(Debug)]
struct SlowAfterFirst {
    inner: Arc<StaticJwks>,
    delay: Duration,
}

impl JwksFetcher for SlowAfterFirst {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + '_>> {
        Box::pin(async move {
            if self.inner.fetches() > 0 {
                tokio::time::sleep(self.delay).await;
            }
            self.inner.fetch().await
        })
    }

    fn url(&self) -> String {
        self.inner.url()
    }
}

#[tokio::test]
async fn a_slow_refetch_does_not_hold_up_tokens_whose_key_is_cached() {
    let issuer = TestIssuer::new();
    let v = Arc::new(UserTokenVerifier::new(
        UserTokenConfig {
            min_refetch: Duration::ZERO,
            ..UserTokenConfig::new("api")
        },
        Arc::new(SlowAfterFirst {
            inner: issuer.fetcher(),
            delay: Duration::from_secs(3),
        }),
    ));
    v.verify(&issuer.mint(good_claims(), 300)).await.unwrap();

    // An unknown kid starts a slow refetch...
    let forged = TestIssuer::new().mint(good_claims(), 300);
    let slow = {
        let v = Arc::clone(&v);
        tokio::spawn(async move { v.verify(&forged).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while a token with a cached key still verifies at once.
    tokio::time::timeout(
        Duration::from_millis(500),
        v.verify(&issuer.mint(good_claims(), 300)),
    )
    .await
    .expect("not blocked by the refetch")
    .unwrap();
    assert!(matches!(slow.await.unwrap(), Err(TokenError::Forged(_))));
}

#[tokio::test]
async fn the_layer_answers_401_with_the_reason_and_hands_claims_to_the_handler() {
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let issuer = TestIssuer::new();
    let app = axum::Router::new().route(
        "/ask",
        get(|user: UserClaims| async move { user.sub }).route_layer(RequireUserToken::new(
            Arc::new(UserTokenVerifier::new(
                UserTokenConfig::new("api"),
                issuer.fetcher(),
            )),
        )),
    );
    let call = |auth: Option<String>| {
        let app = app.clone();
        async move {
            let mut req = http::Request::get("/ask");
            if let Some(a) = auth {
                req = req.header(http::header::AUTHORIZATION, a);
            }
            let resp = app
                .oneshot(req.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let good = issuer.mint(good_claims(), 300);
    assert_eq!(
        call(Some(format!("Bearer {good}"))).await,
        (StatusCode::OK, "alice".into())
    );
    let mut other = good_claims();
    other["aud"] = json!("billing");
    for (auth, want) in [
        (None, "missing"),
        (Some("Basic abc".to_owned()), "not a Bearer"),
        (
            Some(format!(
                "Bearer {}",
                TestIssuer::new().mint(good_claims(), 300)
            )),
            "forged",
        ),
        (
            Some(format!("Bearer {}", issuer.mint(good_claims(), -600))),
            "expired",
        ),
        (
            Some(format!("Bearer {}", issuer.mint(other, 300))),
            "audience",
        ),
    ] {
        let (status, body) = call(auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(json["reason"].as_str().unwrap().contains(want), "{body}");
    }
}
