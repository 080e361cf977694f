//! MCP through real sidecars: an MCP server written with the official MCP Python SDK
//! (tests/py/mcp_server.py, tools `search`, `delete_all` and `export`) behind an
//! `agentmesh proxy run`, and the SDK's own Streamable HTTP client (tests/py/mcp_client.py)
//! calling it through another, with a real server and node. Intentions allow `search` to
//! the agent, and `export` only for users whose verified user token says `groups: finance`.
//!
//! The server logs every request body that reaches it, so the test shows that refused calls
//! and bad input never arrived. Needs the scripts/test venv (`mcp`, pinned in
//! scripts/requirements-test.txt); nothing is skipped.
//!
//! The same client also speaks mTLS itself to a Rust MCP endpoint that decides in process
//! (`agentmesh_sdk::RequireIntention` around `agentmesh_sdk::testing::toy_agent`, no sidecar).

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh::*;
use serde_json::{Value, json};
use sidecar::*;
use tokio::net::TcpStream;

fn py(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// The MCP server's request log: one JSON object per request that reached it.
fn arrived(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("server log line is JSON"))
        .collect()
}

/// Runs the SDK client through the client sidecar's upstream listener.
fn sdk_client(upstream: SocketAddr, mode: &str) -> Value {
    sdk_client_at(&format!("http://{upstream}/mcp"), mode, &[])
}

/// Runs the SDK client against `url`; with `tls` (SVID chain, key and bundle PEM files) it
/// speaks mTLS itself.
fn sdk_client_at(url: &str, mode: &str, tls: &[PathBuf]) -> Value {
    let out = Command::new(python())
        .arg(py("mcp_client.py"))
        .arg(url)
        .arg(mode)
        .args(tls)
        .stdin(Stdio::null())
        .output()
        .expect("run mcp_client.py");
    assert!(
        out.status.success(),
        "mcp_client.py {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mcp_client.py {mode} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One raw POST over HTTP/1.1 through the client sidecar: (status, parsed JSON body).
async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("http://tools/mcp")
        .header("host", "tools")
        .header("accept", "application/json, text/event-stream");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    // An SSE answer carries its JSON on a data line.
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    (
        status,
        serde_json::from_str(json).unwrap_or_else(|_| json!({"raw": text})),
    )
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// (what, headers, body, expected HTTP status, expected JSON-RPC code)
type BadInput = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    u16,
    i64,
);

fn call_body(name: &str, version: Option<&str>) -> Vec<u8> {
    let mut params = json!({"name": name, "arguments": {}});
    if let Some(v) = version {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": v,
            "io.modelcontextprotocol/clientCapabilities": {}
        });
    }
    serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}),
    )
    .expect("json")
}

/// Fails the test, naming what is missing, unless the venv has the official MCP SDK (a
/// server that cannot start would otherwise only show as a timeout).
fn require_mcp_sdk() {
    let out = Command::new(python())
        .args(["-c", "import mcp"])
        .output()
        .expect("run the test venv's python");
    assert!(
        out.status.success(),
        "the official MCP SDK (`mcp`, pinned in scripts/requirements-test.txt) is missing from \
         {}; run the suite through scripts/test, which installs it: {}",
        python().display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_sdk_reaches_only_the_allowed_tool_and_bad_input_reaches_nothing() {
    require_mcp_sdk();
    let mesh = Mesh::start();
    register(&mesh, "agent", None);
    register(&mesh, "tools", None);
    let port = free_port();
    let server_log = mesh.dir.join("mcp-server.jsonl");
    let server_out = mesh.dir.join("mcp-server.out");
    let _server = Proc(
        Command::new(python())
            .arg(py("mcp_server.py"))
            .arg(port.to_string())
            .arg(&server_log)
            .stdout(std::fs::File::create(&server_out).expect("out"))
            .stderr(std::fs::File::create(mesh.dir.join("mcp-server.err")).expect("err"))
            .spawn()
            .expect("start mcp_server.py"),
    );
    let app: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually("the MCP server listens", || async {
        TcpStream::connect(app).await.is_ok()
    })
    .await;
    let listen = loopback_addr();
    let tools = start_proxy_from_toml(
        &mesh,
        "tools",
        &format!(
            "service = \"tools\"\n[inbound]\nlisten = \"{listen}\"\napp = \"{app}\"\nprotocol = \"http\"\nuser_token_issuer = \"frontend\"\n"
        ),
        Some(listen),
        Vec::new(),
    )
    .await;
    let agent = start_proxy(&mesh, "agent", None, &[("tools", "http")]).await;
    // search and slow for every caller; export only for users in finance. (A wildcard source,
    // so that an exact agent -> tools intention can later take over without a gap.)
    let file = mesh.dir.join("intention.json");
    std::fs::write(
        &file,
        json!({"source": "*", "destination": "tools", "action": "allow", "permissions": [
            {"mcp": {"tools": ["search", "slow"]}},
            {"mcp": {"tools": ["export"]}, "user": {"claims": {"groups": "finance"}}}
        ]})
        .to_string(),
    )
    .expect("write intention");
    let created = mesh.cli_ok(&[
        "intention",
        "create",
        "--file",
        file.to_str().expect("utf-8"),
        "-o",
        "json",
    ]);
    let intention: Value = serde_json::from_str(&created).expect("json");
    let intention_id = intention["id"].as_str().expect("id").to_owned();
    let upstream = agent.upstreams[0];
    // Policy and the catalog reach both sidecars. Raw requests here are 2026-07-28 ones,
    // which need no session.
    let list = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}}))
    .expect("json");
    let list_headers = [
        JSON,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
    ];
    let mut last = (0, Value::Null);
    for _ in 0..600 {
        last = post(upstream, &list_headers, list.clone()).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        last.0,
        200,
        "tools/list never passed: {}\ntools sidecar:\n{}",
        last.1,
        tools.log_text()
    );
    // The raw answer (SSE from this server) is filtered too.
    let names: Vec<&str> = last.1["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["search", "slow"], "{}", last.1);

    // === the SDK, in both protocol eras ===
    for mode in ["legacy", "2026-07-28"] {
        let before = arrived(&server_log).len();
        let out = sdk_client(upstream, mode);
        assert_eq!(out["tools"], json!(["search", "slow"]), "{mode}: {out}");
        assert_eq!(out["search"]["text"], "found: mesh", "{mode}: {out}");
        assert_eq!(out["search_again"]["text"], "found: again", "{mode}: {out}");
        for denied in ["delete_all", "export"] {
            let err = out[denied]["error"].as_str().unwrap_or_else(|| {
                panic!(
                    "{mode}: {denied} was not refused: {out}\ntools sidecar log:\n{}",
                    tools.log_text()
                )
            });
            assert!(
                err.contains(&intention_id) && err.contains("denied by intentions"),
                "{mode}: {denied}: {err}"
            );
            if denied == "export" {
                assert!(err.contains("no verified user token"), "{mode}: {err}");
            }
        }
        let seen = arrived(&server_log);
        let calls: Vec<&str> = seen[before..]
            .iter()
            .filter_map(|r| r["body"].as_str())
            .filter(|b| b.contains("tools/call"))
            .collect();
        assert_eq!(
            calls.len(),
            2,
            "{mode}: only the two searches arrive: {calls:?}"
        );
        assert!(
            calls.iter().all(|b| b.contains("\"search\"")),
            "{mode}: {calls:?}"
        );
    }
    // Nothing about the refused tools ever reached the server.
    assert!(
        arrived(&server_log).iter().all(|r| !r["body"]
            .as_str()
            .unwrap_or_default()
            .contains("delete_all")),
        "delete_all reached the MCP server"
    );

    // === access log: one line per tool call, with the tool, decision, intention, caller ===
    let lines = tools.access();
    let line = |tool: &str, decision: &str| {
        lines
            .iter()
            .find(|l| l["mcp_tool"] == tool && l["decision"] == decision)
            .unwrap_or_else(|| panic!("no {decision} line for {tool} in {lines:?}"))
            .clone()
    };
    let denied = line("delete_all", "deny");
    assert_eq!(denied["mcp_method"], "tools/call");
    assert_eq!(denied["intention"], intention_id.as_str());
    assert_eq!(denied["source"], id("agent").as_str());
    assert_eq!(line("search", "allow")["intention"], intention_id.as_str());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["mcp_tool"] == "delete_all")
            .count(),
        2,
        "one line per call, in both eras"
    );

    // === a 2026-07-28 request whose headers name another call than its body ===
    let before = arrived(&server_log).len();
    let v = Some("2026-07-28");
    let stateless = [
        JSON,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
    ];
    // The header names the allowed tool, the body the refused one: a proxy that trusted the
    // header would let delete_all through.
    let mut h = stateless.to_vec();
    h.push(("mcp-name", "search"));
    let (status, body) = post(upstream, &h, call_body("delete_all", v)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Mcp-Name") && m.contains("delete_all")),
        "{body}"
    );
    // The method header lies.
    let mut h = stateless.to_vec();
    h[2] = ("mcp-method", "tools/list");
    h.push(("mcp-name", "search"));
    let (status, body) = post(upstream, &h, call_body("search", v)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!(-32020)),
        "{body}"
    );
    // A 2026-07-28 call without Mcp-Name.
    let (status, body) = post(upstream, &stateless, call_body("search", v)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!(-32020)),
        "{body}"
    );
    // The control: matching headers, allowed tool.
    let mut h = stateless.to_vec();
    h.push(("mcp-name", "search"));
    let (status, body) = post(upstream, &h, call_body("search", v)).await;
    assert_eq!(status, 200, "{body}");

    // === bad input: each a clear error, nothing forwarded ===
    let big = {
        let mut b = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"query":""#.to_vec();
        b.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
        b.extend_from_slice(br#""}}}"#);
        b
    };
    let cases: Vec<BadInput> = vec![
        ("malformed JSON", vec![JSON], b"{\"jsonrpc\":\"2.0\",".to_vec(), 400, -32700),
        (
            "a duplicate key",
            vec![JSON],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#.to_vec(),
            400,
            -32700,
        ),
        ("an oversized body", vec![JSON], big, 413, -32600),
        (
            "an unknown method",
            vec![JSON],
            br#"{"jsonrpc":"2.0","id":1,"method":"admin/wipe"}"#.to_vec(),
            200,
            -32601,
        ),
        (
            "a batch",
            vec![JSON],
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all"}}]"#.to_vec(),
            400,
            -32600,
        ),
        (
            "a non-JSON body",
            vec![("content-type", "text/plain")],
            b"tools/call delete_all".to_vec(),
            415,
            -32700,
        ),
        (
            "a tool name spelt another way",
            vec![JSON],
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search \"}}".as_bytes().to_vec(),
            200,
            -32003,
        ),
    ];
    for (what, headers, body, want_status, want_code) in cases {
        let (status, answer) = post(upstream, &headers, body).await;
        assert_eq!(status, want_status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("agentmesh sidecar") || message.starts_with("denied by intentions"),
            "{what}: {answer}"
        );
    }
    let after = arrived(&server_log);
    let new: Vec<&Value> = after[before..].iter().collect();
    assert_eq!(new.len(), 1, "only the control call arrived: {new:?}");

    // === the human behind the call: user claims from a verified user token ===
    // Tokens as the frontend mints them, signed with a real `frontend` SVID of this mesh, and
    // the link the agent adds, signed with the agent's: this test process is entitled to both.
    let uid = format!("unix:uid:{}", my_uid());
    mesh.entry("/ns/default/sa/frontend", &[&uid], None);
    mesh.entry("/ns/default/sa/agent", &[&uid], None);
    let frontend = source_for(&mesh, &id("frontend")).await;
    let agent_svid = source_for(&mesh, &id("agent")).await;
    let tools_id: agentmesh_spiffe::SpiffeId = id("tools").parse().expect("id");
    let mut answers = Vec::new();
    for (user, groups) in [
        ("alice", json!(["eng", "finance"])),
        ("bob", json!(["eng"])),
    ] {
        let token = user_token(&frontend, user, groups);
        let link =
            agentmesh_sdk::delegation::add_link(&agent_svid, &token, "", &tools_id).expect("link");
        answers.push(
            post(
                upstream,
                &export_headers(Some(&token), Some(&link)),
                call_body("export", v),
            )
            .await,
        );
    }
    let (status, alice) = &answers[0];
    assert_eq!(*status, 200, "{alice}");
    assert!(
        alice["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("exported")),
        "alice is in finance: {alice}\ntools sidecar:\n{}",
        tools.log_text()
    );
    let (status, bob) = &answers[1];
    assert_eq!(*status, 200, "{bob}");
    assert_eq!(bob["error"]["code"], -32003, "{bob}");
    let why = bob["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("has no groups=finance"), "{bob}");
    // No token; and a token with no link, which the agent cannot present as its own.
    let (_, none) = post(
        upstream,
        &export_headers(None, None),
        call_body("export", v),
    )
    .await;
    assert!(
        none["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("carries no verified user token")),
        "{none}"
    );
    let token = user_token(&frontend, "alice", json!(["finance"]));
    let (_, unlinked) = post(
        upstream,
        &export_headers(Some(&token), None),
        call_body("export", v),
    )
    .await;
    assert!(
        unlinked["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the user token was not accepted")),
        "{unlinked}"
    );
    let lines = tools.access();
    assert!(
        lines
            .iter()
            .any(|l| l["mcp_tool"] == "export" && l["decision"] == "allow" && l["user"] == "alice"),
        "{lines:?}"
    );
    let exported: Vec<Value> = arrived(&server_log)
        .into_iter()
        .filter(|r| r["body"].as_str().is_some_and(|b| b.contains("\"export\"")))
        .collect();
    assert_eq!(
        exported.len(),
        1,
        "only alice's export arrived: {exported:?}"
    );

    // === revoking one tool ends its open stream; the pair stays allowed ===
    let slow = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "slow", "arguments": {}, "_meta": {"progressToken": "p1",
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut h = stateless.to_vec();
    h.push(("mcp-name", "slow"));
    let mut stream = open_stream(upstream, "POST", &h, slow.to_string().into_bytes()).await;
    let mut seen = String::new();
    let first = tokio::time::timeout(PATIENCE, stream.frame())
        .await
        .expect("a first progress event");
    if let Some(Ok(f)) = first
        && let Ok(d) = f.into_data()
    {
        seen.push_str(&String::from_utf8_lossy(&d));
    }
    assert!(seen.contains("notifications/progress"), "{seen}");
    // An exact agent -> tools intention beats the wildcard one and leaves slow out.
    std::fs::write(
        &file,
        json!({"source": "agent", "destination": "tools", "action": "allow", "permissions": [
            {"mcp": {"tools": ["search"]}}
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
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(f)) = stream.frame().await {
            if let Ok(d) = f.into_data() {
                seen.push_str(&String::from_utf8_lossy(&d));
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the slow tool's stream stayed open after slow was denied"
    );
    assert!(
        !seen.contains("slow is done"),
        "the stream ran to its end: {seen}"
    );
    assert!(
        tools.log_text().contains("closing an MCP stream"),
        "{}",
        tools.log_text()
    );
    let mut h = stateless.to_vec();
    h.push(("mcp-name", "search"));
    let (status, body) = post(upstream, &h, call_body("search", v)).await;
    assert_eq!(status, 200, "the pair stays allowed: {body}");
    assert!(body.get("result").is_some(), "{body}");

    // === revocation: deleting the allow closes an open SSE stream ===
    let session = legacy_session(upstream).await;
    let mut stream = open_get_stream(upstream, &session).await;
    // The stream is open: nothing has ended it.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), stream.frame())
            .await
            .is_err(),
        "the SSE stream ended before the revocation"
    );
    mesh.cli_ok(&["intention", "delete", "agent", "tools"]);
    mesh.cli_ok(&["intention", "delete", "*", "tools"]);
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the SSE stream stayed open after the allow was deleted"
    );
    assert!(
        tools.log_text().contains("closing a connection"),
        "{}",
        tools.log_text()
    );
    assert!(!tools.log_text().contains("panicked"));
    assert!(!agent.log_text().contains("panicked"));
}

/// The headers of a 2026-07-28 `tools/call export`, with a user token and links if given.
fn export_headers<'a>(token: Option<&'a str>, links: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        JSON,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "export"),
    ];
    if let Some(t) = token {
        h.push(("x-agentmesh-user-token", t));
    }
    if let Some(l) = links {
        h.push(("x-agentmesh-delegation", l));
    }
    h
}

async fn source_for(mesh: &Mesh, id: &str) -> std::sync::Arc<agentmesh_sdk::X509Source> {
    let id: agentmesh_spiffe::SpiffeId = id.parse().expect("spiffe id");
    agentmesh_sdk::X509Source::connect_as(&mesh.socket(), Some(&id), PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("no SVID for {id}: {e}"))
}

/// A user token in the frontend's shape, signed with `frontend`'s SVID, for `sub` in `groups`.
fn user_token(frontend: &agentmesh_sdk::X509Source, sub: &str, groups: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({
        "iss": id("frontend"), "sub": sub, "aud": TD, "iat": now, "exp": now + 300,
        "jti": format!("{sub}-{now}-{}", free_port()), "groups": groups,
    });
    agentmesh_sdk::jws::sign(frontend, claims.to_string().as_bytes()).expect("sign")
}

/// A 2025-11-25 session opened by hand: initialize, then initialized. Returns its id.
async fn legacy_session(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let req = hyper::Request::builder()
        .method("POST")
        .uri("http://tools/mcp")
        .header("host", "tools")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from(init.to_string())))
        .expect("request");
    let resp = send.send_request(req).await.expect("initialize");
    assert_eq!(resp.status(), 200);
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    resp.into_body().collect().await.expect("body");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, body) = post(
        addr,
        &[
            JSON,
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        note.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    session
}

/// The session's standalone SSE stream (GET), open.
async fn open_get_stream(addr: SocketAddr, session: &str) -> hyper::body::Incoming {
    let headers = [
        ("mcp-session-id", session),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    open_stream(addr, "GET", &headers, Vec::new()).await
}

/// A request whose answer is an SSE stream, returned open.
async fn open_stream(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> hyper::body::Incoming {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri("http://tools/mcp")
        .header("host", "tools")
        .header("accept", "application/json, text/event-stream");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    resp.into_body()
}

// === In process: the SDK's RequireIntention, no sidecar ===

/// PEM files of `source`'s SVID chain, key and bundle, for a client outside Rust.
fn pem_files(dir: &Path, source: &agentmesh_sdk::X509Source) -> Vec<PathBuf> {
    let ctx = source.current();
    let pems = |certs: &[rustls::pki_types::CertificateDer<'static>]| -> String {
        certs
            .iter()
            .map(|c| agentmesh_tls::pem_encode("CERTIFICATE", c))
            .collect()
    };
    let files = [
        ("svid.pem", pems(&ctx.svid.chain)),
        (
            "key.pem",
            agentmesh_tls::pem_encode("PRIVATE KEY", ctx.svid.private_key_pkcs8_der()),
        ),
        ("bundle.pem", pems(&ctx.roots)),
    ];
    files
        .into_iter()
        .map(|(name, pem)| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_reaches_only_the_allowed_tool_of_an_in_process_server() {
    use agentmesh_sdk::testing::{Arrived, TestCa, toy_agent};
    require_mcp_sdk();
    let ca = TestCa::new("td");
    let (client, server) = ("spiffe://td/executor", "spiffe://td/tools");
    let spec = json!({"source": client, "destination": server, "action": "allow",
        "permissions": [{"mcp": {"tools": ["search"]}}]});
    let policy = agentmesh_sdk::PolicyWatch::new();
    policy.set(agentmesh_sdk::PolicyState::from_snapshot(
        &agentmesh_proto::v1::PolicySnapshot {
            revision: 1,
            intentions: vec![agentmesh_proto::v1::Intention {
                id: "tools-rule".into(),
                spec_json: spec.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &"td".parse().expect("trust domain"),
    ));
    let arrived = Arrived::default();
    let app = toy_agent(arrived.clone()).layer(agentmesh_sdk::RequireIntention::new(
        policy,
        server.parse().expect("id"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(agentmesh_sdk::serve(listener, ca.source(server), app));
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = pem_files(dir.path(), &ca.source(client));
    let url = format!("https://{addr}/mcp");
    let out = tokio::task::spawn_blocking(move || sdk_client_at(&url, "legacy", &tls))
        .await
        .expect("client");

    assert_eq!(out["tools"], json!(["search"]), "{out}");
    assert_eq!(out["search"]["text"], "search ran", "{out}");
    for refused in ["delete_all", "export"] {
        let error = out[refused]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("denied by intentions") && error.contains("tools-rule"),
            "{refused}: {out}"
        );
    }
    assert_eq!(out["search_again"]["text"], "search ran", "{out}");
    let arrived = arrived.all();
    assert!(arrived.contains(&"initialize".to_owned()), "{arrived:?}");
    assert_eq!(
        arrived
            .iter()
            .filter(|a| a.starts_with("tools/call"))
            .collect::<Vec<_>>(),
        ["tools/call search", "tools/call search"],
        "only the allowed tool reached the handler"
    );
}
