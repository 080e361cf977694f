//! A2A through real sidecars: the built-in executor agent (`agentmesh agent run`) behind an
//! `agentmesh proxy run`, with a real gateway (offline provider) behind another, a real server
//! and node, and the official A2A Python SDK (`a2a-sdk`, tests/py/a2a_client.py) as the
//! client through a third sidecar. The client fetches the agent card and verifies its
//! signature with the SDK's verifier (the x5c chain checked against the mesh's bundle), sends
//! a message where `SendMessage` is allowed, and is refused where it is not, also after a
//! live deny. Needs the scripts/test venv (`a2a-sdk`, pinned in
//! scripts/requirements-test.txt); nothing is skipped.
//!
//! Streams: the SDK's toy A2A agent (`agentmesh_sdk::testing::toy_agent`, endless
//! `SendStreamingMessage`/`SubscribeToTask` streams) behind a sidecar shows that a policy
//! change denying one streaming method ends that method's open streams and no other.

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

/// Opens an A2A streaming call through `addr` (a sidecar's upstream listener) and returns its
/// SSE body, open.
async fn open_a2a_stream(addr: SocketAddr, id: u64, method: &str) -> hyper::body::Incoming {
    use http_body_util::Full;
    let params = match method {
        "SubscribeToTask" => json!({"id": "t1"}),
        _ => {
            json!({"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "go"}]}})
        }
    };
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::post("http://agent/a2a")
        .header("host", "agent")
        .header("content-type", JSON)
        .header("accept", "text/event-stream")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let resp = send.send_request(req).await.expect("stream");
    assert_eq!(resp.status(), 200, "{method}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "{method}: {ct}");
    resp.into_body()
}

/// The next data frame of an open stream, as text; `None` once the stream has ended.
async fn next_text(stream: &mut hyper::body::Incoming) -> Option<String> {
    use http_body_util::BodyExt as _;
    loop {
        match stream.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Some(String::from_utf8_lossy(&d).into_owned());
                }
            }
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denying_one_streaming_method_ends_its_open_streams_and_only_those() {
    use agentmesh_sdk::testing::{Arrived, toy_agent};
    let mesh = Mesh::start();
    for s in ["client", "agent"] {
        register(&mesh, s, None);
    }
    // The agent: the SDK's toy A2A endpoint (endless status-update streams), plain HTTP
    // behind its sidecar.
    let app_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let local: agentmesh_sdk::LocalAddr = app_addr.to_string().parse().expect("addr");
    let listener = agentmesh_sdk::LocalListener::bind(&local)
        .await
        .expect("bind the toy agent");
    let arrived = Arrived::default();
    let _app = agentmesh_sdk::http::Serving::spawn(
        listener,
        local,
        toy_agent(arrived.clone()),
        "toy agent",
        Default::default(),
    );
    let agent = start_proxy(&mesh, "agent", Some((app_addr, "http")), &[]).await;
    let client = start_proxy(&mesh, "client", None, &[("agent", "http")]).await;
    let upstream = client.upstreams[0];

    // Every caller may send and stream; an exact client -> agent intention comes later.
    let file = mesh.dir.join("streams.json");
    std::fs::write(
        &file,
        json!({"source": "*", "destination": "agent", "action": "allow", "permissions": [
            {"a2a": {"methods": ["SendMessage", "SendStreamingMessage", "SubscribeToTask"]}}
        ]})
        .to_string(),
    )
    .expect("write intention");
    mesh.cli_ok(&[
        "intention",
        "create",
        "--file",
        file.to_str().expect("utf-8"),
    ]);
    let mut last = (0, Value::Null);
    for _ in 0..600 {
        last = raw(upstream, "POST", "/a2a", JSON, &send_body(1)).await;
        if last.0 == 200 && last.1.get("result").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(last.1.get("result").is_some(), "{}", last.1);

    let mut streaming = open_a2a_stream(upstream, 2, "SendStreamingMessage").await;
    let mut subscribed = open_a2a_stream(upstream, 3, "SubscribeToTask").await;
    for s in [&mut streaming, &mut subscribed] {
        let first = next_text(s).await.expect("a first event");
        assert!(first.contains("statusUpdate"), "{first}");
    }

    // The exact intention beats the wildcard and leaves SendStreamingMessage out.
    mesh.cli_ok(&[
        "intention",
        "create",
        "client",
        "agent",
        "--action",
        "allow",
        "--a2a-method",
        "SendMessage",
        "--a2a-method",
        "SubscribeToTask",
    ]);
    // The denied method's stream ends (its events stop coming)...
    while next_text(&mut streaming).await.is_some() {}
    // ...while the allowed method's stream, on the same pair, keeps delivering.
    for _ in 0..3 {
        let more = next_text(&mut subscribed)
            .await
            .expect("SubscribeToTask's stream is still open");
        assert!(more.contains("statusUpdate"), "{more}");
    }
    assert!(
        agent.log_text().contains("closing an A2A stream"),
        "{}",
        agent.log_text()
    );
    // The pair stays allowed; a new streaming call is refused with the intention named.
    let (status, ok) = raw(upstream, "POST", "/a2a", JSON, &send_body(4)).await;
    assert_eq!(status, 200, "{ok}");
    assert!(ok.get("result").is_some(), "{ok}");
    let again = json!({"jsonrpc": "2.0", "id": 5, "method": "SendStreamingMessage",
        "params": {"message": {"messageId": "m2", "role": "ROLE_USER", "parts": [{"text": "go"}]}}});
    let (status, no) = raw(upstream, "POST", "/a2a", JSON, again.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{no}");
    assert_eq!(no["error"]["code"], agentmesh_sdk::a2a::DENIED, "{no}");
    assert_eq!(
        arrived
            .all()
            .iter()
            .filter(|m| *m == "SendStreamingMessage")
            .count(),
        1,
        "the refused streaming call never reached the agent"
    );
    assert!(!agent.log_text().contains("panicked"));
    assert!(!client.log_text().contains("panicked"));
}
