//! End-to-end tracing against real processes: `agentmesh server run`, `node run`, one
//! `proxy run` per service and `gateway run` (offline provider), all exporting spans over
//! OTLP/HTTP to tests/py/otlp_receiver.py, which decodes them with the official
//! `opentelemetry-proto` Python package (installed by scripts/test).
//!
//! A client (standing in for an agent) sends `traceparent` through the executor's outbound
//! port: executor proxy (CLIENT) ═mTLS═▶ gateway proxy (SERVER) ─▶ gateway (SERVER). The test
//! checks that this is one trace with each span the child of the one before, and that the
//! SPIFFE IDs, the decision and the model are on the spans; and that a call the intentions
//! deny is a span too, with decision deny.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/otlp.rs"]
mod otlp;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh::*;
use otlp::*;
use serde_json::Value;
use sidecar::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The OTEL_* variables every process gets: export to the receiver.
fn otel_env<'a>(endpoint: &'a str, delay_ms: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
    ]
}

fn gateway_config(mesh: &Mesh, listen: &str) -> PathBuf {
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
[[caller]]
id = "executor"
models = ["llama3.2"]
"#
        ),
    )
    .expect("write gateway.toml");
    config
}

/// A raw HTTP/1.1 POST through `addr` with `traceparent`, as an agent would send it.
async fn post(addr: SocketAddr, path: &str, traceparent: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let tp = traceparent
        .map(|t| format!("traceparent: {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n{tp}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

const CHAT: &str =
    r#"{"model":"llama3.2","messages":[{"role":"user","content":"trace me"}],"stream":false}"#;

/// Sends SIGTERM (the clean shutdown path, which flushes spans) and waits for the exit.
fn terminate(proc: &mut Proc, what: &str) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {what}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = proc.0.try_wait().expect("wait") {
            assert!(
                status.success(),
                "{what} exited with {status} after SIGTERM"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_call_is_one_trace_from_the_callers_proxy_through_the_gateway_with_spiffe_ids() {
    let mesh = Mesh::start();
    let receiver = Receiver::start(&mesh.dir);
    let endpoint = receiver.endpoint();
    for s in ["gateway", "executor", "planner"] {
        register(&mesh, s, None);
    }
    // Proxies export every 100 ms; the gateway only when it shuts down, so its span arriving
    // at all shows that SIGTERM flushes the queue.
    let proxy_env = otel_env(&endpoint, "100");
    let gateway_env = otel_env(&endpoint, "600000");

    // A Unix socket behind its proxy: the only listener where the gateway trusts XFCC.
    let gw_socket = mesh.dir.join("gateway.sock");
    let gw_listen = format!("unix://{}", gw_socket.display());
    let gw_log = mesh.dir.join("gateway.log");
    let gw_audit = mesh.dir.join("gateway.audit.jsonl");
    let mut gateway = Proc(
        mesh.command()
            .args(["gateway", "run", "--config"])
            .arg(gateway_config(&mesh, &gw_listen))
            .envs(gateway_env)
            .stdout(std::fs::File::create(&gw_audit).expect("audit file"))
            .stderr(std::fs::File::create(&gw_log).expect("log file"))
            .spawn()
            .expect("spawn agentmesh gateway run"),
    );
    eventually("the gateway listens", || async {
        tokio::net::UnixStream::connect(&gw_socket).await.is_ok()
    })
    .await;
    let _gw_proxy = start_proxy_to(
        &mesh,
        "gateway",
        Some((gw_listen.clone(), "http")),
        &[],
        &proxy_env,
    )
    .await;
    let executor =
        start_proxy_with_env(&mesh, "executor", None, &[("gateway", "http")], &proxy_env).await;
    let planner =
        start_proxy_with_env(&mesh, "planner", None, &[("gateway", "http")], &proxy_env).await;
    eventually("the catalog lists the gateway", || async {
        catalog_size(&mesh).await >= 1
    })
    .await;
    let created: Value = serde_json::from_str(&mesh.cli_ok(&[
        "intention",
        "create",
        "executor",
        "gateway",
        "--action",
        "allow",
        "-o",
        "json",
    ]))
    .expect("intention create -o json");
    let intention_id = created["id"].as_str().expect("intention id").to_owned();
    let exec_port = executor.upstreams[0];
    // Intentions reach the proxies within a second; these calls start traces of their own.
    eventually("executor reaches the gateway", || async {
        post(exec_port, "/v1/chat/completions", None, CHAT).await == 200
    })
    .await;

    // The agent's own span is the root: the executor's proxy span must be its child.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let agent_span = "00f067aa0ba902b7";
    let status = post(
        exec_port,
        "/v1/chat/completions",
        Some(&format!("00-{trace}-{agent_span}-01")),
        CHAT,
    )
    .await;
    assert_eq!(status, 200);

    // The planner has no intention to the gateway: refused at the gateway's proxy.
    let denied_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let status = post(
        planner.upstreams[0],
        "/v1/chat/completions",
        Some(&format!("00-{denied_trace}-00f067aa0ba902b8-01")),
        CHAT,
    )
    .await;
    assert_eq!(status, 403);

    terminate(&mut gateway, "the gateway");

    let spans = receiver.wait_for(
        trace,
        "the executor proxy, gateway proxy and gateway spans",
        |t| {
            has(t, "agentmesh-proxy/executor", "SPAN_KIND_CLIENT")
                && has(t, "agentmesh-proxy/gateway", "SPAN_KIND_SERVER")
                && has(t, "agentmesh-gateway", "SPAN_KIND_SERVER")
        },
    );
    assert_eq!(
        spans.len(),
        3,
        "exactly three spans in the trace: {spans:#?}"
    );
    let outbound = span(&spans, "agentmesh-proxy/executor", "SPAN_KIND_CLIENT");
    let inbound = span(&spans, "agentmesh-proxy/gateway", "SPAN_KIND_SERVER");
    let gw = span(&spans, "agentmesh-gateway", "SPAN_KIND_SERVER");

    // Parent links: agent → executor's proxy → gateway's proxy → gateway.
    assert_eq!(outbound["parent_span_id"], agent_span, "{outbound:#}");
    assert_eq!(
        inbound["parent_span_id"], outbound["span_id"],
        "{inbound:#}"
    );
    assert_eq!(gw["parent_span_id"], inbound["span_id"], "{gw:#}");

    let a = &outbound["attributes"];
    assert_eq!(a["spiffe.peer_id"], id("gateway"), "{outbound:#}");
    assert_eq!(a["spiffe.id"], id("executor"), "{outbound:#}");
    assert_eq!(a["agentmesh.decision"], "forwarded", "{outbound:#}");
    assert_eq!(a["http.response.status_code"], 200, "{outbound:#}");

    let a = &inbound["attributes"];
    assert_eq!(a["spiffe.peer_id"], id("executor"), "{inbound:#}");
    assert_eq!(a["agentmesh.source"], id("executor"), "{inbound:#}");
    assert_eq!(a["agentmesh.destination"], id("gateway"), "{inbound:#}");
    assert_eq!(a["agentmesh.decision"], "allow", "{inbound:#}");
    assert_eq!(a["agentmesh.intention_id"], intention_id, "{inbound:#}");
    assert_eq!(a["http.request.method"], "POST", "{inbound:#}");
    assert_eq!(a["url.path"], "/v1/chat/completions", "{inbound:#}");
    assert_eq!(a["http.response.status_code"], 200, "{inbound:#}");

    let a = &gw["attributes"];
    assert_eq!(a["spiffe.peer_id"], id("executor"), "{gw:#}");
    assert_eq!(a["gen_ai.request.model"], "llama3.2", "{gw:#}");
    assert_eq!(a["agentmesh.gateway.provider"], "local", "{gw:#}");
    assert_eq!(a["agentmesh.decision"], "allow", "{gw:#}");
    assert_eq!(a["http.route"], "/v1/chat/completions", "{gw:#}");
    assert!(
        a["gen_ai.usage.output_tokens"].as_i64().unwrap_or(0) > 0,
        "{gw:#}"
    );

    // The proxy reports its exporter on /metrics: spans went out, none were dropped.
    let (_, metrics) = executor.admin_get("/metrics").await;
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(count("agentmesh_proxy_spans_exported_total") >= 1);
    assert_eq!(count("agentmesh_proxy_spans_dropped_total"), 0);

    // The audit line for the call names the same trace.
    let audit = std::fs::read_to_string(&gw_audit).unwrap_or_default();
    assert!(
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["trace_id"] == trace && l["decision"] == "allow"),
        "no audit line with trace {trace}:\n{audit}"
    );

    // The denied call: the planner's proxy and the gateway's proxy each have a span; the
    // refusal is explained on the gateway proxy's span, and nothing reached the gateway.
    let denied = receiver.wait_for(denied_trace, "the denied call's spans", |t| {
        has(t, "agentmesh-proxy/planner", "SPAN_KIND_CLIENT")
            && has(t, "agentmesh-proxy/gateway", "SPAN_KIND_SERVER")
    });
    let refused = span(&denied, "agentmesh-proxy/gateway", "SPAN_KIND_SERVER");
    let a = &refused["attributes"];
    assert_eq!(a["agentmesh.decision"], "deny", "{refused:#}");
    assert_eq!(a["spiffe.peer_id"], id("planner"), "{refused:#}");
    assert_eq!(a["http.response.status_code"], 403, "{refused:#}");
    assert!(
        a["agentmesh.reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{refused:#}"
    );
    let caller = span(&denied, "agentmesh-proxy/planner", "SPAN_KIND_CLIENT");
    assert_eq!(
        caller["attributes"]["agentmesh.decision"], "denied_by_destination",
        "{caller:#}"
    );
    assert_eq!(refused["parent_span_id"], caller["span_id"]);
    assert!(
        !has(&denied, "agentmesh-gateway", "SPAN_KIND_SERVER"),
        "the denied call reached the gateway: {denied:#?}"
    );
}

/// An unusable OTLP endpoint is one clear error at startup, naming the variable, and the
/// process does not start without the export it was asked for.
#[test]
fn a_bad_otlp_endpoint_is_one_error_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[[provider]]\nname = \"local\"\nkind = \"offline\"\n\
         [[model]]\nname = \"m\"\nproviders = [\"local\"]\n[[caller]]\nid = \"a\"\nmodels = [\"m\"]\n",
    )
    .expect("write gateway.toml");
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4318"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["gateway", "run", "--config"])
            .arg(&config)
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .expect("run agentmesh");
        assert!(!out.status.success(), "{var}={value} started anyway");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{var}={value}: {err}");
        assert!(last.contains(var), "{var}={value}: {err}");
        assert!(
            err.lines().filter(|l| l.starts_with("error")).count() == 1,
            "{err}"
        );
    }
}
