//! MCP and A2A decided in process by `RequireIntention`, end to end over real mTLS: an in-process
//! CA, a Rust MCP (and A2A) endpoint served by `agentmesh_sdk::serve` behind the layer, and
//! callers with their own SVIDs. The refusals are the sidecar's (same codes, same `data`), the
//! handler never sees what was refused, and lists and cards come back filtered.
//!
//! The official MCP Python SDK as the client of such an endpoint is in
//! `crates/agentmesh/tests/mcp.rs` (it needs a peer; these tests need none).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use agentmesh_proto::v1::{Intention, PolicySnapshot};
use agentmesh_sdk::testing::{Arrived, TestCa, toy_agent};
use agentmesh_sdk::{MtlsClient, PolicyState, PolicyWatch, RequireIntention};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

const SERVER: &str = "spiffe://td/tools";
const CLIENT: &str = "spiffe://td/executor";

/// One intention `CLIENT` → `SERVER` with `permissions`, as a policy snapshot.
fn state(permissions: Value) -> PolicyState {
    let spec = json!({
        "source": CLIENT,
        "destination": SERVER,
        "action": "allow",
        "permissions": permissions,
    });
    PolicyState::from_snapshot(
        &PolicySnapshot {
            revision: 1,
            intentions: vec![Intention {
                id: "tools-rule".into(),
                spec_json: spec.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &"td".parse().unwrap(),
    )
}

fn policy(permissions: Value) -> Arc<PolicyWatch> {
    let watch = PolicyWatch::new();
    watch.set(state(permissions));
    watch
}

/// The endpoint behind `RequireIntention`, served over mTLS; its address.
async fn start(ca: &TestCa, watch: Arc<PolicyWatch>, arrived: Arrived) -> SocketAddr {
    let layer = RequireIntention::new(watch, SERVER.parse().unwrap()).with_max_body(4096, 4096);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_sdk::serve(
        listener,
        ca.source(SERVER),
        toy_agent(arrived).layer(layer),
    ));
    addr
}

fn client(ca: &TestCa) -> MtlsClient {
    MtlsClient::pinned(ca.source(CLIENT), SERVER.parse().unwrap())
}

/// POSTs `body` with `headers`; the status and the answer (JSON, else null).
async fn post_raw(
    client: &MtlsClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = http::Request::post(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post_json(client: &MtlsClient, url: &str, body: Value) -> (u16, Value) {
    post_raw(client, url, &[JSON], body.to_string().into_bytes()).await
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
}

#[tokio::test]
async fn an_in_process_mcp_server_runs_only_the_allowed_tool_and_lists_only_it() {
    let ca = TestCa::new("td");
    let arrived = Arrived::default();
    let watch = policy(json!([{"mcp": {"tools": ["search"]}}]));
    let addr = start(&ca, watch, arrived.clone()).await;
    let url = format!("https://{addr}/mcp");
    let client = client(&ca);

    let (status, ok) = post_json(&client, &url, call(1, "search")).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["result"]["content"][0]["text"], "search ran", "{ok}");

    // The denied tool: the sidecar's JSON-RPC error, HTTP 200 with the request's id.
    let (status, no) = post_json(&client, &url, call(2, "delete_all")).await;
    assert_eq!(status, 200, "{no}");
    assert_eq!(no["id"], 2);
    assert_eq!(no["error"]["code"], agentmesh_sdk::mcp::DENIED);
    let message = no["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("denied by intentions"), "{no}");
    assert_eq!(no["error"]["data"]["intention"], "tools-rule");
    assert_eq!(no["error"]["data"]["source"], CLIENT);
    assert_eq!(no["error"]["data"]["destination"], SERVER);

    // tools/list is filtered to what this caller may call.
    let (status, list) = post_json(
        &client,
        &url,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search"], "{list}");

    // Housekeeping passes for the allowed pair.
    let (status, _) = post_json(
        &client,
        &url,
        json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}),
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(
        arrived.all(),
        ["tools/call search", "tools/list", "ping"],
        "the refused call must never reach the handler"
    );

    // Someone the intention does not name: the default deny, before any MCP reading.
    let other = MtlsClient::pinned(ca.source("spiffe://td/intruder"), SERVER.parse().unwrap());
    let (status, body) = post_json(&other, &url, call(5, "search")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "denied by intentions");
    assert_eq!(arrived.all().len(), 3);
}

/// (what, headers, body, expected HTTP status, expected JSON-RPC code)
type BadInput = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    u16,
    i64,
);

#[tokio::test]
async fn bad_mcp_input_is_refused_as_the_sidecar_refuses_it_and_reaches_nothing() {
    use agentmesh_sdk::mcp::{HEADER_MISMATCH, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
    let ca = TestCa::new("td");
    let arrived = Arrived::default();
    let watch = policy(json!([{"mcp": {"tools": ["*"]}}]));
    let addr = start(&ca, watch, arrived.clone()).await;
    let url = format!("https://{addr}/mcp");
    let client = client(&ca);
    let search = call(1, "search").to_string().into_bytes();
    let stateless = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "delete_all", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
    .to_string()
    .into_bytes();
    let cases: Vec<BadInput> = vec![
        ("malformed JSON", vec![JSON], b"{\"jsonrpc\":".to_vec(), 400, PARSE_ERROR),
        (
            "a duplicate key",
            vec![JSON],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#.to_vec(),
            400,
            PARSE_ERROR,
        ),
        (
            "a batch",
            vec![JSON],
            format!("[{}]", call(1, "search")).into_bytes(),
            400,
            INVALID_REQUEST,
        ),
        (
            "not JSON",
            vec![("content-type", "text/plain")],
            search.clone(),
            415,
            PARSE_ERROR,
        ),
        (
            "over the size limit",
            vec![JSON],
            call(1, &"x".repeat(5000)).to_string().into_bytes(),
            413,
            INVALID_REQUEST,
        ),
        (
            "an unknown method",
            vec![JSON],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/destroy"}"#.to_vec(),
            200,
            METHOD_NOT_FOUND,
        ),
        (
            "Mcp-Name disagreeing with the body",
            vec![
                JSON,
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "search"),
            ],
            stateless.clone(),
            400,
            HEADER_MISMATCH,
        ),
        (
            "a 2026-07-28 request without Mcp-Method",
            vec![JSON],
            stateless,
            400,
            HEADER_MISMATCH,
        ),
    ];
    for (what, headers, body, want_status, want_code) in cases {
        let (status, answer) = post_raw(&client, &url, &headers, body).await;
        assert_eq!(status, want_status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("agentmesh: "), "{what}: {answer}");
        assert_eq!(answer["error"]["data"]["intention"], "tools-rule", "{what}");
    }
    assert!(arrived.all().is_empty(), "{:?}", arrived.all());
}

#[tokio::test]
async fn an_in_process_a2a_agent_answers_only_allowed_methods_and_shows_only_their_skills() {
    use agentmesh_sdk::a2a::{DENIED, METHOD_NOT_FOUND};
    let ca = TestCa::new("td");
    let arrived = Arrived::default();
    let watch = policy(json!([{"a2a": {"methods": ["SendMessage", "GetExtendedAgentCard"]}}]));
    let addr = start(&ca, watch, arrived.clone()).await;
    let url = format!("https://{addr}/a2a");
    let client = client(&ca);
    let rpc =
        |id: u64, method: &str| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}});

    let (status, ok) = post_json(&client, &url, rpc(1, "SendMessage")).await;
    assert_eq!(status, 200, "{ok}");
    assert!(ok["result"]["task"].is_object(), "{ok}");

    let (status, no) = post_json(&client, &url, rpc(2, "GetTask")).await;
    assert_eq!(status, 200, "{no}");
    assert_eq!(no["error"]["code"], DENIED);
    assert_eq!(no["error"]["data"]["intention"], "tools-rule");

    let (_, unknown) = post_json(&client, &url, rpc(3, "message/send")).await;
    assert_eq!(unknown["error"]["code"], METHOD_NOT_FOUND, "{unknown}");

    // The extended card shows only the skill whose method this caller may use, unsigned.
    let (status, card) = post_json(&client, &url, rpc(4, "GetExtendedAgentCard")).await;
    assert_eq!(status, 200, "{card}");
    let skills: Vec<&str> = card["result"]["skills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(skills, ["ask"], "{card}");
    assert!(card["result"].get("signatures").is_none(), "{card}");

    assert_eq!(arrived.all(), ["SendMessage", "GetExtendedAgentCard"]);
}

#[tokio::test]
async fn every_in_process_decision_names_the_tool_or_method_for_the_access_log() {
    let ca = TestCa::new("td");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let watch = policy(json!([{"mcp": {"tools": ["search"]}}]));
    let layer =
        RequireIntention::new(watch, SERVER.parse().unwrap()).with_sink(Arc::new(move |d| {
            s.lock().unwrap().push(serde_json::to_value(d).unwrap())
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_sdk::serve(
        listener,
        ca.source(SERVER),
        toy_agent(Arrived::default()).layer(layer),
    ));
    let url = format!("https://{addr}/mcp");
    let client = client(&ca);
    post_json(&client, &url, call(1, "search")).await;
    post_json(&client, &url, call(2, "delete_all")).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (
            &seen[0]["decision"],
            &seen[0]["mcp_method"],
            &seen[0]["mcp_tool"]
        ),
        (&json!("allow"), &json!("tools/call"), &json!("search"))
    );
    assert_eq!(
        (
            &seen[1]["decision"],
            &seen[1]["mcp_tool"],
            &seen[1]["intention"]
        ),
        (&json!("deny"), &json!("delete_all"), &json!("tools-rule"))
    );
}

#[tokio::test]
async fn a_user_claim_rule_allows_one_user_and_refuses_another_in_process() {
    use agentmesh_sdk::delegation::{DELEGATION_HEADER, USER_TOKEN_HEADER, UserTokenIssuer};
    let ca = TestCa::new("td");
    let arrived = Arrived::default();
    let watch = policy(json!([
        {"mcp": {"tools": ["search"]}},
        {"mcp": {"tools": ["export"]}, "user": {"claims": {"groups": "finance"}}},
    ]));
    let layer = RequireIntention::new(watch, SERVER.parse().unwrap()).with_user_tokens(
        ca.source(SERVER),
        UserTokenIssuer {
            issuer: "spiffe://td/frontend".into(),
            audience: None,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_sdk::serve(
        listener,
        ca.source(SERVER),
        toy_agent(arrived.clone()).layer(layer),
    ));
    let url = format!("https://{addr}/mcp");
    let frontend = ca.source("spiffe://td/frontend");
    let executor = ca.source(CLIENT);
    let client = client(&ca);
    let export = call(1, "export").to_string().into_bytes();
    let mut answers = Vec::new();
    for (user, groups) in [
        ("alice", json!(["eng", "finance"])),
        ("bob", json!(["eng"])),
    ] {
        let token = agentmesh_sdk::testing::user_token(
            &frontend,
            json!({"sub": user, "aud": "td", "groups": groups}),
            300,
        );
        let link =
            agentmesh_sdk::delegation::add_link(&executor, &token, "", &SERVER.parse().unwrap())
                .unwrap();
        let headers = [
            JSON,
            (USER_TOKEN_HEADER, &token),
            (DELEGATION_HEADER, &link),
        ];
        answers.push(post_raw(&client, &url, &headers, export.clone()).await);
    }
    let (status, alice) = &answers[0];
    assert_eq!(*status, 200, "{alice}");
    assert_eq!(
        alice["result"]["content"][0]["text"], "export ran",
        "{alice}"
    );
    let (status, bob) = &answers[1];
    assert_eq!(*status, 200, "{bob}");
    assert_eq!(bob["error"]["code"], agentmesh_sdk::mcp::DENIED, "{bob}");
    assert!(
        bob["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has no groups=finance")),
        "{bob}"
    );
    // No token: refused, and said so.
    let (_, none) = post_raw(&client, &url, &[JSON], export).await;
    assert!(
        none["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no verified user token")),
        "{none}"
    );
    assert_eq!(
        arrived.all(),
        ["tools/call export"],
        "only alice's export arrived"
    );
}

/// Opens an A2A streaming call and returns its open SSE body.
async fn open_stream(
    client: &MtlsClient,
    url: &str,
    id: u64,
    method: &str,
) -> hyper::body::Incoming {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"id": "t1"}});
    let req = http::Request::post(url)
        .header(JSON.0, JSON.1)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{method}");
    resp.into_body()
}

/// The next data frame as text; `None` once the stream has ended.
async fn next_text(stream: &mut hyper::body::Incoming) -> Option<String> {
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

#[tokio::test]
async fn a_change_denying_one_streaming_method_ends_its_open_streams_in_process() {
    let ca = TestCa::new("td");
    let methods = |m: &[&str]| json!([{"a2a": {"methods": m}}]);
    let watch = policy(methods(&["SendStreamingMessage", "SubscribeToTask"]));
    let addr = start(&ca, watch.clone(), Arrived::default()).await;
    let url = format!("https://{addr}/a2a");
    let client = client(&ca);
    let mut streaming = open_stream(&client, &url, 1, "SendStreamingMessage").await;
    let mut subscribed = open_stream(&client, &url, 2, "SubscribeToTask").await;
    for s in [&mut streaming, &mut subscribed] {
        assert!(
            next_text(s)
                .await
                .expect("a first event")
                .contains("statusUpdate")
        );
    }
    // The same intention, now without SendStreamingMessage.
    watch.set(state(methods(&["SubscribeToTask"])));
    while next_text(&mut streaming).await.is_some() {}
    for _ in 0..3 {
        let more = next_text(&mut subscribed).await.expect("still open");
        assert!(more.contains("statusUpdate"), "{more}");
    }
}
