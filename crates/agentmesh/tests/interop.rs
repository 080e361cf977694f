//! Interop, conformance, faults and secrets, against real processes: `agentmesh server run`
//! and `agentmesh node run` spawned from the built binary, on 127.0.0.1, with temporary data
//! dirs. The workloads are clients no one here wrote: the `spiffe` crate's `X509Source` and
//! `JwtSource`, and py-spiffe / spiffe-tls (tests/py/workload.py), plus `openssl verify`.
//!
//! Needs the Python venv that `scripts/test` installs (`$AGENTMESH_TEST_PYTHON`, or
//! `.cache/venv` in the workspace) and `openssl` on the PATH. A missing peer fails the test
//! and names what is missing; nothing is skipped.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

#[path = "support/mesh.rs"]
mod mesh;
use mesh::*;

/// `openssl verify -x509_strict` of a leaf against roots, with the intermediates untrusted.
#[track_caller]
fn openssl_verify(dir: &Path, chain: &[Vec<u8>], roots: &[Vec<u8>]) {
    let write = |name: &str, certs: &[Vec<u8>]| {
        let path = dir.join(name);
        let pem: String = certs
            .iter()
            .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
            .collect();
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let leaf = write("verify-leaf.pem", &chain[..1]);
    let inter = write("verify-intermediates.pem", &chain[1..]);
    let roots = write("verify-roots.pem", roots);
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&roots)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf)
        .output()
        .unwrap_or_else(|e| panic!("openssl is missing ({e}); scripts/test installs it"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().ends_with(": OK"),
        "openssl verify failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    agentmesh_ca::pem_decode_all(text, "CERTIFICATE").expect("PEM certificates")
}

/// Runs a finished Python workload's JSON report out of its output.
#[track_caller]
fn json_report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "python workload failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// === conformance ===

/// The X509-SVID spec's rules for one chain, leaf first.
#[track_caller]
fn assert_conformant(chain: &[Vec<u8>], want_id: &str, ttl: Duration) {
    use x509_parser::prelude::*;
    assert!(chain.len() >= 2, "chain is leaf + intermediate");
    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf parses");
    let (_, issuer) = X509Certificate::from_der(&chain[1]).expect("intermediate parses");

    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .expect("SAN extension is well formed")
        .expect("the leaf has a SAN")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [want_id], "exactly one URI SAN, the SPIFFE ID");

    let ca = leaf
        .basic_constraints()
        .expect("basicConstraints well formed")
        .is_some_and(|b| b.value.ca);
    assert!(!ca, "the leaf must not be a CA");
    let ku = leaf
        .key_usage()
        .expect("keyUsage well formed")
        .expect("the leaf has keyUsage");
    assert!(
        ku.value.digital_signature(),
        "keyUsage has digitalSignature"
    );
    assert!(
        !ku.value.key_cert_sign() && !ku.value.crl_sign(),
        "a leaf must not sign certificates or CRLs"
    );

    // Leaf first: the next certificate issued the leaf, and is a CA.
    assert_eq!(leaf.issuer(), issuer.subject(), "chain is leaf first");
    assert!(
        issuer
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca),
        "the second certificate is the issuing CA"
    );
    let validity = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(validity as u64, ttl.as_secs(), "validity equals the TTL");
}

fn serial(der: &[u8]) -> String {
    agentmesh_tls::cert_serial_hex(der).expect("serial")
}

// === tests ===

/// The `spiffe` crate's X509Source and JwtSource against a node process: the right IDs, a
/// conformant chain that `openssl verify` accepts, and a 10 s TTL rotating on the open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_gets_conformant_svids_and_sees_rotation() {
    let mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    let id = mesh.entry("/ns/default/sa/rust-client", &[&uid], Some(SHORT_TTL));
    mesh.wait_for_svid();

    let source = spiffe::X509Source::builder()
        .endpoint(mesh.endpoint())
        .build()
        .await
        .expect("X509Source against the node");
    let svid = source.svid().expect("an SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_conformant(&chain, &id, SHORT_TTL);
    let td = spiffe::TrustDomain::new(TD).expect("trust domain");
    let roots: Vec<Vec<u8>> = source
        .bundle_set()
        .expect("bundles")
        .get(&td)
        .expect("a bundle for our trust domain")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    openssl_verify(&mesh.dir, &chain, &roots);
    // The bundle the source got is the one the server publishes.
    assert_eq!(roots, pem_certs(&mesh.cli_ok(&["bundle", "show"])));

    // Two rotations on the same open stream, each a new, conformant SVID.
    let mut serials = HashSet::from([serial(&chain[0])]);
    let mut updates = source.updated();
    while serials.len() < 3 {
        tokio::time::timeout(PATIENCE, updates.changed())
            .await
            .expect("a rotation on the open stream")
            .expect("the source is alive");
        let svid = source.svid().expect("an SVID");
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        assert_conformant(&chain, &id, SHORT_TTL);
        serials.insert(serial(&chain[0]));
    }
    source.shutdown().await;

    let jwt_source = spiffe::JwtSource::builder()
        .endpoint(mesh.endpoint())
        .build()
        .await
        .expect("JwtSource against the node");
    let jwt = jwt_source
        .fetch_jwt_svid(["interop"])
        .await
        .expect("a JWT-SVID");
    assert_eq!(jwt.spiffe_id().to_string(), id);
    assert_eq!(jwt.audience(), ["interop"]);
    let bundles = jwt_source.bundle_set().expect("JWT bundles");
    let bundle = bundles.get(&td).expect("a JWT bundle for our trust domain");
    assert!(
        bundle.find_jwt_authority(jwt.key_id()).is_some(),
        "the token's kid {} is in the JWKS the node serves",
        jwt.key_id()
    );
    jwt_source.shutdown().await;
}

/// py-spiffe's X509Source, fetch_jwt_svid and validate_jwt_svid against a node process.
#[test]
fn py_spiffe_gets_svids_validates_jwts_and_sees_rotation() {
    let mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    let id = mesh.entry("/ns/default/sa/py-client", &[&uid], Some(SHORT_TTL));
    mesh.wait_for_svid();

    let out_dir = mesh.dir.join("py-x509");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = mesh
        .python()
        .arg("x509")
        .arg(&out_dir)
        .arg(PATIENCE.as_secs().to_string())
        .output()
        .expect("run python");
    let report = json_report(&out);
    assert_eq!(report["spiffe_id"], id.as_str(), "{report}");
    assert!(report["chain_len"].as_u64().unwrap_or(0) >= 2, "{report}");
    assert!(
        report["rotated_serial"].is_string() && report["rotated_serial"] != report["first_serial"],
        "py-spiffe saw no rotation on its open stream: {report}"
    );
    // What py-spiffe holds verifies with openssl against what py-spiffe got as the bundle.
    let chain = pem_certs(&std::fs::read_to_string(out_dir.join("chain.pem")).expect("chain"));
    let roots = pem_certs(&std::fs::read_to_string(out_dir.join("bundle.pem")).expect("bundle"));
    assert_conformant(&chain, &id, SHORT_TTL);
    openssl_verify(&out_dir, &chain, &roots);

    let out = mesh
        .python()
        .args(["jwt", "interop"])
        .output()
        .expect("run python");
    let report = json_report(&out);
    assert_eq!(report["spiffe_id"], id.as_str(), "{report}");
    assert_eq!(
        report["audience"],
        serde_json::json!(["interop"]),
        "{report}"
    );
    assert_eq!(report["validated_by_node"], id.as_str(), "{report}");
    assert_eq!(report["validated_locally"], id.as_str(), "{report}");
    assert_eq!(report["wrong_audience_refused"], true, "{report}");
}

/// A Python workload started by the test, registered as a launcher child, then told to go.
struct Launched {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

async fn launch(mesh: &Mesh, args: &[&str], service: &str) -> Launched {
    let mut child = mesh
        .python()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let pid = child.id();
    register_launch(mesh, pid, service).await;
    let mut launched = Launched {
        proc: Proc(child),
        stdin,
        stdout,
    };
    writeln!(launched.stdin, "go").expect("tell the workload to go");
    launched
}

impl Launched {
    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| {
            let status = self.proc.0.try_wait();
            panic!("not a JSON line ({e}): {line:?}; process: {status:?}")
        })
    }
}

/// Two processes holding different agentmesh SVIDs talk mTLS through spiffe-tls, each
/// authorizing the other's exact SPIFFE ID; a client expecting someone else is refused. With a
/// 10 s TTL the client's SVID rotates on its open stream, and its next connection presents
/// the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffetls_echo_between_two_processes_with_different_svids() {
    let mesh = Mesh::start();
    let server_id = mesh.entry(
        "/ns/default/sa/echo-server",
        &["launcher:service:echo-server"],
        Some(SHORT_TTL),
    );
    let client_id = mesh.entry(
        "/ns/default/sa/echo-client",
        &["launcher:service:echo-client"],
        Some(SHORT_TTL),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let out_dir = mesh.dir.join("py-echo");
    std::fs::create_dir(&out_dir).expect("mkdir");

    let mut server = launch(
        &mesh,
        &["echo-server", &addr, &client_id, "2"],
        "echo-server",
    )
    .await;
    let ready = server.line();
    assert_eq!(ready["spiffe_id"], server_id.as_str(), "{ready}");
    let wait = PATIENCE.as_secs().to_string();
    let mut client = launch(
        &mesh,
        &[
            "echo-client",
            &addr,
            &server_id,
            out_dir.to_str().expect("utf-8"),
            &wait,
        ],
        "echo-client",
    )
    .await;
    let done = client.line();
    assert_eq!(done["spiffe_id"], client_id.as_str(), "{done}");
    let hello = format!("echo:hello from {client_id}");
    assert_eq!(done["replies"], serde_json::json!([hello, hello]), "{done}");
    assert_eq!(done["wrong_peer_refused"], true, "{done}");
    let own = &done["own_serials"];
    assert_ne!(own[0], own[1], "the client's SVID did not rotate: {done}");

    let served = server.line();
    assert_eq!(served["spiffe_id"], server_id.as_str(), "{served}");
    // The server saw the client's first certificate, then the rotated one.
    assert_eq!(&served["peer_serials"], own, "{served} vs {done}");

    let chain = pem_certs(&std::fs::read_to_string(out_dir.join("chain.pem")).expect("chain"));
    let roots = pem_certs(&std::fs::read_to_string(out_dir.join("bundle.pem")).expect("bundle"));
    assert_conformant(&chain, &client_id, SHORT_TTL);
    openssl_verify(&out_dir, &chain, &roots);
}

/// The server is `kill -9`ed: workloads still fetch SVIDs from the node's cache; the server
/// comes back on the same data dir and port, and rotation resumes on an open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_killed_workloads_still_fetch_and_rotation_resumes() {
    let mut mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    let id = mesh.entry("/ns/default/sa/steady", &[&uid], Some(SHORT_TTL));
    mesh.wait_for_svid();
    let source = spiffe::X509Source::builder()
        .endpoint(mesh.endpoint())
        .build()
        .await
        .expect("X509Source");
    let mut updates = source.updated();

    mesh.server.take().expect("server").kill_9();
    let fetched = mesh.wait_for_svid();
    assert_eq!(fetched["svids"][0]["spiffe_id"], id.as_str(), "{fetched}");

    let restarted_at = SystemTime::now();
    mesh.start_server();
    // A rotation minted after the restart proves the node found the server again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        tokio::time::timeout_at(deadline, updates.changed())
            .await
            .expect("rotation did not resume after the server came back")
            .expect("source alive");
        let svid = source.svid().expect("svid");
        let (not_before, _) =
            agentmesh_tls::cert_validity(svid.leaf().as_bytes()).expect("validity");
        // notBefore has one-second precision.
        if not_before + Duration::from_secs(1) >= restarted_at {
            assert_eq!(svid.spiffe_id().to_string(), id);
            break;
        }
    }
    source.shutdown().await;
}

/// After a node restart, workloads get SVIDs again without a new join token.
#[test]
fn a_restarted_node_process_needs_no_new_token() {
    let mut mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    let id = mesh.entry("/ns/default/sa/again", &[&uid], None);
    mesh.wait_for_svid();
    mesh.node.take().expect("node").kill_9();
    mesh.start_node(None);
    let fetched = mesh.wait_for_svid();
    assert_eq!(fetched["svids"][0]["spiffe_id"], id.as_str(), "{fetched}");
}

/// Every regular file under `dir`, with whether it holds a private key: PEM with a
/// `PRIVATE KEY` block, or anything under a `keys/` directory (the CA keys, PKCS#8 DER).
fn files_under(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let is_key = path.parent().is_some_and(|p| p.ends_with("keys"))
                    || String::from_utf8_lossy(&bytes).contains("PRIVATE KEY");
                found.push((path, is_key));
            }
        }
    }
    found
}

/// Pieces of a key file that must never appear in a log: 40-character runs of its base64
/// (of the PEM body, or of the DER) and of its hex.
fn key_fingerprints(path: &Path) -> Vec<String> {
    use base64::Engine;
    let bytes = std::fs::read(path).expect("key file");
    let text = String::from_utf8_lossy(&bytes);
    let ders: Vec<Vec<u8>> = if text.contains("PRIVATE KEY") {
        agentmesh_ca::pem_decode_all(&text, "PRIVATE KEY").expect("PEM key")
    } else {
        vec![bytes]
    };
    let mut out = Vec::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        for s in [b64, hex] {
            out.extend(
                s.as_bytes()
                    .chunks(40)
                    .filter(|c| c.len() == 40)
                    .map(|c| String::from_utf8_lossy(c).into_owned()),
            );
        }
    }
    out
}

/// Key files are 0600, and no log line (debug level, every process) holds a PEM block, key
/// bytes, a whole join token or a whole JWT.
#[test]
fn keys_are_0600_and_no_log_holds_a_secret() {
    let mut mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    mesh.entry("/ns/default/sa/secretive", &[&uid], None);
    mesh.wait_for_svid();
    let write_dir = mesh.dir.join("written");
    let fetch = mesh.cli(&[
        "svid",
        "fetch",
        "--write",
        write_dir.to_str().expect("utf-8"),
    ]);
    assert!(fetch.status.success());
    let jwt = mesh.cli(&["jwt", "fetch", "--audience", "secrets"]);
    assert!(jwt.status.success());
    let token = String::from_utf8_lossy(&jwt.stdout).trim().to_owned();
    // One more node attestation attempt with a used token: the refusal is logged too.
    let used = mesh.tokens[0].clone();
    let refused = mesh
        .command()
        .args([
            "node",
            "run",
            "--server",
            &format!("127.0.0.1:{}", mesh.port),
        ])
        .arg("--socket")
        .arg(mesh.dir.join("other.sock"))
        .arg("--trust-bundle")
        .arg(mesh.dir.join("bundle.pem"))
        .arg("--data-dir")
        .arg(mesh.dir.join("other-node"))
        .env("AGENTMESH_JOIN_TOKEN", &used)
        .output()
        .expect("run node");
    assert!(
        !refused.status.success(),
        "a reused join token was accepted"
    );
    drop(mesh.node.take());
    drop(mesh.server.take());

    // Data dirs and the CA's key dir are 0700; no file in them is readable by others, and
    // every key file (written SVID keys too) is exactly 0600.
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    for d in [
        mesh.dir.join("server"),
        mesh.dir.join("server/keys"),
        mesh.dir.join("node"),
    ] {
        assert_eq!(mode(&d), 0o700, "{} is {:o}", d.display(), mode(&d));
    }
    let mut keys = Vec::new();
    for d in [mesh.dir.join("server"), mesh.dir.join("node"), write_dir] {
        for (path, is_key) in files_under(&d) {
            let m = mode(&path);
            if is_key {
                assert_eq!(m, 0o600, "key file {} is {m:o}", path.display());
                keys.push(path);
            } else if !d.ends_with("written") {
                assert_eq!(m & 0o077, 0, "{} is {m:o}", path.display());
            }
        }
    }
    assert!(
        keys.len() >= 5,
        "expected 3 CA keys, the node key and the written SVID key, found {keys:?}"
    );

    // The secrets: every key, the join tokens, the JWT.
    let mut secrets: Vec<String> = keys.iter().flat_map(|k| key_fingerprints(k)).collect();
    secrets.extend(mesh.tokens.iter().cloned());
    secrets.push(token);

    let mut logs = vec![
        String::from_utf8_lossy(&refused.stderr).into_owned(),
        String::from_utf8_lossy(&fetch.stderr).into_owned(),
        String::from_utf8_lossy(&jwt.stderr).into_owned(),
    ];
    for path in [mesh.server_log(), mesh.node_log()] {
        logs.push(std::fs::read_to_string(&path).expect("log"));
    }
    let all = logs.join("\n");
    assert!(
        all.lines().count() > 10,
        "the logs are suspiciously empty:\n{all}"
    );
    assert!(!all.contains("PRIVATE KEY"), "a log holds a PEM key block");
    assert!(!all.contains("-----BEGIN"), "a log holds a PEM block");
    for s in &secrets {
        assert!(
            !all.contains(s.as_str()),
            "a log holds secret material ({}…)",
            &s[..8.min(s.len())]
        );
    }
}
