//! A2A through real sidecars: the built-in executor agent (`agentmesh agent run`) behind an
//! `agentmesh proxy run`, with a real gateway (offline provider) behind another, a real server
//! and node, and the official A2A Python SDK (`a2a-sdk`, tests/py/a2a_client.py) as the
//! client through a third sidecar. The client fetches the agent card and verifies its
//! signature with the SDK's verifier (the x5c chain checked against the mesh's bundle), sends
//! a message where `SendMessage` is allowed, and is refused where it is not, also after a
//! live deny. Needs the scripts/test venv (`a2a-sdk`, pinned in
//! scripts/requirements-test.txt); nothing is skipped.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mesh::*;
use serde_json::{Value, json};
use sidecar::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn py(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Fails the test, naming what is missing, unless the venv has a2a-sdk.
fn require_a2a_sdk() {
    let out = Command::new(python())
        .args(["-c", "import a2a.client, a2a.utils.signing"])
        .output()
        .expect("run the test venv's python");
    assert!(
        out.status.success(),
        "the official A2A SDK (`a2a-sdk[signing]`, pinned in scripts/requirements-test.txt) is \
         missing from {}; run the suite through scripts/test, which installs it: {}",
        python().display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs the SDK client against the agent through the client sidecar's upstream listener.
fn sdk_client(upstream: SocketAddr, bundle: &Path) -> Value {
    let out = Command::new(python())
        .arg(py("a2a_client.py"))
        .arg(format!("http://{upstream}"))
        .arg(id("executor"))
        .arg(bundle)
        .stdin(Stdio::null())
        .output()
        .expect("run a2a_client.py");
    assert!(
        out.status.success(),
        "a2a_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "a2a_client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One raw HTTP/1.0 request through `addr`: (status, body parsed as JSON or as text).
async fn raw(addr: SocketAddr, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: executor\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // An oversized body may be refused before it is all sent.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(text).unwrap_or_else(|_| json!({"raw": text})),
    )
}

fn send_body(id: u64) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "SendMessage", "params": {"message": {
        "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}}})
    .to_string()
    .into_bytes()
}

const JSON: &str = "application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_sdk_verifies_the_signed_card_and_reaches_only_allowed_methods() {
    require_a2a_sdk();
    let mesh = Mesh::start();
    for s in ["client", "executor", "gateway"] {
        register(&mesh, s, None);
    }
    // === the gateway (offline provider) behind its sidecar, on a socket only its uid
    // reaches (it trusts the sidecar's x-forwarded-client-cert only there) ===
    let gw_socket = mesh.dir.join("gateway.sock");
    let gw_config = mesh.dir.join("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            "listen = \"unix://{}\"\n[[provider]]\nname = \"local\"\nkind = \"offline\"\n\
             [[model]]\nname = \"agentmesh-default\"\nproviders = [\"local\"]\n\
             [[caller]]\nid = \"executor\"\nmodels = [\"*\"]\n",
            gw_socket.display()
        ),
    )
    .expect("write gateway.toml");
    let _gateway = Proc(
        mesh.command()
            .args(["gateway", "run", "--config"])
            .arg(&gw_config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(mesh.dir.join("gateway.log")).expect("log"))
            .spawn()
            .expect("spawn the gateway"),
    );
    let gw_app = format!("unix://{}", gw_socket.display());
    let _gw_proxy = start_proxy_to(&mesh, "gateway", Some((gw_app, "http")), &[], &[]).await;

    // === the executor agent behind its sidecar ===
    let agent_app: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let executor = start_proxy(
        &mesh,
        "executor",
        Some((agent_app, "http")),
        &[("gateway", "http")],
    )
    .await;
    let agent_toml = mesh.dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "role = \"executor\"\nlisten = \"{agent_app}\"\n[[upstream]]\nname = \"gateway\"\n\
             role = \"gateway\"\nurl = \"http://{}\"\n[a2a]\nworkload_api = \"{}\"\n",
            executor.upstreams[0],
            mesh.endpoint()
        ),
    )
    .expect("write agent.toml");
    let agent_log = mesh.dir.join("agent.log");
    let agent = mesh
        .command()
        .args(["agent", "run", "--config"])
        .arg(&agent_toml)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).expect("log"))
        .spawn()
        .expect("spawn the agent");
    let pid = agent.id();
    let _agent = Proc(agent);
    register_launch(&mesh, pid, "executor").await;
    let client = start_proxy(&mesh, "client", None, &[("executor", "http")]).await;
    let upstream = client.upstreams[0];

    // === intentions: SendMessage and the extended card for the client ===
    mesh.cli_ok(&[
        "intention",
        "create",
        "executor",
        "gateway",
        "--action",
        "allow",
    ]);
    let created = mesh.cli_ok(&[
        "intention",
        "create",
        "client",
        "executor",
        "--action",
        "allow",
        "--a2a-method",
        "SendMessage",
        "--a2a-method",
        "GetExtendedAgentCard",
        "-o",
        "json",
    ]);
    let allow: Value = serde_json::from_str(&created).expect("json");
    let allow_id = allow["id"].as_str().expect("id").to_owned();
    let bundle = mesh.dir.join("bundle.pem");
    std::fs::write(&bundle, mesh.cli_ok(&["bundle", "show"])).expect("write bundle");
    eventually("the card answers through the sidecars", || async {
        raw(upstream, "GET", "/.well-known/agent-card.json", JSON, b"")
            .await
            .0
            == 200
    })
    .await;

    let out = sdk_client(upstream, &bundle);
    assert_eq!(
        out["card"]["verified"],
        true,
        "{out}\nagent log:\n{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );
    assert_eq!(out["card"]["signer"], id("executor").as_str(), "{out}");
    assert_eq!(out["card"]["tamper_refused"], true, "{out}");
    assert!(
        out["card"]["mtls"]["spiffe"]
            .as_str()
            .is_some_and(|d| d.contains(&id("executor"))),
        "the MutualTls scheme names the SPIFFE ID: {out}"
    );
    assert!(
        out["send"]["text"].as_str().is_some_and(|t| !t.is_empty()),
        "SendMessage is answered: {out}\nexecutor sidecar:\n{}",
        executor.log_text()
    );
    assert_eq!(out["extended"]["skills"], json!(["executor"]), "{out}");

    // === the extended card only: SendMessage is refused, and its skill hidden ===
    mesh.cli_ok(&["intention", "delete", "client", "executor"]);
    mesh.cli_ok(&[
        "intention",
        "create",
        "client",
        "executor",
        "--action",
        "allow",
        "--a2a-method",
        "GetExtendedAgentCard",
    ]);
    let mut last = (0, Value::Null);
    for _ in 0..600 {
        last = raw(upstream, "POST", "/a2a", JSON, &send_body(1)).await;
        if last.1["error"]["code"] == -32040 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last.1["error"]["code"], -32040, "{}", last.1);
    let card_only = last.1["error"]["data"]["intention"]
        .as_str()
        .expect("the refusal names the intention")
        .to_owned();
    let out = sdk_client(upstream, &bundle);
    assert_eq!(out["card"]["verified"], true, "{out}");
    let err = out["send"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("SendMessage was not refused: {out}"));
    assert!(
        err.contains("denied by intentions") && err.contains(&card_only),
        "{err}"
    );
    assert_eq!(out["extended"]["skills"], json!([]), "{out}");

    // === bad input: each a clear error from the sidecar, nothing forwarded ===
    let big = {
        let mut b = br#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"x":""#.to_vec();
        b.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
        b.extend_from_slice(br#""}}"#);
        b
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, i64)> = vec![
        (
            "malformed JSON-RPC",
            JSON,
            b"{\"jsonrpc\":\"2.0\",".to_vec(),
            400,
            -32700,
        ),
        ("an oversized body", JSON, big, 413, -32600),
        (
            "an unknown method",
            JSON,
            br#"{"jsonrpc":"2.0","id":1,"method":"message/send","params":{}}"#.to_vec(),
            200,
            -32601,
        ),
        (
            "a batch",
            JSON,
            br#"[{"jsonrpc":"2.0","id":1,"method":"GetExtendedAgentCard"}]"#.to_vec(),
            400,
            -32600,
        ),
        (
            "a non-JSON body",
            "text/plain",
            b"SendMessage hello".to_vec(),
            415,
            -32700,
        ),
    ];
    for (what, ct, body, want_status, want_code) in cases {
        let (status, answer) = raw(upstream, "POST", "/a2a", ct, &body).await;
        assert_eq!(status, want_status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("agentmesh sidecar")),
            "{what}: {answer}"
        );
    }

    // === access log: one line per call, with method, decision, intention, caller ===
    let lines = executor.access();
    let line = |decision: &str, intention: &str| {
        lines
            .iter()
            .find(|l| {
                l["a2a_method"] == "SendMessage"
                    && l["decision"] == decision
                    && l["intention"] == intention
            })
            .unwrap_or_else(|| panic!("no {decision} SendMessage line for {intention}: {lines:?}"))
            .clone()
    };
    assert_eq!(line("allow", &allow_id)["source"], id("client").as_str());
    assert_eq!(line("deny", &card_only)["source"], id("client").as_str());
    // Bad input never reached the agent: the sidecar refused each with its own line.
    assert!(
        lines
            .iter()
            .filter(|l| l["decision"] == "deny"
                && l["a2a_method"].is_null()
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("refused before any permission")))
            .count()
            >= 5,
        "{lines:?}"
    );

    // === a live deny: the whole pair is refused ===
    mesh.cli_ok(&["intention", "delete", "client", "executor"]);
    let denied = mesh.cli_ok(&[
        "intention",
        "create",
        "client",
        "executor",
        "--action",
        "deny",
        "-o",
        "json",
    ]);
    let deny: Value = serde_json::from_str(&denied).expect("json");
    let deny_id = deny["id"].as_str().expect("id").to_owned();
    let mut last = (0, Value::Null);
    for _ in 0..600 {
        last = raw(upstream, "POST", "/a2a", JSON, &send_body(2)).await;
        if last.0 == 403 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 403, "{}", last.1);
    assert_eq!(last.1["intention"], deny_id.as_str(), "{}", last.1);
    let out = sdk_client(upstream, &bundle);
    assert!(
        out["card"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("403")),
        "the card is refused after the deny: {out}"
    );
    assert!(!executor.log_text().contains("panicked"));
    assert!(!client.log_text().contains("panicked"));
}
