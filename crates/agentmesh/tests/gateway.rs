//! The LLM gateway behind the mesh, against real processes: `agentmesh server run`, `node run`,
//! `gateway run` (offline provider) and one `agentmesh proxy run` per service. The clients are
//! the official `openai` and `ollama` Python packages (installed by scripts/test), pointed at
//! a caller's local outbound proxy port exactly as an agent would use them.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use mesh::*;
use serde_json::Value;
use sidecar::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn llm_clients_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/llm_clients.py")
}

/// Runs tests/py/llm_clients.py and parses the JSON it prints.
fn py(args: &[&str]) -> Value {
    let out = std::process::Command::new(python())
        .arg(llm_clients_py())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run llm_clients.py (scripts/test installs openai and ollama)");
    assert!(
        out.status.success(),
        "llm_clients.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "llm_clients.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One `agentmesh gateway run`, its audit lines on stdout.
struct GatewayProc {
    _proc: Proc,
    audit: PathBuf,
}

impl GatewayProc {
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line ({e}): {l}")))
            .collect()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }
}

/// Starts the gateway on `listen` (`unix:///path` behind its proxy, or `ip:port`).
async fn start_gateway(mesh: &Mesh, listen: &str) -> GatewayProc {
    let config = mesh.dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "{listen}"
[[provider]]
name = "local"
kind = "offline"
[[model]]
name = "llama3.2"
providers = ["local"]
[[model]]
name = "big-model"
providers = ["local"]
[[caller]]
id = "executor"
models = ["llama3.2"]
[[caller]]
id = "spender"
models = ["*"]
tokens_per_window = 20
window = "1h"
"#
        ),
    )
    .expect("write gateway.toml");
    let audit = mesh.dir.join("gateway.audit.jsonl");
    let log = mesh.dir.join("gateway.log");
    let child = mesh
        .command()
        .args(["gateway", "run", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&audit).expect("audit file"))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn agentmesh gateway run");
    let proc = Proc(child);
    eventually("the gateway listens", || async {
        match listen.strip_prefix("unix://") {
            Some(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            None => TcpStream::connect(listen).await.is_ok(),
        }
    })
    .await;
    GatewayProc { _proc: proc, audit }
}

/// A raw HTTP/1.1 POST through `addr`, for bodies no client library would send.
async fn raw_post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    raw_post_with(addr, path, &[], body).await
}

/// [`raw_post`] with extra header lines.
async fn raw_post_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked or not, the JSON object is the one line that starts with '{'.
    let json = body
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The whole path for the official clients: executor's outbound port → executor's proxy ═mTLS═▶
/// gateway's proxy (intention, XFCC) → gateway (policy, DLP, offline provider, audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_clients_work_through_the_mesh_and_refusals_use_their_error_shapes() {
    let mesh = Mesh::start();
    for s in ["gateway", "executor", "spender", "planner"] {
        register(&mesh, s, None);
    }
    // Behind its proxy on a Unix socket, the one listener where the gateway trusts XFCC.
    let gw_listen = format!("unix://{}", mesh.dir.join("gateway.sock").display());
    let gw = start_gateway(&mesh, &gw_listen).await;
    let _gw_proxy = start_proxy_to(
        &mesh,
        "gateway",
        Some((gw_listen.clone(), "http")),
        &[],
        &[],
    )
    .await;
    let executor = start_proxy(&mesh, "executor", None, &[("gateway", "http")]).await;
    let spender = start_proxy(&mesh, "spender", None, &[("gateway", "http")]).await;
    let planner = start_proxy(&mesh, "planner", None, &[("gateway", "http")]).await;
    eventually("the catalog lists the gateway", || async {
        catalog_size(&mesh).await >= 1
    })
    .await;
    mesh.cli_ok(&[
        "intention",
        "create",
        "executor",
        "gateway",
        "--action",
        "allow",
    ]);
    mesh.cli_ok(&[
        "intention",
        "create",
        "spender",
        "gateway",
        "--action",
        "allow",
    ]);

    let exec_port = executor.upstreams[0];
    let openai_url = format!("http://{exec_port}/v1");
    let ollama_host = format!("http://{exec_port}");
    // Intentions reach the proxies within a second; wait for the first allowed call.
    eventually("executor reaches the gateway", || async {
        raw_post(
            exec_port,
            "/api/chat",
            r#"{"model":"llama3.2","messages":[{"role":"user","content":"ping"}],"stream":false}"#,
        )
        .await
        .0 == 200
    })
    .await;

    // OpenAI client: chat, streaming, model listing (only what executor may use).
    let o = py(&["openai", &openai_url, "llama3.2", "hello through the mesh"]);
    assert!(
        o["chat"].as_str().unwrap().contains("no LLM was called"),
        "{o}"
    );
    assert!(
        o["chat"]
            .as_str()
            .unwrap()
            .contains("user: hello through the mesh"),
        "{o}"
    );
    assert_eq!(o["stream"], o["chat"], "the stream carries the same text");
    assert!(o["chunks"].as_u64().unwrap() > 3, "{o}");
    assert_eq!(o["models"], serde_json::json!(["llama3.2"]));

    // Ollama client: chat, streaming, generate, list.
    let l = py(&["ollama", &ollama_host, "llama3.2", "hello ollama"]);
    assert!(
        l["chat"].as_str().unwrap().contains("user: hello ollama"),
        "{l}"
    );
    assert_eq!(l["stream"], l["chat"]);
    assert!(l["chunks"].as_u64().unwrap() > 3, "{l}");
    assert!(
        l["generate"]
            .as_str()
            .unwrap()
            .contains("user: hello ollama"),
        "{l}"
    );
    assert_eq!(l["models"], serde_json::json!(["llama3.2"]));

    // A model the caller may not use: 403 in each client's error shape.
    let e = py(&["openai-error", &openai_url, "big-model", "x"]);
    assert_eq!(e["status"], 403, "{e}");
    assert_eq!(e["class"], "PermissionDeniedError", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("may not use model"),
        "{e}"
    );
    let e = py(&["ollama-error", &ollama_host, "big-model", "x"]);
    assert_eq!(e["status"], 403, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("may not use model"),
        "{e}"
    );

    // A spent budget: the first call (inside the budget) goes over it, the next gets 429.
    let spender_url = format!("http://{}/v1", spender.upstreams[0]);
    assert_eq!(
        py(&["openai-error", &spender_url, "big-model", "spend it"])["status"],
        200
    );
    let e = py(&["openai-error", &spender_url, "big-model", "again"]);
    assert_eq!(e["status"], 429, "{e}");
    assert_eq!(e["class"], "RateLimitError", "{e}");
    let e = py(&[
        "ollama-error",
        &format!("http://{}", spender.upstreams[0]),
        "big-model",
        "again",
    ]);
    assert_eq!(e["status"], 429, "{e}");

    // A caller with no intention is refused at the gateway's proxy: nothing reaches the gateway.
    let before = gw.audit().len();
    let e = py(&[
        "openai-error",
        &format!("http://{}/v1", planner.upstreams[0]),
        "llama3.2",
        "x",
    ]);
    assert_eq!(e["status"], 403, "{e}");
    let audit = gw.audit();
    assert_eq!(
        audit.len(),
        before,
        "the planner's call reached the gateway"
    );
    assert!(
        audit
            .iter()
            .all(|l| !l["caller"].as_str().unwrap_or("").ends_with("/planner")),
        "planner in the audit log"
    );

    // Malformed JSON: 400 in each API's error shape.
    let (status, body) = raw_post(exec_port, "/v1/chat/completions", "{").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{body}"
    );
    let (status, body) = raw_post(exec_port, "/api/chat", "not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("invalid JSON"),
        "{body}"
    );

    // DLP: an e-mail address, a card number and an AWS key reach the provider redacted; the
    // audit line counts three findings and holds none of the values.
    let secrets = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "AKIAIOSFODNN7EXAMPLE",
    ];
    let prompt = format!(
        "mail {} and charge {} using {}",
        secrets[0], secrets[1], secrets[2]
    );
    let o = py(&["openai", &openai_url, "llama3.2", &prompt]);
    let echoed = o["chat"].as_str().unwrap();
    for s in secrets {
        assert!(!echoed.contains(s), "{s} reached the provider: {echoed}");
    }
    for marker in ["[REDACTED:email]", "[REDACTED:card]", "[REDACTED:api_key]"] {
        assert!(echoed.contains(marker), "{marker} missing: {echoed}");
    }
    let audit = gw.audit();
    let line = audit
        .iter()
        .rev()
        .find(|l| l["dlp_prompt"].as_object().is_some_and(|m| !m.is_empty()))
        .expect("an audit line with DLP findings");
    let total: u64 = line["dlp_prompt"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{line}");
    assert_eq!(line["dlp_prompt"]["email"], 1);
    assert_eq!(line["dlp_prompt"]["card"], 1);
    assert_eq!(line["dlp_prompt"]["api_key"], 1);
    assert_eq!(line["caller"], id("executor"));
    assert_eq!(line["model"], "llama3.2");
    assert_eq!(line["decision"], "allow");
    let text = gw.audit_text();
    for s in secrets {
        assert!(!text.contains(s), "{s} is in the audit log");
    }
    // Every refusal above is audited with its decision.
    let decisions: Vec<&str> = audit
        .iter()
        .filter_map(|l| l["decision"].as_str())
        .collect();
    for d in ["model_not_allowed", "budget_exhausted", "invalid_request"] {
        assert!(decisions.contains(&d), "no {d} in {decisions:?}");
    }
}

/// The gateway refuses calls that did not come through its proxy (no verified identity), and
/// a bad config is one clear error. On TCP even a hand-written XFCC naming a caller the
/// policy knows gets nothing: any local process could have written it (the forged-XFCC hole).
#[tokio::test]
async fn no_identity_is_refused_and_bad_config_is_one_error() {
    let mesh = Mesh::start();
    let listen = loopback_addr();
    let gw = start_gateway(&mesh, &listen.to_string()).await;
    let (status, body) = raw_post(
        listen,
        "/v1/chat/completions",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no verified caller identity"),
        "{body}"
    );
    assert_eq!(gw.audit().last().unwrap()["decision"], "no_identity");
    let (status, body) = raw_post_with(
        listen,
        "/v1/chat/completions",
        &[(
            "x-forwarded-client-cert",
            "By=spiffe://agentmesh.local/ns/default/sa/gateway;URI=spiffe://agentmesh.local/ns/default/sa/executor",
        )],
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(status, 403, "a forged XFCC over TCP: {body}");
    assert_eq!(body["error"]["code"], "no_identity", "{body}");

    let bad = mesh.dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"0.0.0.0:1\"\n").unwrap();
    let out = mesh.cli(&["gateway", "run", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("loopback"), "{err}");
}
