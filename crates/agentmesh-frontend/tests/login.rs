//! The frontend in one process on loopback: a stand-in OIDC issuer (discovery, JWKS, token
//! endpoint) whose `id_token` each test chooses, a stand-in entry agent, and the frontend
//! between them, driven over real HTTP with cookies kept by hand. This is where the OIDC
//! attacks are played: each must be refused with its own reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_ca::{Authority, CsrPublicKey, PrivateKey, new_intermediate, new_root};
use agentmesh_frontend::{Frontend, FrontendConfig, Keys, SigningKey};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use axum::Router;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONTEND_ID: &str = "spiffe://agentmesh.local/ns/default/sa/frontend";

// === the frontend's SVID ===

fn svid_key() -> SigningKey {
    let td: TrustDomain = "agentmesh.local".parse().unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let root_key = PrivateKey::generate().unwrap();
    let root = new_root(&td, &root_key, hour, now).unwrap();
    let int_key = PrivateKey::generate().unwrap();
    let int = new_intermediate(&td, &int_key, hour, now, &root, &root_key).unwrap();
    let ca = Authority::new(&td, int, int_key).unwrap();
    let key = PrivateKey::generate().unwrap();
    let public = CsrPublicKey::from_spki_der(&key.public_key_der()).unwrap();
    let id: SpiffeId = FRONTEND_ID.parse().unwrap();
    let svid = ca.mint_x509_svid(&id, &public, hour, &[], now).unwrap();
    SigningKey::from_der(svid.chain, &key.pkcs8_der()).unwrap()
}

// === a stand-in issuer ===

struct Idp {
    url: String,
    pair: EcdsaKeyPair,
    /// What the token endpoint returns as `id_token`.
    next_id_token: Mutex<String>,
    /// The last token request's form.
    last_form: Mutex<HashMap<String, String>>,
    /// The last `/ask` the stand-in agent got: its headers.
    last_ask: Mutex<HashMap<String, String>>,
}

fn es256_pair() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn sign_with(pair: &EcdsaKeyPair, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "idp-1"}).to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{p}");
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

impl Idp {
    fn claims(&self, nonce: &str) -> Value {
        json!({"iss": self.url, "aud": "agentmesh", "sub": "alice", "name": "Alice",
            "email": "alice@example.com", "iat": now(), "exp": now() + 300, "nonce": nonce})
    }
    fn sign(&self, claims: &Value) -> String {
        sign_with(&self.pair, claims)
    }
    fn will_return(&self, id_token: String) {
        *self.next_id_token.lock().unwrap() = id_token;
    }
}

async fn start_idp() -> Arc<Idp> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let idp = Arc::new(Idp {
        url: url.clone(),
        pair: es256_pair(),
        next_id_token: Mutex::new(String::new()),
        last_form: Mutex::new(HashMap::new()),
        last_ask: Mutex::new(HashMap::new()),
    });
    let (i1, i2, i3, i4) = (idp.clone(), idp.clone(), idp.clone(), idp.clone());
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let url = i1.url.clone();
                async move {
                    axum::Json(json!({
                        "issuer": url,
                        "authorization_endpoint": format!("{url}/auth"),
                        "token_endpoint": format!("{url}/token"),
                        "jwks_uri": format!("{url}/jwks"),
                    }))
                }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let p = i2.pair.public_key().as_ref().to_vec();
                async move {
                    axum::Json(json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1",
                        "use": "sig", "alg": "ES256",
                        "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]}))
                }
            }),
        )
        .route(
            "/token",
            post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let mut form: HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                if let Some(auth) = headers.get("authorization") {
                    form.insert("authorization".into(), auth.to_str().unwrap().into());
                }
                *i3.last_form.lock().unwrap() = form;
                let t = i3.next_id_token.lock().unwrap().clone();
                async move {
                    axum::Json(json!({"access_token": "at", "token_type": "Bearer", "id_token": t}))
                }
            }),
        )
        .route(
            "/ask",
            post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let seen: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                *i4.last_ask.lock().unwrap() = seen;
                let q: Value = serde_json::from_slice(&body).unwrap();
                async move { axum::Json(json!({"answer": format!("you asked: {}", q["question"].as_str().unwrap())})) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    idp
}

// === a tiny cookie-keeping HTTP/1.1 client ===

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

#[derive(Default)]
struct Browser {
    cookies: HashMap<String, String>,
}

impl Browser {
    async fn send(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> Resp {
        self.send_with(addr, method, path, body, &[]).await
    }

    /// `send` with extra headers; a `Host` among them replaces the address.
    async fn send_with(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let host = extra
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or_else(|| addr.to_string(), |(_, v)| (*v).to_owned());
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in extra
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", cookie.join("; ")));
        }
        let (ctype, data) = body.unwrap_or(("text/plain", ""));
        req.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{data}",
            data.len()
        ));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let resp = Resp {
            status,
            headers,
            body: body.to_owned(),
        };
        for c in resp.set_cookies() {
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        resp
    }
    async fn get(&mut self, addr: SocketAddr, path: &str) -> Resp {
        self.send(addr, "GET", path, None).await
    }
}

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').unwrap().1;
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

// === the harness ===

struct Setup {
    idp: Arc<Idp>,
    fe: SocketAddr,
}

async fn start_frontend(toml: &str) -> SocketAddr {
    let cfg = FrontendConfig::parse(toml, std::path::Path::new("test.toml")).unwrap();
    let keys = Keys::new(Duration::from_secs(360));
    keys.install(svid_key());
    let listen = cfg.listen;
    let fe = Frontend::new(cfg, keys).await.unwrap();
    let (addr, stop, _task) = agentmesh_frontend::serve(fe, listen).await.unwrap();
    // Keep serving for the whole test.
    std::mem::forget(stop);
    addr
}

async fn setup() -> Setup {
    setup_with("", "").await
}

/// An OIDC frontend with `oidc_extra` lines in its `[oidc]` table and `extra` tables after.
async fn setup_with(oidc_extra: &str, extra: &str) -> Setup {
    let idp = start_idp().await;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\
         [oidc]\nissuer = \"{u}\"\nclient_id = \"agentmesh\"\nclient_secret = \"s3cret\"\n{oidc_extra}\n\
         [[upstream]]\nname = \"planner\"\nurl = \"{u}\"\n{extra}",
        u = idp.url
    );
    let fe = start_frontend(&toml).await;
    Setup { idp, fe }
}

/// `/login`: the redirect's query (state, nonce, PKCE challenge).
async fn begin(b: &mut Browser, fe: SocketAddr) -> HashMap<String, String> {
    let r = b.get(fe, "/login").await;
    assert_eq!(r.status, 303, "{}", r.body);
    query(r.header("location").unwrap())
}

async fn finish(b: &mut Browser, fe: SocketAddr, state: &str) -> Resp {
    b.get(fe, &format!("/callback?state={state}&code=the-code"))
        .await
}

fn jwk_verifies(jwk: &Value, token: &str) -> bool {
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    let point = [&[4u8][..], &x, &y].concat();
    let (input, sig) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .is_ok()
}

fn decode_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap(),
    )
    .unwrap()
}

// === tests ===

#[tokio::test]
async fn a_login_mints_a_user_token_signed_by_the_frontends_svid() {
    let Setup { idp, fe } = setup().await;
    let mut b = Browser::default();
    let q = begin(&mut b, fe).await;
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(
        b.cookies.get("am_login") == Some(&q["state"]),
        "state is bound to the browser"
    );
    idp.will_return(idp.sign(&idp.claims(&q["nonce"])));
    let r = finish(&mut b, fe, &q["state"]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let session = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("am_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(
        !session.contains("Secure"),
        "plain http on loopback: {session}"
    );

    // The code exchange used PKCE and client_secret_basic.
    let form = idp.last_form.lock().unwrap().clone();
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        form["code_verifier"].as_bytes(),
    ));
    assert_eq!(challenge, q["code_challenge"]);
    assert_eq!(
        form["authorization"],
        format!("Basic {}", STANDARD.encode("agentmesh:s3cret"))
    );

    let page = b.get(fe, "/").await;
    assert!(page.body.contains("Alice"), "{}", page.body);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    let t = b.get(fe, "/token").await;
    assert_eq!(t.status, 200, "{}", t.body);
    let token = t.json()["token"].as_str().unwrap().to_owned();
    let header = decode_part(&token, 0);
    let claims = decode_part(&token, 1);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], FRONTEND_ID);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["aud"], "agentmesh.local");
    assert_eq!(claims["idp"], idp.url);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let leaf = STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        agentmesh_tls::cert_spiffe_id(&leaf).unwrap().to_string(),
        FRONTEND_ID
    );
    for path in ["/.well-known/jwks.json", "/debug/jwks"] {
        let jwks = b.get(fe, path).await.json();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .unwrap_or_else(|| panic!("kid not in {path}: {jwks}"));
        assert!(
            jwk_verifies(jwk, &token),
            "the token verifies against {path}"
        );
    }

    // Ask: forwarded with the user token and a traceparent.
    let r = b
        .send(
            fe,
            "POST",
            "/ask",
            Some(("application/json", r#"{"question":"why?"}"#)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["answer"], "you asked: why?");
    let seen = idp.last_ask.lock().unwrap().clone();
    let bearer = seen["authorization"].strip_prefix("Bearer ").unwrap();
    assert_eq!(decode_part(bearer, 1)["sub"], "alice");
    assert!(seen["traceparent"].starts_with("00-"), "{seen:?}");
    let r = b
        .send(
            fe,
            "POST",
            "/ask",
            Some((
                "application/x-www-form-urlencoded",
                "question=from+the+page",
            )),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("you asked: from the page"), "{}", r.body);

    // Logout ends the session.
    let r = b.send(fe, "POST", "/logout", None).await;
    assert_eq!(r.status, 303);
    assert!(!b.cookies.contains_key("am_session"));
    assert_eq!(b.get(fe, "/token").await.status, 401);
}

#[tokio::test]
async fn ask_without_a_session_is_401() {
    let Setup { fe, .. } = setup().await;
    let mut b = Browser::default();
    let r = b
        .send(
            fe,
            "POST",
            "/ask",
            Some(("application/json", r#"{"question":"x"}"#)),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "not logged in");
}

/// Plays one attack and returns the refusal's status and reason.
async fn refused(r: Resp) -> (u16, String) {
    assert!(
        !r.set_cookies()
            .iter()
            .any(|c| c.starts_with("am_session=") && !c.contains("Max-Age=0"))
    );
    let reason = r
        .body
        .split("<p id=\"reason\" role=\"alert\">")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .unwrap_or_else(|| panic!("no reason on the page: {}", r.body))
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    (r.status, reason)
}

#[tokio::test]
async fn a_state_mismatch_is_refused() {
    let Setup { idp, fe } = setup().await;
    let mut victim = Browser::default();
    let q = begin(&mut victim, fe).await;
    idp.will_return(idp.sign(&idp.claims(&q["nonce"])));
    // A state nobody issued.
    let (status, reason) = refused(finish(&mut victim, fe, "forged").await).await;
    assert_eq!(status, 400);
    assert!(reason.contains("state mismatch"), "{reason}");
    // Login CSRF: the attacker's own state, delivered to a browser that did not start it.
    let mut attacker = Browser::default();
    let aq = begin(&mut attacker, fe).await;
    idp.will_return(idp.sign(&idp.claims(&aq["nonce"])));
    let (status, reason) = refused(finish(&mut victim, fe, &aq["state"]).await).await;
    assert_eq!(status, 400);
    assert!(reason.contains("state mismatch"), "{reason}");
}

#[tokio::test]
async fn a_replayed_nonce_is_refused() {
    let Setup { idp, fe } = setup().await;
    let mut b = Browser::default();
    let q = begin(&mut b, fe).await;
    let first = idp.sign(&idp.claims(&q["nonce"]));
    idp.will_return(first.clone());
    assert_eq!(finish(&mut b, fe, &q["state"]).await.status, 303);
    // A second login that is answered with the first login's id_token.
    let mut b2 = Browser::default();
    let q2 = begin(&mut b2, fe).await;
    idp.will_return(first);
    let (status, reason) = refused(finish(&mut b2, fe, &q2["state"]).await).await;
    assert_eq!(status, 401);
    assert!(reason.contains("nonce was already used"), "{reason}");
}

#[tokio::test]
async fn a_tampered_expired_or_foreign_id_token_is_refused() {
    let Setup { idp, fe } = setup().await;
    let other_key = es256_pair();
    type Forge = Box<dyn Fn(&Idp, &str) -> String>;
    let cases: Vec<(&str, Forge, &str)> = vec![
        (
            "tampered",
            Box::new(|idp: &Idp, nonce: &str| {
                let good = idp.sign(&idp.claims(nonce));
                let mut c = idp.claims(nonce);
                c["sub"] = json!("mallory");
                let parts: Vec<&str> = good.split('.').collect();
                format!(
                    "{}.{}.{}",
                    parts[0],
                    URL_SAFE_NO_PAD.encode(c.to_string()),
                    parts[2]
                )
            }),
            "signature does not verify",
        ),
        (
            "expired",
            Box::new(|idp: &Idp, nonce: &str| {
                let mut c = idp.claims(nonce);
                c["exp"] = json!(now() - 3600);
                idp.sign(&c)
            }),
            "id_token expired",
        ),
        (
            "another issuer's iss",
            Box::new(|idp: &Idp, nonce: &str| {
                let mut c = idp.claims(nonce);
                c["iss"] = json!("https://evil.example");
                idp.sign(&c)
            }),
            "is from issuer \"https://evil.example\"",
        ),
        (
            "another issuer's key",
            Box::new(move |idp: &Idp, nonce: &str| sign_with(&other_key, &idp.claims(nonce))),
            "signature does not verify",
        ),
    ];
    for (name, forge, want) in cases {
        let mut b = Browser::default();
        let q = begin(&mut b, fe).await;
        idp.will_return(forge(&idp, &q["nonce"]));
        let (status, reason) = refused(finish(&mut b, fe, &q["state"]).await).await;
        assert_eq!(status, 401, "{name}");
        assert!(reason.contains(want), "{name}: {reason}");
    }
}

#[tokio::test]
async fn the_dev_login_is_labelled_and_mints_a_dev_user_token() {
    let fe = start_frontend("listen = \"127.0.0.1:0\"").await;
    let mut b = Browser::default();
    let page = b.get(fe, "/login").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Dev login"), "{}", page.body);
    assert!(
        page.body
            .contains("every dev login is an administrator who may open the Security Inspector"),
        "{}",
        page.body
    );
    let r = b
        .send(
            fe,
            "POST",
            "/login",
            Some((
                "application/x-www-form-urlencoded",
                "name=Bob&email=bob%40example.com",
            )),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let t = b.get(fe, "/token").await.json();
    let claims = decode_part(t["token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "dev:Bob");
    assert_eq!(claims["idp"], "dev");
    assert_eq!(claims["email"], "bob@example.com");
    // No groups given: no groups claim.
    assert!(claims.get("groups").is_none(), "{claims}");

    // Groups at the dev login reach the user token, for MCP user-claim rules.
    let mut b = Browser::default();
    let r = b
        .send(
            fe,
            "POST",
            "/login",
            Some((
                "application/x-www-form-urlencoded",
                "name=Ann&groups=finance%2C+eng",
            )),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let t = b.get(fe, "/token").await.json();
    let claims = decode_part(t["token"].as_str().unwrap(), 1);
    assert_eq!(claims["groups"], serde_json::json!(["finance", "eng"]));
    let r = b
        .send(
            fe,
            "POST",
            "/login",
            Some((
                "application/x-www-form-urlencoded",
                "name=Ann&groups=a%2C%2Cb",
            )),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("comma-separated"), "{}", r.body);
}

#[tokio::test]
async fn the_dev_login_refuses_a_non_loopback_listen() {
    let cfg =
        FrontendConfig::parse("listen = \"0.0.0.0:0\"", std::path::Path::new("f.toml")).unwrap();
    let err = agentmesh_frontend::start(cfg, std::path::Path::new("f.toml"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to serve the dev login on 0.0.0.0:0"),
        "{err}"
    );
}

#[test]
fn a_rotated_key_stays_in_the_jwks_while_its_tokens_live() {
    let keys = Keys::new(Duration::from_secs(360));
    let first = svid_key();
    let first_kid = first.kid.clone();
    keys.install(first);
    let second = svid_key();
    let second_kid = second.kid.clone();
    keys.install(second);
    let jwks = keys.jwks();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [second_kid.as_str(), first_kid.as_str()]);
    assert_eq!(keys.current().unwrap().kid, second_kid);
}

// === the Security Inspector: its inputs ===

/// A stand-in sidecar admin listener: `/decisions` sends a line that is not JSON, then one
/// real access-log object, and stays open. The real proxies' feed is exercised by the
/// Chromium test in crates/agentmesh/tests/frontend.rs; this one plays the malformed case.
async fn stand_in_decision_feed() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let line = json!({
                    "seq": 7, "ts": "2026-12-02T10:00:00.000Z", "direction": "inbound",
                    "protocol": "http", "source": "spiffe://agentmesh.local/ns/default/sa/planner",
                    "destination": "spiffe://agentmesh.local/ns/default/sa/gateway",
                    "decision": "deny", "intention": "i-deny", "reason": "intention i-deny denies POST /v1/chat/completions",
                    "trace_id": "0af7651916cd43dd8448eb211c80319c", "method": "POST",
                    "path": "/v1/chat/completions", "status": 403, "peer_addr": "127.0.0.1:1", "duration_ms": 0
                });
                let body = format!("{{not json\n{line}\n");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n{body}"
                        )
                        .as_bytes(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_inspector_refuses_strangers_and_bad_questions_with_their_reason() {
    // Without [inspector] there is no inspector at all.
    let off = start_frontend("listen = \"127.0.0.1:0\"").await;
    let mut b = Browser::default();
    let r = b.get(off, "/inspector").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("not configured"), "{}", r.body);

    let feed = stand_in_decision_feed().await;
    let fe = start_frontend(&format!(
        "listen = \"127.0.0.1:0\"\n[inspector]\n[[inspector.proxy]]\nname = \"gateway\"\nadmin = \"{feed}\"\n"
    ))
    .await;
    let mut b = Browser::default();
    // Not logged in: the pages send you to log in, the stream says 401.
    let r = b.get(fe, "/inspector").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert_eq!(b.get(fe, "/inspector/decisions/stream").await.status, 401);
    assert_eq!(b.get(fe, "/inspector/requests/abc").await.status, 303);

    let r = b
        .send(
            fe,
            "POST",
            "/login",
            Some(("application/x-www-form-urlencoded", "name=Ann")),
        )
        .await;
    assert_eq!(r.status, 303);
    // No sockets configured: each part says so, and the page still renders.
    let page = b.get(fe, "/inspector").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("not configured (set inspector.server_admin_socket"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<script src=\"/static/inspector.js\""));
    // The garbage line was skipped, the real one is there with its intention.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = b.get(fe, "/inspector").await;
        if page.body.contains("data-intention=\"i-deny\"") {
            assert!(page.body.contains("gateway inbound"), "{}", page.body);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", page.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (query, reason) in [
        ("source=planner", "a source and a destination are required"),
        (
            "source=planner&destination=gateway&method=POST",
            "a method needs a path",
        ),
        (
            &format!("source={}&destination=gateway", "a".repeat(600)),
            "source is longer than 512 characters",
        ),
        (
            "source=planner&destination=gateway",
            "not configured (set inspector.server_admin_socket",
        ),
    ] {
        let r = b.get(fe, &format!("/inspector/check?{query}")).await;
        assert_eq!(r.status, 200, "{query}");
        let result = r
            .body
            .split("id=\"check-result\"")
            .nth(1)
            .unwrap_or_else(|| panic!("{query}: no result\n{}", r.body));
        assert!(result.contains(reason), "{query}: {result}");
    }
    let r = b
        .get(fe, "/inspector/requests/0af7651916cd43dd8448eb211c80319c")
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no request of yours"), "{}", r.body);
    let js = b.get(fe, "/static/inspector.js").await;
    assert_eq!(js.status, 200);
    assert!(!js.body.contains(".innerHTML") && !js.body.contains("eval("));
}

// === CSRF, DNS rebinding and who may inspect ===

/// Logs `b` in at the stand-in issuer with `claims` changed by `edit`.
async fn oidc_login(b: &mut Browser, s: &Setup, edit: impl Fn(&mut Value)) {
    let q = begin(b, s.fe).await;
    let mut claims = s.idp.claims(&q["nonce"]);
    edit(&mut claims);
    s.idp.will_return(s.idp.sign(&claims));
    let r = finish(b, s.fe, &q["state"]).await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn a_cross_origin_post_is_refused_and_a_same_origin_one_works() {
    let s = setup().await;
    let fe = s.fe;
    let mut b = Browser::default();
    oidc_login(&mut b, &s, |_| {}).await;
    let ours = format!("http://{fe}");
    let ask = Some(("application/x-www-form-urlencoded", "question=transfer+it"));

    for headers in [
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "null")],
        vec![("Origin", "http://127.0.0.1:1")],
        vec![("Referer", "https://evil.example/page")],
    ] {
        s.idp.last_ask.lock().unwrap().clear();
        let r = b.send_with(fe, "POST", "/ask", ask, &headers).await;
        let (status, reason) = refused(r).await;
        assert_eq!(status, 403, "{headers:?}");
        assert!(
            reason.contains("cross-origin request refused") && reason.contains(&ours),
            "{headers:?}: {reason}"
        );
        assert!(
            s.idp.last_ask.lock().unwrap().is_empty(),
            "{headers:?}: the question reached the agent"
        );
        // Logging out from another site fails too: the session lives on.
        let r = b.send_with(fe, "POST", "/logout", None, &headers).await;
        assert_eq!(r.status, 403, "{headers:?}");
        assert_eq!(b.get(fe, "/token").await.status, 200, "{headers:?}");
    }

    // The browser's own form posts carry the frontend's origin (or a same-origin Referer).
    let localhost = format!("http://localhost:{}", fe.port());
    let page = format!("{ours}/");
    for headers in [
        vec![("Origin", ours.as_str())],
        vec![("Origin", localhost.as_str())],
        vec![("Referer", page.as_str())],
        vec![],
    ] {
        let r = b.send_with(fe, "POST", "/ask", ask, &headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        assert!(r.body.contains("you asked: transfer it"), "{}", r.body);
    }
    // The page asks browsers for an Origin on those posts.
    assert_eq!(
        b.get(fe, "/").await.header("referrer-policy"),
        Some("same-origin")
    );

    // A login form posted from another site is refused before it logs anyone in.
    let dev = start_frontend("listen = \"127.0.0.1:0\"").await;
    let mut victim = Browser::default();
    let r = victim
        .send_with(
            dev,
            "POST",
            "/login",
            Some(("application/x-www-form-urlencoded", "name=Mallory")),
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(refused(r).await.0, 403);
    assert!(!victim.cookies.contains_key("am_session"));
    let dev_origin = format!("http://{dev}");
    let r = victim
        .send_with(
            dev,
            "POST",
            "/login",
            Some(("application/x-www-form-urlencoded", "name=Bob")),
            &[("Origin", dev_origin.as_str())],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);

    let r = b
        .send_with(fe, "POST", "/logout", None, &[("Origin", ours.as_str())])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(b.get(fe, "/token").await.status, 401);
}

#[tokio::test]
async fn a_foreign_host_is_refused() {
    let fe = start_frontend("listen = \"127.0.0.1:0\"").await;
    let mut b = Browser::default();
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{}", fe.port()),
        format!("127.0.0.1:{}", fe.port() ^ 1),
        "10.1.2.3".to_owned(),
    ] {
        for (method, path) in [("GET", "/"), ("GET", "/token"), ("POST", "/login")] {
            let r = b
                .send_with(
                    fe,
                    method,
                    path,
                    Some(("application/x-www-form-urlencoded", "name=Eve")),
                    &[("Host", host.as_str())],
                )
                .await;
            let (status, reason) = refused(r).await;
            assert_eq!(status, 421, "{host} {method} {path}");
            assert!(
                reason.contains(&format!("host \"{host}\" is not served here"))
                    && reason.contains("DNS rebinding"),
                "{reason}"
            );
        }
    }
    for host in [
        format!("127.0.0.1:{}", fe.port()),
        format!("localhost:{}", fe.port()),
        format!("[::1]:{}", fe.port()),
        // How `up` probes /healthz.
        "localhost".to_owned(),
    ] {
        let r = b
            .send_with(fe, "GET", "/", None, &[("Host", host.as_str())])
            .await;
        assert_eq!(r.status, 200, "{host}");
    }
}

#[tokio::test]
async fn only_oidc_users_with_the_admin_claim_may_inspect() {
    let s = setup_with(
        "admin_claim = \"groups\"\nadmin_values = [\"agentmesh-admins\"]",
        "[inspector]\n",
    )
    .await;
    let fe = s.fe;

    // Alice is in another group: 403 on every inspector page and on the stream.
    let mut alice = Browser::default();
    oidc_login(&mut alice, &s, |c| c["groups"] = json!(["staff"])).await;
    for path in [
        "/inspector",
        "/inspector/check?source=planner&destination=gateway",
        "/inspector/requests/0af7651916cd43dd8448eb211c80319c",
    ] {
        let (status, reason) = refused(alice.get(fe, path).await).await;
        assert_eq!(status, 403, "{path}");
        assert!(
            reason.contains(
                "for administrators, and this login is not one: the frontend's [oidc] admin_claim"
            ),
            "{path}: {reason}"
        );
    }
    let r = alice.get(fe, "/inspector/decisions/stream").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("for administrators"), "{}", r.body);
    let home = alice.get(fe, "/").await;
    assert!(home.body.contains("Logged in as"), "{}", home.body);
    assert!(!home.body.contains("/inspector"), "{}", home.body);
    // The id_token's groups reach her user token, for MCP user-claim rules.
    let t = alice.get(fe, "/token").await.json();
    let claims = decode_part(t["token"].as_str().unwrap(), 1);
    assert_eq!(claims["groups"], json!(["staff"]), "{claims}");
    // She can still ask.
    let r = alice
        .send(
            fe,
            "POST",
            "/ask",
            Some(("application/json", r#"{"question":"q"}"#)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // No claim at all: the same.
    let mut carol = Browser::default();
    oidc_login(&mut carol, &s, |_| {}).await;
    assert_eq!(carol.get(fe, "/inspector").await.status, 403);

    // Bob holds the admin group: he inspects.
    let mut bob = Browser::default();
    oidc_login(&mut bob, &s, |c| {
        c["sub"] = json!("bob");
        c["groups"] = json!(["staff", "agentmesh-admins"]);
    })
    .await;
    let page = bob.get(fe, "/inspector").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(bob.get(fe, "/").await.body.contains("href=\"/inspector\""));
    let r = bob
        .get(fe, "/inspector/check?source=planner&destination=gateway")
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn without_an_admin_claim_no_oidc_user_may_inspect() {
    let s = setup_with("", "[inspector]\n").await;
    let mut b = Browser::default();
    oidc_login(&mut b, &s, |c| c["groups"] = json!(["agentmesh-admins"])).await;
    assert_eq!(b.get(s.fe, "/inspector").await.status, 403);
    assert_eq!(b.get(s.fe, "/inspector/decisions/stream").await.status, 403);
}
