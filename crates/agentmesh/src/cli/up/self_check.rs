//! The self-check `up` runs once the mesh is up: one question answered through the entry,
//! and the call the scenario names refused by the intentions. Also the small HTTP clients
//! it (and `agentmesh ask`) uses to reach the mesh.

use std::fmt::Write as _;
use std::time::Duration;

use agentmesh_sdk::{LocalAddr, LocalStream};
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::plan::{Plan, Planned};
use super::render::MODEL;
use super::scenario::{DEFAULT_QUESTION, Scenario, SelfCheck, ServiceKind};
use super::start::AppliedIntention;

/// Runs the self-check. Returns the lines to print and whether both parts held.
pub async fn run(
    scenario: &Scenario,
    plan: &Plan,
    intentions: &[AppliedIntention],
) -> (String, bool) {
    let mut out = String::new();
    let asked = ask(scenario, plan, &mut out).await;
    let refused = match &scenario.self_check {
        Some(c) => refusal(scenario, plan, c, intentions, &mut out).await,
        None => true,
    };
    (out, asked && refused)
}

/// One question through the entry; false when it was asked and not answered.
async fn ask(scenario: &Scenario, plan: &Plan, out: &mut String) -> bool {
    let entry = plan.entry(scenario);
    let question = scenario
        .self_check
        .as_ref()
        .and_then(|c| c.question.clone())
        .unwrap_or_else(|| DEFAULT_QUESTION.to_owned());
    if let Some(oidc) = &entry.spec.oidc {
        // Only a person can log in at an OIDC issuer; the refusal still runs.
        let _ = writeln!(
            out,
            "  - ask skipped: the frontend logs in with OIDC ({}); ask from its page",
            oidc.get("issuer").and_then(|i| i.as_str()).unwrap_or("?")
        );
        return true;
    }
    let via_frontend = entry.spec.kind == ServiceKind::Frontend;
    let answered = ask_entry(
        &format!("http://{}", entry.app),
        via_frontend,
        &question,
        None,
        Duration::from_secs(300),
    )
    .await;
    match answered {
        Ok((200, v)) => {
            let agents = agents_path(&v);
            let _ = writeln!(
                out,
                "  ✓ ask {question:?}\n      answered by {agents} (trace {})",
                v["trace_id"].as_str().unwrap_or("?")
            );
            true
        }
        Ok((status, v)) => {
            let _ = writeln!(
                out,
                "  ✗ ask {question:?}: {status} {}",
                v.get("error").unwrap_or(&v)
            );
            false
        }
        Err(e) => {
            let _ = writeln!(out, "  ✗ ask {question:?}: {e:#}");
            false
        }
    }
}

/// The call the scenario names, which the intentions must refuse; false when it was not.
async fn refusal(
    scenario: &Scenario,
    plan: &Plan,
    c: &SelfCheck,
    intentions: &[AppliedIntention],
    out: &mut String,
) -> bool {
    let source = plan
        .service(&c.source)
        .unwrap_or_else(|| unreachable!("validated"));
    let (target, path, through) = probe_target(scenario, source, c);
    let body = if path.ends_with("/v1/chat/completions") {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "self-check"}]})
    } else {
        json!({"question": "self-check"})
    };
    let what = format!("{} → {} ({through})", c.source, c.destination);
    match post_json_local(&target, &path, &body, Duration::from_secs(30)).await {
        Ok((403, v)) if v.get("reason").is_some() => {
            let decided = match v["intention"].as_str() {
                Some(id) => match intentions.iter().find(|i| i.id == id) {
                    Some(i) => format!(
                        "intention {id} ({} → {} {}{})",
                        i.source,
                        i.destination,
                        i.action,
                        if i.description.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", i.description)
                        }
                    ),
                    None => format!("intention {id}"),
                },
                None => "no intention (the default is deny)".to_owned(),
            };
            let _ = writeln!(
                out,
                "  ✓ refused on purpose: {what}\n      decided by {decided}\n      reason: {}",
                v["reason"].as_str().unwrap_or_default()
            );
            true
        }
        Ok((status, v)) => {
            let _ = writeln!(
                out,
                "  ✗ {what} should be refused by intentions, but got {status}: {v}"
            );
            false
        }
        Err(e) => {
            let _ = writeln!(out, "  ✗ {what}: {e:#}");
            false
        }
    }
}

/// Where the refused call is made from: the source's sidecar port for the destination, or,
/// for an agent without a sidecar, its admin's probe, which makes the call itself. Both are
/// Unix sockets that only this user can use: the self-check has no back door. Returns the
/// target, the request path, and how the call went in words.
fn probe_target(
    scenario: &Scenario,
    source: &Planned,
    c: &SelfCheck,
) -> (LocalAddr, String, String) {
    let to_gateway = scenario
        .service(&c.destination)
        .is_some_and(|s| s.kind == ServiceKind::Gateway);
    let path = if to_gateway {
        "/v1/chat/completions"
    } else {
        "/ask"
    };
    if source.spec.sidecar {
        let port = source
            .upstream(&c.destination)
            .unwrap_or_else(|| unreachable!("planned"));
        (
            port.clone(),
            path.to_owned(),
            format!("through {}'s sidecar", c.source),
        )
    } else {
        (
            source.admin.clone(),
            format!("/probe/{}{path}", c.destination),
            format!("{}'s own in-process mTLS", c.source),
        )
    }
}

/// A bare HTTP/1.0 GET on a local address: status and body, or None when nothing answers.
pub async fn http_get(addr: &LocalAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = LocalStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// POSTs JSON and returns the status and the JSON answer (Null when the body is not JSON).
///
/// # Errors
/// Nothing answered, or no answer within `timeout`.
pub async fn post_json(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .with_context(|| format!("invalid URL {url:?}"))?;
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow!("no answer from {url} within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {url}: {e}"))
}

/// [`post_json`] over a local address (a sidecar's Unix socket).
///
/// # Errors
/// Nothing answered, or no answer within `timeout`.
async fn post_json_local(
    target: &LocalAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    use http_body_util::{BodyExt, Full};
    let client = agentmesh_sdk::http_client::<Full<bytes::Bytes>>(target);
    let req = http::Request::post(format!("{}{path}", target.http_base()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .with_context(|| format!("invalid path {path:?}"))?;
    let call = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow!("no answer from {target} within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {target}: {e}"))
}

/// An `/ask` answer's `agents` as `a → b → c`.
pub fn agents_path(answer: &Value) -> String {
    answer["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default()
}

/// Who `up`'s self-check and `agentmesh ask` log in as at a dev-login frontend.
fn dev_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty() && u.len() <= 100)
        .unwrap_or_else(|| "agentmesh-cli".into())
}

/// Logs in at a dev-login frontend (`POST /login`) and returns the session cookie.
async fn frontend_session(base: &str, timeout: Duration) -> anyhow::Result<String> {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let form = format!(
        "name={}",
        dev_user().replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let req = http::Request::post(format!("{base}/login"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(bytes::Bytes::from(form)))
        .with_context(|| format!("invalid URL {base:?}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| anyhow!("no answer from {base}/login within {timeout:?}"))?
        .map_err(|e| anyhow!("cannot reach {base}/login: {e}"))?;
    let cookie = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .join("; ");
    if cookie.is_empty() {
        bail!(
            "the frontend at {base} gave no session ({}); it logs in with OIDC: ask from its page instead",
            resp.status()
        );
    }
    Ok(cookie)
}

/// Asks the mesh's entry: an agent's `/ask` directly, or a frontend's after a dev login.
///
/// # Errors
/// Nothing answered, or the frontend would not log in.
pub async fn ask_entry(
    base: &str,
    via_frontend: bool,
    question: &str,
    traceparent: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    let cookie;
    if via_frontend {
        cookie = frontend_session(base, timeout).await?;
        headers.push(("cookie", &cookie));
    }
    if let Some(tp) = traceparent {
        headers.push(("traceparent", tp));
    }
    post_json(
        &format!("{base}/ask"),
        &json!({ "question": question }),
        &headers,
        timeout,
    )
    .await
}
