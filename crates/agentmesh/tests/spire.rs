//! agentmesh's data plane on a real SPIRE (see `support/spire.rs`): SPIRE v1.13.3's server and
//! agent, built from the Go module proxy, with entries made by `spire-server entry create`
//! as an operator would make them.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/spire.rs"]
mod spire;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh::{BIN, Mesh, PATIENCE, Proc, SHORT_TTL, free_port, my_uid};
use spire::{SPIRE_TD, Spire};

/// The SDK's X509Source on a SPIRE agent's socket: the SVID SPIRE issues, then SPIRE's own
/// rotation of a 10 s SVID, on the stream the source keeps open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_x509_source_follows_a_spire_rotation() {
    let spire = Spire::start();
    let id = format!("spiffe://{SPIRE_TD}/ns/default/sa/sdk");
    spire.entry(&id, &[&format!("unix:uid:{}", my_uid())], Some(SHORT_TTL));

    // SPIRE's agent syncs entries every few seconds: the source waits for the SVID.
    let source = agentmesh_sdk::X509Source::connect(&spire.socket(), PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("no SVID from SPIRE: {e}\n{}", spire.agent_log()));
    let first = source.current();
    assert_eq!(first.svid.id.to_string(), id);
    assert_eq!(
        first.svid.chain.len(),
        1,
        "SPIRE signs SVIDs with its root CA: {:?}",
        first.svid
    );
    assert!(!first.roots.is_empty());

    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = source.current();
        if now.svid.serial != first.svid.serial {
            assert_eq!(now.svid.id.to_string(), id);
            assert!(
                now.svid.not_after > first.svid.not_after,
                "{:?} after {:?}",
                now.svid,
                first.svid
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SPIRE's rotation never reached the source\n{}",
            spire.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP app on loopback that answers `hello` and counts what reached it.
fn counting_app() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the app");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    (port, hits)
}

/// `GET /` through the caller's upstream listener: the status and the whole answer.
fn get(port: u16) -> (u16, String) {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connection refused".into());
    };
    let _ = conn.set_read_timeout(Some(PATIENCE));
    let _ = conn.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// Runs `agentmesh proxy run --config FILE` with gid `gid` (uid stays root, so the binary
/// under the root-only target dir can run): SPIRE's unix attestor and agentmesh's node tell
/// the two sidecars apart by it.
fn proxy_as_gid(config: &Path, gid: u32, log: &Path) -> Proc {
    let child = Command::new("setpriv")
        .args(["--regid", &gid.to_string(), "--clear-groups", BIN])
        .args(["proxy", "run", "--config"])
        .arg(config)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Mesh::log_file(log))
        .spawn()
        .expect("setpriv (util-linux) runs the sidecar under its own gid");
    Proc(child)
}

/// Waits until the proxy's admin `/healthz` says it has an SVID and a policy; its body.
fn healthy(admin: u16, log: &Path, spire: &Spire) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", admin)) {
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = c.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 200") {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never became healthy; its log:\n{}\nSPIRE agent:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            spire.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// agentmesh's data plane on SPIRE identities, with agentmesh still deciding: two sidecars
/// take their SVIDs from a real SPIRE agent (`workload_api`), registered with `spire-server
/// entry create` by `unix:gid`, and their intentions from an agentmesh node that runs with
/// `--no-workload-api` (`policy_api`), where the same SPIFFE IDs are registered so the node
/// knows who may read the policy. The node hands out no SVID at all, so every certificate in
/// the handshake is SPIRE's. Default deny, an allow, then a live deny; what was refused never
/// reached the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_pair_on_spire_svids_enforces_agentmesh_intentions() {
    let spire = Spire::start();
    let mut mesh = Mesh::start();
    // The node again, now relaying policy only; it keeps its stored node SVID.
    mesh.node.take().expect("node").kill_9();
    mesh.node_args.push("--no-workload-api".into());
    mesh.start_node(None);
    let refused = mesh.cli(&["svid", "fetch"]);
    assert!(
        !refused.status.success(),
        "a --no-workload-api node served an SVID: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let (caller_gid, backend_gid) = (2101u32, 2102u32);
    for (name, gid) in [("caller", caller_gid), ("backend", backend_gid)] {
        let id = format!("spiffe://{SPIRE_TD}/ns/default/sa/{name}");
        spire.entry(&id, &[&format!("unix:gid:{gid}")], None);
        mesh.entry(
            &format!("/ns/default/sa/{name}"),
            &[&format!("unix:gid:{gid}")],
            None,
        );
    }
    let (app, hits) = counting_app();
    let (inbound, upstream, caller_admin, backend_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let sockets = format!(
        "workload_api = \"unix://{}\"\npolicy_api = \"unix://{}\"\n",
        spire.socket().display(),
        mesh.socket().display()
    );
    let backend_cfg = mesh.dir.join("backend.toml");
    std::fs::write(
        &backend_cfg,
        format!(
            "service = \"backend\"\n{sockets}[inbound]\nlisten = \"127.0.0.1:{inbound}\"\n\
             app = \"127.0.0.1:{app}\"\nprotocol = \"http\"\n[admin]\nlisten = \"127.0.0.1:{backend_admin}\"\n"
        ),
    )
    .expect("backend.toml");
    let caller_cfg = mesh.dir.join("caller.toml");
    std::fs::write(
        &caller_cfg,
        format!(
            "service = \"caller\"\n{sockets}[[upstream]]\ndestination = \"backend\"\n\
             listen = \"127.0.0.1:{upstream}\"\naddress = \"127.0.0.1:{inbound}\"\n\
             [admin]\nlisten = \"127.0.0.1:{caller_admin}\"\n"
        ),
    )
    .expect("caller.toml");
    let (backend_log, caller_log) = (mesh.dir.join("backend.log"), mesh.dir.join("caller.log"));
    let _backend = proxy_as_gid(&backend_cfg, backend_gid, &backend_log);
    let _caller = proxy_as_gid(&caller_cfg, caller_gid, &caller_log);
    let health = healthy(backend_admin, &backend_log, &spire);
    assert!(
        health.contains("ok spiffe://agentmesh.local/ns/default/sa/backend"),
        "{health}"
    );
    healthy(caller_admin, &caller_log, &spire);

    // Default deny: no intention names the pair.
    let (status, answer) = get(upstream);
    assert_eq!(status, 403, "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let allow = mesh.cli_ok(&[
        "intention",
        "create",
        "caller",
        "backend",
        "--action",
        "allow",
    ]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, answer) = get(upstream);
        if status == 200 {
            assert!(answer.ends_with("hello"), "{answer}");
            break;
        }
        assert_eq!(status, 403, "before the allow arrives: {answer}");
        assert!(
            Instant::now() < deadline,
            "the allow never reached the sidecars ({allow}): {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reached = hits.load(Ordering::SeqCst);
    assert!(reached >= 1);

    // A live deny: the allow goes, a deny takes its place.
    let listed: serde_json::Value =
        serde_json::from_str(&mesh.cli_ok(&["intention", "list", "-o", "json"])).expect("json");
    let allow_id = listed["intentions"]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|i| i["id"].as_str())
        .expect("the allow's id")
        .to_owned();
    mesh.cli_ok(&["intention", "delete", &allow_id]);
    mesh.cli_ok(&[
        "intention",
        "create",
        "caller",
        "backend",
        "--action",
        "deny",
    ]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, answer) = get(upstream);
        if status == 403 && answer.contains("denies") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deny never reached the sidecars: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = hits.load(Ordering::SeqCst);
    let (status, _) = get(upstream);
    assert_eq!(status, 403);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        after,
        "a denied call reached the app"
    );
}

/// `agentmesh up --identity spire:unix:///PATH`: the default scenario on SVIDs from a real
/// SPIRE agent. `up` writes the `spire-server entry create` lines (one per service, selected
/// by the gid it runs that service under); the test runs them as an operator would, with the
/// agent's alias as the parent, and then an ask is answered through every hop, each agent's
/// signature verified, and the planner → gateway self-check is refused by agentmesh's
/// intention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_default_scenario_on_spire_identities() {
    let spire = Spire::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("mesh");
    let out_path = tmp.path().join("up.out");
    let child = Command::new(BIN)
        .args(["up", "--identity"])
        .arg(format!("spire:unix://{}", spire.socket().display()))
        .arg("--data-dir")
        .arg(&data)
        .env_remove("AGENTMESH_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Mesh::log_file(&out_path))
        .stderr(Mesh::log_file(&out_path))
        .spawn()
        .expect("spawn agentmesh up");
    let mut up = Proc(child);
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();

    // The operator's part: the lines `up` printed, run against SPIRE.
    let entries = data.join("spire-entries.sh");
    let deadline = Instant::now() + PATIENCE;
    while !entries.exists() {
        if let Ok(Some(status)) = up.0.try_wait() {
            panic!("up exited with {status}:\n{}", output());
        }
        assert!(
            Instant::now() < deadline,
            "no spire-entries.sh:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&entries).expect("spire-entries.sh");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines.len(),
        4,
        "one per service of planner-executor: {text}"
    );
    let parent = format!("spiffe://{SPIRE_TD}/host");
    for line in &lines {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| w.replace("\"$SPIRE_AGENT_ID\"", &parent))
            .collect();
        assert_eq!(words[0], "spire-server", "{line}");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        spire.server_ok(&args);
    }

    let deadline = Instant::now() + PATIENCE * 2;
    while !output().contains("Ctrl-C stops the mesh.") {
        if let Ok(Some(status)) = up.0.try_wait() {
            panic!(
                "up exited with {status}:\n{}\nSPIRE agent:\n{}",
                output(),
                spire.agent_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "up did not come up:\n{}",
            output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = output();
    assert!(out.contains("SVIDs from SPIRE"), "{out}");
    assert!(
        out.contains("answered by planner → executor → gateway"),
        "{out}"
    );
    assert!(
        out.contains("✓ refused on purpose: planner → gateway"),
        "{out}"
    );

    let asked = Command::new(BIN)
        .args(["ask", "What is SPIRE?", "-o", "json", "--data-dir"])
        .arg(&data)
        .env_remove("AGENTMESH_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run agentmesh ask");
    assert!(
        asked.status.success(),
        "ask failed: {}\n{}",
        String::from_utf8_lossy(&asked.stderr),
        output()
    );
    let answer: serde_json::Value = serde_json::from_slice(&asked.stdout).expect("json");
    assert_eq!(
        answer["agents"],
        serde_json::json!(["planner", "executor", "gateway"]),
        "{answer}"
    );
    let verified = answer["verified"].as_array().expect("verified");
    assert!(
        !verified.is_empty() && verified.iter().all(|v| v["ok"] == true),
        "{answer}"
    );
    // The sidecars' SVIDs are SPIRE's: the node up started serves none.
    let node_svid = Command::new(BIN)
        .args(["svid", "fetch", "--socket"])
        .arg(data.join("node.sock"))
        .stdin(Stdio::null())
        .output()
        .expect("svid fetch");
    assert!(!node_svid.status.success(), "the node served an SVID");

    Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = up.0.try_wait() {
            assert!(status.success(), "up stopped with {status}:\n{}", output());
            break;
        }
        assert!(Instant::now() < deadline, "up did not stop:\n{}", output());
        std::thread::sleep(Duration::from_millis(100));
    }
}
