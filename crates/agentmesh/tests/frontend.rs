//! The frontend against real processes: `agentmesh server run` and `node run` give it its
//! SVID, the real node `oidc-provider` (installed by scripts/test) is the issuer, and
//! `agentmesh frontend run` sits between them. A cookie-keeping HTTP client in this test
//! plays the browser: it follows redirects and fills in the provider's login and consent
//! forms, then checks the user token the frontend mints.

#[path = "support/mesh.rs"]
mod mesh;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mesh::*;
use serde_json::Value;

const FRONTEND_PATH: &str = "/ns/default/sa/frontend";

fn oidc_provider_module() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTMESH_TEST_OIDC_PROVIDER") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/node/node_modules/oidc-provider/lib/index.js");
    assert!(
        p.exists(),
        "oidc-provider is missing: neither $AGENTMESH_TEST_OIDC_PROVIDER nor {} exists; run the \
         suite through scripts/test, which installs it into .cache/node",
        p.display()
    );
    p
}

fn wait_for_port(port: u16, what: &str, proc: &mut Proc, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "{what} exited with {status}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in time; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === a blocking, cookie-keeping HTTP/1.1 client ===

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
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[nl + 2..nl + 2 + size]);
        body = &body[nl + 2 + size + 2..];
    }
}

/// Cookies per `host:port`; paths and expiry are ignored, which is enough for one login.
#[derive(Default)]
struct Browser {
    jars: HashMap<String, HashMap<String, String>>,
}

impl Browser {
    fn send(&mut self, method: &str, url: &str, form: Option<&str>) -> Resp {
        let rest = url.strip_prefix("http://").expect("http URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let jar = self.jars.entry(host.to_owned()).or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if !jar.is_empty() {
            let c: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        let body = form.unwrap_or("");
        if form.is_some() {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw[split + 4..].to_vec();
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
        if headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        for (k, v) in &headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let kv = v.split(';').next().unwrap();
            let (name, value) = kv.split_once('=').unwrap();
            let expired = v.contains("Max-Age=0") || v.contains("1970");
            if value.is_empty() || expired {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    fn get(&mut self, url: &str) -> Resp {
        self.send("GET", url, None)
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") {
        return location.to_owned();
    }
    let origin_end = base["http://".len()..]
        .find('/')
        .map_or(base.len(), |i| i + "http://".len());
    format!("{}{location}", &base[..origin_end])
}

/// From the frontend's `/login` through the provider's pages, up to (not including) the
/// redirect back to the frontend's `/callback`, whose URL it returns.
fn authenticate_at_provider(b: &mut Browser, frontend: &str, user: &str) -> String {
    let r = b.get(&format!("{frontend}/login"));
    assert_eq!(r.status, 303, "{}", r.body);
    let mut url = r.header("location").unwrap().to_owned();
    for _ in 0..20 {
        if url.starts_with(&format!("{frontend}/callback")) {
            return url;
        }
        let r = b.get(&url);
        if (300..400).contains(&r.status) {
            url = absolute(&url, r.header("location").unwrap());
            continue;
        }
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        // A devInteractions page: the login form, or the consent form.
        let action = r
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no form at {url}: {}", r.body));
        let action = absolute(&url, action);
        let form = if r.body.contains("name=\"prompt\" value=\"login\"") {
            format!("prompt=login&login={user}&password=anything")
        } else {
            "prompt=consent".to_owned()
        };
        let r = b.send("POST", &action, Some(&form));
        assert!(
            (300..400).contains(&r.status),
            "{action}: {} {}",
            r.status,
            r.body
        );
        url = absolute(&action, r.header("location").unwrap());
    }
    panic!("the login did not come back to the frontend; last URL {url}");
}

fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap(),
    )
    .unwrap()
}

struct Setup {
    mesh: Mesh,
    _idp: Proc,
    _frontend: Proc,
    issuer: String,
    frontend: String,
    frontend_log: PathBuf,
}

fn setup() -> Setup {
    setup_with(None)
}

/// A stand-in entry agent: answers every `POST /ask` with JSON naming the question and
/// whether a bearer token came with it.
fn echo_agent() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let (head_end, len) = loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (raw.len(), 0);
                }
                raw.extend_from_slice(&buf[..n]);
                if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    break (i + 4, len);
                }
            };
            while raw.len() < head_end + len {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
            let q: Value = serde_json::from_slice(&raw[head_end..]).unwrap_or(Value::Null);
            let body = serde_json::json!({
                "answer": format!("Paris, you asked: {}", q["question"].as_str().unwrap_or("")),
                "bearer": head.contains("authorization: bearer "),
                "traceparent": head.contains("traceparent: 00-"),
            })
            .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn setup_with(upstream: Option<&str>) -> Setup {
    let module = oidc_provider_module();
    let mesh = Mesh::start();
    // Every process of this uid is the frontend: enough for a test that runs one workload.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    mesh.entry(FRONTEND_PATH, &[&format!("unix:uid:{uid}")], None);

    let fe_port = free_port();
    let frontend = format!("http://127.0.0.1:{fe_port}");
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let idp_log = mesh.dir.join("oidc-provider.log");
    let mut idp = Proc(
        Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/oidc_provider.mjs"))
            .args([&idp_port.to_string(), &format!("{frontend}/callback")])
            .env("OIDC_PROVIDER_MODULE", &module)
            .stdin(Stdio::null())
            .stdout(Mesh::log_file(&idp_log))
            .stderr(Mesh::log_file(&idp_log))
            .spawn()
            .expect("spawn node (scripts/test assumes Node 20)"),
    );
    wait_for_port(idp_port, "oidc-provider", &mut idp, &idp_log);

    let config = mesh.dir.join("frontend.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{fe_port}\"\nworkload_api = \"{}\"\n\
             [oidc]\nissuer = \"{issuer}\"\nclient_id = \"agentmesh\"\nclient_secret = \"s3cret\"\n\
             {}",
            mesh.endpoint(),
            upstream.map_or(String::new(), |u| format!(
                "[[upstream]]\nname = \"planner\"\nurl = \"{u}\"\n"
            )),
        ),
    )
    .unwrap();
    let frontend_log = mesh.dir.join("frontend.log");
    let mut fe = Proc(
        mesh.command()
            .args(["frontend", "run", "--config"])
            .arg(&config)
            .stdout(Mesh::log_file(&frontend_log))
            .stderr(Mesh::log_file(&frontend_log))
            .spawn()
            .expect("spawn agentmesh frontend run"),
    );
    wait_for_port(fe_port, "the frontend", &mut fe, &frontend_log);
    Setup {
        mesh,
        _idp: idp,
        _frontend: fe,
        issuer,
        frontend,
        frontend_log,
    }
}

#[test]
fn a_login_at_the_real_oidc_provider_yields_a_user_token_signed_by_the_frontends_svid() {
    let s = setup();
    let mut b = Browser::default();
    let callback = authenticate_at_provider(&mut b, &s.frontend, "alice");
    let r = b.get(&callback);
    assert_eq!(r.status, 303, "{}", r.body);
    let session = r
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("am_session="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );

    let t = b.get(&format!("{}/token", s.frontend));
    assert_eq!(t.status, 200, "{}", t.body);
    let body: Value = serde_json::from_str(&t.body).unwrap();
    let token = body["token"].as_str().unwrap();
    let header = part(token, 0);
    let claims = part(token, 1);
    let frontend_id = format!("spiffe://{TD}{FRONTEND_PATH}");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], frontend_id);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "alice (test user)");
    assert_eq!(claims["aud"], TD);
    assert_eq!(claims["idp"], s.issuer);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    // The x5c leaf is the frontend's SVID.
    let leaf = STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, std::slice::from_ref(&frontend_id));

    // Its kid is in the JWKS, and the signature verifies against that key.
    let jwks: Value =
        serde_json::from_str(&b.get(&format!("{}/.well-known/jwks.json", s.frontend)).body)
            .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    let point = [&[4u8][..], &x, &y].concat();
    let (input, sig) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .expect("the user token verifies against the frontend's JWKS");
    let debug: Value =
        serde_json::from_str(&b.get(&format!("{}/debug/jwks", s.frontend)).body).unwrap();
    assert_eq!(debug, jwks);

    // Logged: the jti and the subject, never the token.
    let log = std::fs::read_to_string(&s.frontend_log).unwrap();
    assert!(log.contains(body["jti"].as_str().unwrap()), "{log}");
    assert!(
        !log.contains(token.split('.').nth(2).unwrap()),
        "the token was logged"
    );

    // Logout.
    let r = b.send("POST", &format!("{}/logout", s.frontend), None);
    assert_eq!(r.status, 303);
    assert_eq!(b.get(&format!("{}/token", s.frontend)).status, 401);
    drop(s.mesh);
}

#[test]
fn a_callback_with_a_changed_state_or_replayed_is_refused_with_the_reason() {
    let s = setup();
    let mut b = Browser::default();
    let callback = authenticate_at_provider(&mut b, &s.frontend, "bob");
    let (base, query) = callback.split_once('?').unwrap();
    let forged: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .map(|(k, v)| {
            if k == "state" {
                (k, "forged".into())
            } else {
                (k, v)
            }
        })
        .collect();
    let forged_q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(forged)
        .finish();
    let r = b.get(&format!("{base}?{forged_q}"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("state mismatch"), "{}", r.body);
    // The genuine callback was not consumed by the forged one... but a state is good once:
    let r = b.get(&callback);
    assert_eq!(r.status, 303, "{}", r.body);
    let r = b.get(&callback);
    assert_eq!(r.status, 400, "a replayed callback: {}", r.body);
    assert!(r.body.contains("state mismatch"), "{}", r.body);
    let log = std::fs::read_to_string(&s.frontend_log).unwrap();
    assert!(
        log.contains("login refused") && log.contains("state mismatch"),
        "{log}"
    );
}

#[test]
fn the_frontend_refuses_a_dev_login_on_a_non_loopback_address_and_a_malformed_config() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "listen = \"0.0.0.0:0\"\n",
            "refusing to serve the dev login on 0.0.0.0:0",
        ),
        ("listen = 5\n", "invalid frontend config"),
        ("[oidc]\nissuer = \"x\"\n", "invalid frontend config"),
    ] {
        let config = dir.path().join("frontend.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN)
            .args(["frontend", "run", "--config"])
            .arg(&config)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.contains(want), "{text}: {err}");
    }
}

#[test]
fn after_an_svid_rotation_the_jwks_keeps_the_previous_key_and_new_tokens_use_the_new_one() {
    let mesh = Mesh::start();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    mesh.entry(
        FRONTEND_PATH,
        &[&format!("unix:uid:{uid}")],
        Some(SHORT_TTL),
    );
    let port = free_port();
    let frontend = format!("http://127.0.0.1:{port}");
    let config = mesh.dir.join("frontend.toml");
    // No [oidc]: the dev login, which is enough to get a session here.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nworkload_api = \"{}\"\n",
            mesh.endpoint()
        ),
    )
    .unwrap();
    let log = mesh.dir.join("frontend.log");
    let mut fe = Proc(
        mesh.command()
            .args(["frontend", "run", "--config"])
            .arg(&config)
            .stdout(Mesh::log_file(&log))
            .stderr(Mesh::log_file(&log))
            .spawn()
            .expect("spawn agentmesh frontend run"),
    );
    wait_for_port(port, "the frontend", &mut fe, &log);
    let mut b = Browser::default();
    let page = b.get(&format!("{frontend}/login"));
    assert!(page.body.contains("Dev login"), "{}", page.body);
    let r = b.send("POST", &format!("{frontend}/login"), Some("name=carol"));
    assert_eq!(r.status, 303, "{}", r.body);
    let kid_of = |b: &mut Browser| {
        let t: Value = serde_json::from_str(&b.get(&format!("{frontend}/token")).body).unwrap();
        part(t["token"].as_str().unwrap(), 0)["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = kid_of(&mut b);
    let deadline = Instant::now() + PATIENCE;
    let second = loop {
        let kid = kid_of(&mut b);
        if kid != first {
            break kid;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation in time; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let jwks: Value =
        serde_json::from_str(&b.get(&format!("{frontend}/.well-known/jwks.json")).body).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&first.as_str()) && kids.contains(&second.as_str()),
        "{kids:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEV LOGIN"), "{text}");
}

fn puppeteer_module() -> PathBuf {
    // oidc-provider/lib/index.js → node_modules, where scripts/test installs both.
    let module = oidc_provider_module();
    let node_modules = module.ancestors().nth(3).expect("node_modules");
    let p = node_modules.join("puppeteer-core/lib/puppeteer/puppeteer-core.js");
    assert!(
        p.exists(),
        "puppeteer-core is missing at {}; run the suite through scripts/test, which installs it \
         into .cache/node next to oidc-provider",
        p.display()
    );
    p
}

#[test]
fn headless_chromium_logs_in_at_the_real_provider_and_asks_from_the_page() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is missing at {chromium}; scripts/test installs it (apt-get install chromium)"
    );
    let agent = echo_agent();
    let s = setup_with(Some(&agent));
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("frontend-screenshots");
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/browser_login.mjs"))
        .arg(&s.frontend)
        .arg(&shots)
        .env("PUPPETEER_MODULE", puppeteer_module())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .output()
        .expect("run browser_login.mjs");
    assert!(
        out.status.success(),
        "browser_login.mjs failed:\n{}\nfrontend log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&s.frontend_log).unwrap_or_default()
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let logged_in = seen["logged_in"].as_str().unwrap();
    assert!(
        logged_in.contains("Logged in as") && logged_in.contains("alice"),
        "{logged_in}"
    );
    let answer: Value = serde_json::from_str(seen["answer"].as_str().unwrap()).unwrap();
    assert_eq!(
        answer["answer"],
        "Paris, you asked: what is the capital of France?"
    );
    assert_eq!(answer["bearer"], true);
    assert_eq!(answer["traceparent"], true);
    assert!(seen["csp"].as_str().unwrap().contains("default-src 'none'"));
    for shot in [
        "1-home.png",
        "2-provider-login.png",
        "3-logged-in.png",
        "4-answer.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot} missing");
    }
}
