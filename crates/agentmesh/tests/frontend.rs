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

/// Starts the real oidc-provider on a free port for a frontend at `frontend`; returns it and
/// its issuer URL.
fn start_provider(dir: &Path, frontend: &str) -> (Proc, String) {
    let module = oidc_provider_module();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let idp_log = dir.join("oidc-provider.log");
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
    (idp, issuer)
}

fn setup() -> Setup {
    setup_with("")
}

/// Stands for the server's admin socket in `setup_with`'s `oidc_extra`.
const SERVER_ADMIN: &str = "@SERVER_ADMIN@";
/// Stands for the node's admin socket in `setup_with`'s `oidc_extra`.
const NODE_ADMIN: &str = "@NODE_ADMIN@";

/// A frontend at the real provider; `oidc_extra` continues its `[oidc]` table (and may add
/// tables after it, naming the mesh's admin sockets as [`SERVER_ADMIN`] and [`NODE_ADMIN`]).
fn setup_with(oidc_extra: &str) -> Setup {
    let mesh = Mesh::start();
    // Every process of this uid and gid is the frontend: enough for a test that runs one
    // workload. The gid lets a test play an unregistered caller of the same uid (setpriv
    // --regid), which can still run this test's binary and reach the node's socket.
    let meta = std::fs::metadata("/proc/self").unwrap();
    mesh.entry(
        FRONTEND_PATH,
        &[
            &format!("unix:uid:{}", meta.uid()),
            &format!("unix:gid:{}", meta.gid()),
        ],
        None,
    );

    let fe_port = free_port();
    let frontend = format!("http://127.0.0.1:{fe_port}");
    let (idp, issuer) = start_provider(&mesh.dir, &frontend);

    let config = mesh.dir.join("frontend.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{fe_port}\"\nworkload_api = \"{}\"\n\
             [oidc]\nissuer = \"{issuer}\"\nclient_id = \"agentmesh\"\nclient_secret = \"s3cret\"\n{}",
            mesh.endpoint(),
            oidc_extra
                .replace(SERVER_ADMIN, &mesh.admin_socket().display().to_string())
                .replace(NODE_ADMIN, &mesh.node_admin_socket().display().to_string()),
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

/// The admin claim and group `up`'s scenario and this test give the provider's users: alice is
/// in `agentmesh-admins`, everyone else only in `staff` (see tests/js/oidc_provider.mjs).
const ADMIN_OIDC: &str = "scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n\
                          admin_claim = \"groups\"\nadmin_values = [\"agentmesh-admins\"]\n";

#[test]
fn at_the_real_oidc_provider_only_the_admin_group_may_inspect() {
    let s = setup_with(&format!("{ADMIN_OIDC}[inspector]\n"));
    let inspector = format!("{}/inspector", s.frontend);
    let stream = format!("{}/inspector/decisions/stream", s.frontend);

    let mut bob = Browser::default();
    let callback = authenticate_at_provider(&mut bob, &s.frontend, "bob");
    assert_eq!(bob.get(&callback).status, 303);
    let r = bob.get(&inspector);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("for administrators"), "{}", r.body);
    assert_eq!(bob.get(&stream).status, 403);
    assert!(
        !bob.get(&format!("{}/", s.frontend))
            .body
            .contains("/inspector")
    );

    let mut alice = Browser::default();
    let callback = authenticate_at_provider(&mut alice, &s.frontend, "alice");
    assert_eq!(alice.get(&callback).status, 303);
    let r = alice.get(&inspector);
    assert_eq!(r.status, 200, "{}", r.body);
    let log = std::fs::read_to_string(&s.frontend_log).unwrap();
    assert!(
        log.contains("inspector refused: not an administrator"),
        "{log}"
    );
    drop(s.mesh);
}

/// The node tells a refused caller only the selector kinds it lacks and a request id; the
/// inspector (admin only) shows that request id with the full closest-entry explanation.
#[test]
fn the_inspector_explains_a_refusal_the_caller_saw_only_as_a_request_id() {
    let s = setup_with(&format!(
        "{ADMIN_OIDC}[inspector]\nserver_admin_socket = \"{SERVER_ADMIN}\"\nnode_admin_socket = \"{NODE_ADMIN}\"\n"
    ));
    let mut alice = Browser::default();
    let callback = authenticate_at_provider(&mut alice, &s.frontend, "alice");
    assert_eq!(alice.get(&callback).status, 303);
    let before = alice.get(&format!("{}/inspector", s.frontend));
    assert_eq!(before.status, 200, "{}", before.body);
    assert!(
        before.body.contains("id=\"denials-none\""),
        "{}",
        before.body
    );

    // Same uid, another gid: no entry matches, so the node refuses and says only what kind
    // of selector the closest entry needs.
    let out = Command::new("setpriv")
        .args(["--regid", "65534", "--clear-groups", "--"])
        .arg(BIN)
        .args(["svid", "fetch", "--timeout", "5s", "--socket"])
        .arg(s.mesh.socket())
        .output()
        .expect("setpriv (util-linux) runs the CLI under another gid");
    assert!(!out.status.success());
    let told = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(told.contains("unix:gid"), "{told}");
    assert!(
        !told.contains(FRONTEND_PATH),
        "the caller must not learn other entries: {told}"
    );
    let request_id = told
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 16)
        .unwrap_or_else(|| panic!("no request id in {told}"))
        .to_owned();

    let page = alice.get(&format!("{}/inspector", s.frontend));
    assert_eq!(page.status, 200, "{}", page.body);
    let row_start = page
        .body
        .find(&format!("data-request-id=\"{request_id}\""))
        .unwrap_or_else(|| {
            panic!(
                "request id {request_id} not in the inspector: {}",
                page.body
            )
        });
    let row = &page.body[row_start..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains(FRONTEND_PATH),
        "the closest entry is named: {row}"
    );
    assert!(
        row.contains("unix:gid:65534"),
        "the caller's own selector: {row}"
    );
    assert!(row.contains("unix:gid"), "{row}");
    assert!(row.contains("workload_api"), "{row}");
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

/// A whole `agentmesh up` mesh (planner-executor, offline LLM) whose frontend logs in at the
/// real oidc-provider, driven by headless Chromium at 1280×800: login, ask (the answer as
/// text with badges), the request's page with its waterfall, chain and JWS checks, and the
/// Security Inspector (SPIFFE IDs as `entry list` has them, the mesh graph with one node per
/// registered SPIFFE ID and one edge per intention, lit live by a refused call and by an ask,
/// its panels by keyboard, a denied call arriving live with its intention, the check form by
/// keyboard giving `intention check`'s answer).
#[test]
fn headless_chromium_logs_in_asks_and_inspects_a_real_mesh() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is missing at {chromium}; scripts/test installs it (apt-get install chromium)"
    );
    let puppeteer = puppeteer_module();
    let tmp = tempfile::tempdir().unwrap();
    let fe_port = free_port();
    let frontend = format!("http://127.0.0.1:{fe_port}");
    let (_idp, issuer) = start_provider(tmp.path(), &frontend);

    // The built-in scenario, with the frontend on a known port and logging in at the provider.
    let scenario = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/planner-executor.toml"),
    )
    .unwrap()
    .replacen(
        "upstreams = [\"planner\"]",
        &format!(
            "upstreams = [\"planner\"]\nlisten = \"127.0.0.1:{fe_port}\"\n\
             oidc = {{ issuer = \"{issuer}\", client_id = \"agentmesh\", client_secret = \"s3cret\", \
             scopes = [\"openid\", \"email\", \"profile\", \"groups\"], \
             admin_claim = \"groups\", admin_values = [\"agentmesh-admins\"] }}"
        ),
        1,
    );
    assert!(scenario.contains("oidc = "), "the scenario changed shape");
    let scenario_file = tmp.path().join("oidc-mesh.toml");
    std::fs::write(&scenario_file, scenario).unwrap();
    let data = tmp.path().join("mesh");
    let up_log = tmp.path().join("up.log");
    let mut up = Proc(
        Command::new(BIN)
            .arg("up")
            .arg("--scenario")
            .arg(&scenario_file)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("AGENTMESH_ADMIN_SOCKET")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Mesh::log_file(&up_log))
            .stderr(Mesh::log_file(&up_log))
            .spawn()
            .expect("spawn agentmesh up"),
    );
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let out = std::fs::read_to_string(&up_log).unwrap_or_default();
        if out.contains("Ctrl-C stops the mesh.") {
            assert!(
                out.contains("ask skipped: the frontend logs in with OIDC"),
                "{out}"
            );
            assert!(out.contains("✓ refused on purpose"), "{out}");
            break;
        }
        if let Ok(Some(status)) = up.0.try_wait() {
            panic!("up exited with {status}:\n{out}");
        }
        assert!(Instant::now() < deadline, "up did not come up:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let admin = data.join("admin.sock");
    let cli = |args: &[&str]| -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--admin-socket")
            .arg(&admin)
            .output()
            .expect("run agentmesh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mesh_json: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("mesh.json")).unwrap()).unwrap();
    let planner = mesh_json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "planner")
        .unwrap();
    // The planner's sidecar port for the gateway is a Unix socket (only this uid may use it).
    let denied_url = format!(
        "{}#/v1/chat/completions",
        planner["upstreams"]["gateway"].as_str().unwrap()
    );
    assert!(denied_url.starts_with("unix://"), "{denied_url}");

    // What the control plane says before the script deletes the planner -> gateway deny.
    let intentions: Value =
        serde_json::from_str(&cli(&["intention", "list", "-o", "json"])).unwrap();
    let check = cli(&[
        "intention",
        "check",
        "planner",
        "gateway",
        "--method",
        "POST",
        "--path",
        "/v1/chat/completions",
    ]);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("frontend-screenshots");
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/browser_login.mjs"))
        .arg(&frontend)
        .arg(&shots)
        .arg(&denied_url)
        .env("PUPPETEER_MODULE", &puppeteer)
        .env("CHROMIUM", &chromium)
        .env(
            "DELETE_DENY_INTENTION",
            serde_json::json!([
                BIN,
                "intention",
                "delete",
                "planner",
                "gateway",
                "--admin-socket",
                admin.display().to_string()
            ])
            .to_string(),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run browser_login.mjs");
    let logs = || std::fs::read_to_string(data.join("logs/frontend.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "browser_login.mjs failed:\n{}\nfrontend log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        seen["errors"],
        serde_json::json!([]),
        "the pages had errors"
    );

    // Logged in at the provider, asked, answered by the agents, each signature verified.
    let logged_in = seen["logged_in"].as_str().unwrap();
    assert!(
        logged_in.contains("Logged in as") && logged_in.contains("alice"),
        "{logged_in}"
    );
    assert!(logged_in.contains(&issuer), "{logged_in}");
    let answer: Value = serde_json::from_str(seen["answer"].as_str().unwrap()).unwrap();
    assert!(
        answer["answer"].as_str().unwrap().contains("[offline]"),
        "{answer}"
    );
    assert_eq!(
        answer["agents"],
        serde_json::json!(["planner", "executor", "gateway"])
    );
    let csp = seen["csp"].as_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(seen["frame"], "DENY");

    // The request's page: every hop, the chain (token + planner + executor), every JWS.
    let req = &seen["request"];
    let trace_id = answer["trace_id"].as_str().unwrap();
    assert!(req["url"].as_str().unwrap().ends_with(trace_id), "{req}");
    let hops = req["trace"].as_array().unwrap();
    assert!(hops.len() >= 6, "{req}");
    let allowed: Vec<&Value> = hops.iter().filter(|h| h["decision"] == "allow").collect();
    assert_eq!(
        allowed.len(),
        3,
        "frontend→planner, planner→executor, executor→gateway: {req}"
    );
    let chain = req["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3, "{req}");
    assert!(chain.iter().all(|c| c["verified"] == "true"), "{req}");
    assert!(
        chain[0]["text"].as_str().unwrap().contains("alice"),
        "{req}"
    );
    assert!(
        chain[1]["text"].as_str().unwrap().contains("/sa/planner"),
        "{req}"
    );
    assert!(
        chain[2]["text"].as_str().unwrap().contains("/sa/executor"),
        "{req}"
    );
    let jws = req["jws"].as_array().unwrap();
    assert_eq!(jws.len(), 2, "{req}");
    assert!(jws.iter().all(|j| j["verified"] == "true"), "{req}");

    // The ask page: the answer as text, badges, the raw JSON folded away.
    let ask = &seen["ask_page"];
    assert!(ask["text"].as_str().unwrap().contains("[offline]"), "{ask}");
    assert_eq!(
        ask["agents"],
        serde_json::json!(["planner", "executor", "gateway"])
    );
    let badges = ask["signatures"].as_array().unwrap();
    assert_eq!(badges.len(), 2, "{ask}");
    assert!(badges.iter().all(|b| b["verified"] == "true"), "{ask}");
    assert_eq!(ask["raw_folded"], true, "{ask}");
    assert_eq!(
        ask["timeline_link"],
        format!("/inspector/requests/{trace_id}")
    );

    // The waterfall: one bar per hop of the trace table, in start order, as wide as each hop
    // took (every bar on one scale; a 0 ms hop is a sliver).
    let bars = req["waterfall"].as_array().unwrap();
    assert_eq!(bars.len(), hops.len(), "{req}");
    let decisions =
        |l: &[Value]| -> Vec<String> { l.iter().map(|h| h["decision"].to_string()).collect() };
    assert_eq!(decisions(bars), decisions(hops), "{req}");
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap();
    for pair in bars.windows(2) {
        assert!(
            num(&pair[0], "start_ms") <= num(&pair[1], "start_ms"),
            "{req}"
        );
        assert!(num(&pair[0], "x") <= num(&pair[1], "x"), "{req}");
    }
    let longest = bars
        .iter()
        .max_by(|a, b| num(a, "duration_ms").total_cmp(&num(b, "duration_ms")))
        .unwrap();
    let scale = num(longest, "width") / num(longest, "duration_ms").max(1.0);
    for b in bars {
        let want = (num(b, "duration_ms") * scale).max(2.0);
        assert!(
            (num(b, "width") - want).abs() < 0.05,
            "bar width {} for {} ms, want {want}: {req}",
            num(b, "width"),
            num(b, "duration_ms")
        );
    }
    // The chain as a row of signed links: alice → frontend → planner → executor → gateway.
    let links = req["chain_links"].as_array().unwrap();
    let names: Vec<&str> = links.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "✓ alice",
            "✓ frontend",
            "✓ planner",
            "✓ executor",
            "✓ gateway"
        ],
        "{req}"
    );
    assert!(links.iter().all(|l| l["verified"] == "true"), "{req}");

    // The inspector lists exactly the SPIFFE IDs `entry list -o json` prints.
    let entries: Value = serde_json::from_str(&cli(&["entry", "list", "-o", "json"])).unwrap();
    let mut want: Vec<String> = entries
        .as_array()
        .or(entries["entries"].as_array())
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    let mut shown: Vec<String> = seen["spiffe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    want.sort();
    shown.sort();
    assert_eq!(shown, want);
    assert_ne!(seen["countdown_before"], seen["countdown_after"]);

    // The denied call arrived live, with the intention that decided it.
    let deny = intentions["intentions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["action"] == "deny")
        .unwrap_or_else(|| panic!("no deny intention: {intentions}"));
    let deny_id = deny["id"].as_str().unwrap();
    assert_eq!(seen["denied_status"], 403);
    let live = seen["live_denied"].as_array().unwrap();
    assert!(
        live.iter().any(|d| d["intention"] == deny_id
            && d["text"].as_str().unwrap().contains("planner → gateway")),
        "{live:?}"
    );

    // The graph: one node per registered SPIFFE ID, one edge per intention, deny edges
    // dashed and labelled deny; the LLM provider is an external node.
    let graph = &seen["graph"];
    let mut graph_ids: Vec<String> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["spiffe_id"].as_str().map(str::to_owned))
        .collect();
    graph_ids.sort();
    assert_eq!(graph_ids, want, "{graph}");
    assert!(
        graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "external" && n["name"] == "LLM (offline)"),
        "{graph}"
    );
    let listed = intentions["intentions"].as_array().unwrap();
    let edges = graph["edges"].as_array().unwrap();
    assert_eq!(edges.len(), listed.len(), "{graph}");
    for i in listed {
        let edge = edges
            .iter()
            .find(|e| e["intention"] == i["id"])
            .unwrap_or_else(|| panic!("no edge for intention {i}: {graph}"));
        assert_eq!(edge["action"], i["action"], "{edge}");
        assert_eq!(edge["label"], i["action"], "{edge}");
        let dashed = edge["dash"] != "none";
        assert_eq!(dashed, i["action"] == "deny", "{edge}");
    }
    // Live: the refused planner → gateway call flashed the deny edge red, and the ask lit
    // every edge it crossed, each counter one up.
    assert_eq!(seen["red_flash"], true);
    assert_eq!(seen["lighting_ask_status"], 200);
    let state = |k: &str, id: &Value| -> Value {
        seen[k]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["intention"] == *id)
            .cloned()
            .unwrap()
    };
    for i in listed {
        let (before, after) = (
            state("edges_before", &i["id"]),
            state("edges_after", &i["id"]),
        );
        let (lit, counter) = if i["action"] == "deny" {
            ("deny", "denied")
        } else {
            ("allow", "allowed")
        };
        assert_eq!(after["last_lit"], lit, "{after}");
        assert!(
            after[counter].as_u64().unwrap() > before[counter].as_u64().unwrap(),
            "{before} → {after}"
        );
    }
    // By keyboard, Enter on a node shows its SVID, and on the deny edge its intention and
    // "can planner call gateway", filled in.
    let node_panel = &seen["node_panel"];
    assert_eq!(node_panel["shown"], true, "{node_panel}");
    let serial = node_panel["serial"].as_str().unwrap();
    assert!(serial.len() >= 16, "{node_panel}");
    assert!(
        node_panel["text"].as_str().unwrap().contains("expires")
            || node_panel["text"].as_str().unwrap().contains("Expires"),
        "{node_panel}"
    );
    let edge_panel = &seen["edge_panel"];
    assert_eq!(edge_panel["shown"], true, "{edge_panel}");
    assert!(
        edge_panel["text"].as_str().unwrap().contains(deny_id),
        "{edge_panel}"
    );
    assert!(
        edge_panel["source"]
            .as_str()
            .unwrap()
            .ends_with("/sa/planner")
            && edge_panel["destination"]
                .as_str()
                .unwrap()
                .ends_with("/sa/gateway"),
        "{edge_panel}"
    );
    // With scripts disabled the tables, the graph, its panels and the request page's
    // waterfall are all there (only the live lighting needs the script).
    let no_script = &seen["no_script"];
    assert_eq!(
        no_script["intention_rows"].as_u64(),
        Some(listed.len() as u64),
        "{no_script}"
    );
    assert_eq!(
        no_script["service_rows"].as_u64(),
        Some(want.len() as u64),
        "{no_script}"
    );
    assert!(
        no_script["decision_rows"].as_u64().unwrap_or(0) > 0,
        "{no_script}"
    );
    assert_eq!(
        no_script["graph_nodes"].as_u64(),
        Some(want.len() as u64),
        "{no_script}"
    );
    assert_eq!(
        no_script["graph_edges"].as_u64(),
        Some(listed.len() as u64),
        "{no_script}"
    );
    assert_eq!(no_script["edge_panel_shown"], true, "{no_script}");
    assert!(
        no_script["trace_rows"].as_u64().unwrap_or(0) >= 6,
        "{no_script}"
    );
    assert_eq!(
        no_script["waterfall_bars"], no_script["trace_rows"],
        "{no_script}"
    );
    // Readable at 1280×800: no page scrolls sideways.
    assert_eq!(
        seen["scrolls_sideways"],
        serde_json::json!({"ask": false, "request": false, "inspector": false})
    );

    // The check form gives `intention check`'s answer (asked before the deny was deleted).
    assert!(check.contains(deny_id), "{check}");
    assert_eq!(seen["check"]["allowed"], "false");
    assert_eq!(seen["check"]["intention"], deny_id);

    // A default deny gets a dashed red edge of its own while it is lit, then none; the
    // intentions' edges are unchanged.
    let dd = &seen["default_deny"];
    let id_of = |name: &str| {
        want.iter()
            .find(|id| id.ends_with(&format!("/sa/{name}")))
            .unwrap_or_else(|| panic!("no {name} in {want:?}"))
            .clone()
    };
    assert_eq!(dd["source"], id_of("planner").as_str(), "{dd}");
    assert_eq!(dd["destination"], id_of("gateway").as_str(), "{dd}");
    assert_eq!(dd["label"], "default deny", "{dd}");
    assert!(
        dd["title"]
            .as_str()
            .unwrap_or_default()
            .contains("no intention"),
        "{dd}"
    );
    assert_ne!(dd["dash"], "none", "{dd}");
    assert_eq!(dd["marker"], "url(#arrow-deny)", "{dd}");
    assert_eq!(
        dd["intention_edges_now"].as_u64(),
        Some(listed.len() as u64),
        "{dd}"
    );
    assert_eq!(dd["removed"], true, "{dd}");
    let after_delete = cli(&["intention", "check", "planner", "gateway"]);
    assert!(after_delete.contains("default"), "{after_delete}");

    for shot in [
        "1-home.png",
        "2-provider-login.png",
        "3-logged-in.png",
        "4-answer.png",
        "5-request.png",
        "6-inspector-live-denied.png",
        "7-check.png",
        "8-graph.png",
        "8-graph-edge-panel.png",
        "9-timeline.png",
        "9-default-deny.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot} missing");
    }
    println!(
        "screenshots (the graph: 8-graph.png, the timeline: 9-timeline.png, the ask page: \
         4-answer.png): {}",
        shots.display()
    );
    // SIGTERM, as Ctrl-C would: up stops every child.
    let _ = Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status();
    let _ = up.0.wait();
}
