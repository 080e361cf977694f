//! `mcp`: what tool-level authorization costs an MCP call. One MCP server written with the
//! official MCP Python SDK (`examples/mcp-tools/server.py`, with 1,000 extra look-up tools),
//! called three ways in one run:
//!
//! ```text
//! load ─▶ client sidecar ═mTLS═▶ server sidecar ─▶ MCP server   tool-level: the intention
//!                                  (reads the JSON-RPC,            names tools, so the pair
//!                                   decides the tool, filters      decides each tools/call
//!                                   tools/list)                    and filters tools/list
//! load ─▶ client sidecar ═mTLS═▶ server sidecar ─▶ MCP server   L4 only: an intention with
//!                                                                   no MCP permission
//! load ─────────────────────────────────────────▶ MCP server   direct
//! ```
//!
//! Requests are MCP 2026-07-28 (stateless: no session, `Mcp-Method`/`Mcp-Name` headers and
//! the revision in `_meta`), so every POST stands alone. Each round measures direct, L4 and
//! tool-level at a fixed rate in turn (alternating which pair goes first); added latency is
//! against the direct figure of its own round, and the table reports the median over rounds.
//! Then, in process, the cost of filtering one 1,000-tool answer (what the sidecar does to it:
//! parse, decide each tool with the policy, re-encode) against only parsing and re-encoding it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_proto::v1;
use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::load::{self, Call, Endpoint};
use crate::propagation::{ControlPlane, TRUST_DOMAIN};
use crate::proxy::{self, SidecarCommand, spiffe_id, start_pair_between};
use crate::proxy_ab::{RATE_CONNECTIONS, latency, median};
use crate::report::{Table, micros, ratio};
use crate::scale::{Proc, free_port, my_uid, poll};

/// How many extra tools the server lists, beside `search`, `export` and `delete_all`.
const BENCH_TOOLS: usize = 1000;
/// Rounds of in-process filtering; the fastest counts.
const FILTER_ROUNDS: usize = 200;

/// How the benchmark is sized.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Seconds per timed run.
    pub seconds: f64,
    /// `tools/call` requests per second.
    pub rate: f64,
    /// `tools/list` requests per second (each answer is about 1 MB of JSON to the server).
    pub list_rate: f64,
    /// Rounds of the three targets.
    pub rounds: usize,
}

/// The 2026-07-28 headers of one stateless request.
fn headers(method: &'static str, name: Option<&'static str>) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = vec![
        (
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            hyper::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        ),
        (
            HeaderName::from_static("mcp-protocol-version"),
            HeaderValue::from_static("2026-07-28"),
        ),
        (
            HeaderName::from_static("mcp-method"),
            HeaderValue::from_static(method),
        ),
    ];
    if let Some(n) = name {
        h.push((
            HeaderName::from_static("mcp-name"),
            HeaderValue::from_static(n),
        ));
    }
    h
}

fn body(method: &str, mut params: Value) -> Bytes {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    Bytes::from(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
}

fn tools_call() -> Call {
    Call::post(
        "/mcp",
        headers("tools/call", Some("search")),
        body(
            "tools/call",
            json!({"name": "search", "arguments": {"query": "mesh"}}),
        ),
        b"found 3 public documents",
    )
}

fn tools_list() -> Call {
    Call::post(
        "/mcp",
        headers("tools/list", None),
        body("tools/list", json!({})),
        b"\"search\"",
    )
}

/// Runs the benchmark: the control plane and sidecars from `agentmesh`, the MCP server on
/// `python` (with the official `mcp` package).
///
/// # Errors
/// Any process failing to start or answer, or a target failing requests.
pub fn run(agentmesh: &Path, python: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(agentmesh, python, sizes))
}

/// Per quantile (p50, p99), in µs, medians over `rounds` rounds: the latency through the
/// tool-level pair, through the L4 pair and direct, and each pair's added latency over direct
/// (against its own round's direct figure; signed, since on a busy machine the Python
/// server's own spread can exceed what a pair adds).
async fn added(
    [tool_level, l4, direct]: [Endpoint; 3],
    call: &Call,
    rate: f64,
    sizes: Sizes,
) -> anyhow::Result<[Figures; 2]> {
    let mut added = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut plain = [
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    ];
    for round in 0..sizes.rounds {
        let at = proxy::Sizes {
            seconds: sizes.seconds,
            rate,
        };
        let base = latency(direct.clone(), call, at).await?;
        for q in 0..2 {
            plain[q][2].push(base[q]);
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let target = if i == 0 { &tool_level } else { &l4 };
            let through = latency(target.clone(), call, at).await?;
            for q in 0..2 {
                added[i][q].push(through[q] - base[q]);
                plain[q][i].push(through[q]);
            }
        }
    }
    Ok([0, 1].map(|q| Figures {
        through: plain[q].each_ref().map(|v| median(v)),
        added: [median(&added[0][q]), median(&added[1][q])],
    }))
}

/// One quantile's figures (µs): through [tool-level, L4, direct], added [tool-level, L4].
struct Figures {
    through: [f64; 3],
    added: [f64; 2],
}

/// Waits (up to a minute) until `target` answers a `tools/call` without an error.
async fn answers_tools_call(what: &str, target: &Endpoint) -> anyhow::Result<()> {
    poll(what, Duration::from_secs(60), || async {
        load::fixed_rate(
            target.clone(),
            &tools_call(),
            1,
            10.0,
            Duration::from_millis(150),
        )
        .await
        .ok()
        .filter(|(ok, errors)| !ok.is_empty() && *errors == 0)
        .map(|_| ())
    })
    .await
}

async fn run_async(agentmesh: &Path, python: &Path, sizes: Sizes) -> anyhow::Result<Table> {
    let mut plane = ControlPlane::start(agentmesh).await?;
    let uid = my_uid()?;
    for service in ["client", "app", "mcp-client", "mcp-app"] {
        plane
            .create_entry(&spiffe_id(service), &[format!("unix:uid:{uid}")])
            .await?;
    }
    // L4 only: an intention with no MCP permission. Tool-level: two tools of 1,003.
    for spec in [
        json!({"source": "client", "destination": "app", "action": "allow"}),
        json!({"source": "mcp-client", "destination": "mcp-app", "action": "allow",
            "permissions": [{"mcp": {"tools": ["search", "export"]}}]}),
    ] {
        plane
            .admin
            .create_intention(v1::CreateIntentionRequest {
                spec_json: spec.to_string(),
            })
            .await
            .context("CreateIntention")?;
    }

    let server = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mcp-tools/server.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script)
        .env("AGENTMESH_LISTEN", server.to_string())
        .env("MCP_BENCH_TOOLS", BENCH_TOOLS.to_string());
    let _server = Proc::spawn_command("mcp server", cmd, &plane.lay.path("mcp-server.log"))?;
    let direct = Endpoint::from(server);
    answers_tools_call("the MCP server's first tools/call", &direct).await?;

    let bin = plane.lay.bin.clone();
    let tool_level = start_pair_between(
        &plane,
        SidecarCommand::agentmesh(&bin),
        server,
        "mcp-",
        ("mcp-client", "mcp-app"),
    )
    .await?;
    let l4 = start_pair_between(
        &plane,
        SidecarCommand::agentmesh(&bin),
        server,
        "l4-",
        ("client", "app"),
    )
    .await?;
    let targets = [
        Endpoint::from(tool_level.client),
        Endpoint::from(l4.client),
        direct.clone(),
    ];
    // Both pairs answer before the clock starts (the policy may still be on its way).
    for t in &targets[..2] {
        answers_tools_call("a sidecar pair's first tools/call", t).await?;
    }
    let listed = list_once(&targets[0]).await?;
    if listed.contains("tool_0000") || !listed.contains("\"search\"") {
        bail!("the tool-level pair did not filter tools/list: {listed:.300}");
    }

    let call = added(targets.clone(), &tools_call(), sizes.rate, sizes).await?;
    let list = added(targets.clone(), &tools_list(), sizes.list_rate, sizes).await?;
    let answer = list_once(&direct).await?;
    let (filter, reencode, kept) = filter_cost(&answer)?;

    let us = |v: f64| micros(Duration::from_secs_f64(v.max(0.0) / 1e6));
    let signed = |v: f64| {
        let sign = if v < 0.0 { "−" } else { "" };
        format!("{sign}{}", micros(Duration::from_secs_f64(v.abs() / 1e6)))
    };
    let mut table = Table::new(
        "mcp: tool-level authorization of MCP calls, sidecar pair vs the same pair at L4 only",
    );
    for (what, rate, figures) in [
        ("tools/call search", sizes.rate, call),
        ("tools/list, 1,003 tools (2 kept)", sizes.list_rate, list),
    ] {
        for (f, name) in figures.iter().zip(["p50", "p99"]) {
            table.row(
                format!(
                    "{what}: {name} through the pair at {rate} req/s (direct {}), median of {}",
                    us(f.through[2]),
                    sizes.rounds
                ),
                us(f.through[0]),
                us(f.through[1]),
                ratio(f.through[0], f.through[1]),
                "",
            );
            table.row(
                format!("{what}: added latency {name} (pair − direct, same round)"),
                signed(f.added[0]),
                signed(f.added[1]),
                "",
                "",
            );
        }
    }
    table.row(
        format!("filtering one tools/list answer of 1,003 tools ({} KiB) in process, fastest of {FILTER_ROUNDS}", answer.len() / 1024),
        micros(filter),
        micros(reencode),
        ratio(filter.as_secs_f64(), reencode.as_secs_f64()),
        "",
    );
    table.note(format!(
        "One MCP server (the official Python SDK, `examples/mcp-tools/server.py` with \
         MCP_BENCH_TOOLS={BENCH_TOOLS}) behind two agentmesh sidecar pairs started from this \
         build, one control plane. agentmesh: the pair whose intention names tools \
         (`search`, `export`): it reads each JSON-RPC message, checks the 2026-07-28 headers \
         against the body, decides the tool and filters `tools/list`. Peer: the same pair \
         whose intention has no MCP permission (an L4 allow: bytes forwarded unread). Added = \
         through the pair − direct to the server, in the same round; {} rounds of {} s, \
         {RATE_CONNECTIONS} keep-alive connections, stateless 2026-07-28 requests.",
        sizes.rounds, sizes.seconds
    ));
    table.note(format!(
        "The in-process row times what the sidecar does to one answer: parse it, decide each \
         of its tools with the pair's policy (`agentmesh_sdk::mcp::keep`, `filter_answer`; \
         {kept} kept) and encode it again; the peer only parses and encodes it (the floor \
         for any proxy that rewrites a JSON answer)."
    ));
    Ok(table)
}

/// One `tools/list` through `target`: the answer's body.
async fn list_once(target: &Endpoint) -> anyhow::Result<String> {
    let Endpoint::Tcp(addr) = target else {
        bail!("tools/list over a Unix socket is not measured");
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post("/mcp").header(hyper::header::HOST, "app");
    for (k, v) in headers("tools/list", None) {
        req = req.header(k, v);
    }
    let req = req.body(http_body_util::Full::new(body("tools/list", json!({}))))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status != hyper::StatusCode::OK {
        bail!("tools/list through {target}: {status} {text:.300}");
    }
    Ok(text)
}

/// The fastest in-process filtering of `answer` (parse, keep per the policy, encode) and the
/// fastest parse-and-encode alone, and how many tools the filter kept.
fn filter_cost(answer: &str) -> anyhow::Result<(Duration, Duration, usize)> {
    use agentmesh_sdk::mcp::{Listing, filter_answer, keep};
    let td = TRUST_DOMAIN.parse().context("the bench trust domain")?;
    let spec = json!({"source": "mcp-client", "destination": "mcp-app", "action": "allow",
        "permissions": [{"mcp": {"tools": ["search", "export"]}}]});
    let policy = agentmesh_sdk::PolicyState::from_snapshot(
        &v1::PolicySnapshot {
            revision: 1,
            intentions: vec![v1::Intention {
                id: "bench".into(),
                spec_json: spec.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &td,
    );
    let headers = hyper::HeaderMap::new();
    let keep = keep(
        Arc::new(policy),
        spiffe_id("mcp-client").parse()?,
        spiffe_id("mcp-app").parse()?,
        agentmesh_sdk::RequestHead::new("POST", "/mcp", &headers),
    );
    let id = json!(1);
    let (mut filter, mut reencode, mut kept) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..FILTER_ROUNDS {
        let t = Instant::now();
        let mut msg: Value = serde_json::from_str(answer)?;
        filter_answer(&mut msg, &id, Listing::Tools, &keep);
        let out = msg.to_string();
        filter = filter.min(t.elapsed());
        kept = msg["result"]["tools"].as_array().map_or(0, Vec::len);
        std::hint::black_box(out);

        let t = Instant::now();
        let msg: Value = serde_json::from_str(answer)?;
        let out = msg.to_string();
        reencode = reencode.min(t.elapsed());
        std::hint::black_box(out);
    }
    Ok((filter, reencode, kept))
}
