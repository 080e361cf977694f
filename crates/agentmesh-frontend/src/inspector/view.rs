//! The inspector's HTML: server-rendered, semantic (sections, tables with captions and
//! headers, labelled forms), readable without the script; `inspector.js` only makes the
//! expiry countdowns tick and appends live decisions.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use agentmesh_proto::v1::CheckIntentionResponse;
use serde_json::Value;

use super::feed::Decision;
use super::graph::Graph;
use super::mesh::{DenialRow, IntentionRow, MeshError, MeshView, ServiceRow, short};
use super::requests::{AskRecord, ChainElement};
use crate::page::{escape, layout_with_script};

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn rfc3339(unix: i64) -> String {
    agentmesh_telemetry::clock::rfc3339_secs(unix).unwrap_or_default()
}

/// `in 59m 12s` / `expired 3s ago`, as the script also writes it.
fn remaining(unix: i64) -> String {
    let left = unix - now_unix();
    let fmt = |s: i64| {
        if s >= 3600 {
            format!("{}h {}m", s / 3600, (s % 3600) / 60)
        } else if s >= 60 {
            format!("{}m {}s", s / 60, s % 60)
        } else {
            format!("{s}s")
        }
    };
    if left >= 0 {
        format!("in {}", fmt(left))
    } else {
        format!("expired {} ago", fmt(-left))
    }
}

/// A `<time>` the script counts down.
pub(super) fn countdown(unix: i64) -> String {
    format!(
        "<time class=\"countdown\" datetime=\"{}\" data-expires=\"{unix}\">{}</time>",
        rfc3339(unix),
        remaining(unix)
    )
}

fn problem(e: &MeshError) -> String {
    format!(
        "<p class=\"problem\" role=\"status\">{}</p>",
        escape(&e.to_string())
    )
}

const NAV: &str = "<nav aria-label=\"Inspector\"><ul class=\"tabs\">\
    <li><a href=\"/inspector#graph-section\">Graph</a></li>\
    <li><a href=\"/inspector#mesh\">Mesh</a></li>\
    <li><a href=\"/inspector#denials\">Refused identities</a></li>\
    <li><a href=\"/inspector#intentions\">Intentions</a></li>\
    <li><a href=\"/inspector#check\">Check</a></li>\
    <li><a href=\"/inspector#decisions\">Live decisions</a></li>\
    <li><a href=\"/inspector#requests\">Requests</a></li>\
    <li><a href=\"/\">Ask</a></li></ul></nav>";

/// The node's refusals in full: the refused caller was told only the selector kinds it lacks
/// and a request id, so this table (admin-only, like the whole inspector) is where an operator
/// matches that id to the closest entry and what it needs.
fn denials_section(denials: &Result<Vec<DenialRow>, MeshError>) -> String {
    let mut m = String::from(
        "<section id=\"denials\" aria-labelledby=\"den-h\"><h2 id=\"den-h\">Refused identities</h2>",
    );
    match denials {
        Ok(rows) if rows.is_empty() => {
            m.push_str(
                "<p id=\"denials-none\">The node has refused no caller since it started.</p>",
            );
        }
        Ok(rows) => {
            m.push_str(
                "<table id=\"node-denials\"><caption>Callers the node gave no identity, newest first; \
                 the caller saw only the request id and the selector kinds it lacks</caption>\
                 <thead><tr><th scope=\"col\">When</th><th scope=\"col\">Request id</th>\
                 <th scope=\"col\">API</th><th scope=\"col\">Caller</th><th scope=\"col\">Lacks</th>\
                 <th scope=\"col\">Closest entry</th><th scope=\"col\">Why</th></tr></thead><tbody>",
            );
            for d in rows {
                let closest = if d.closest_spiffe_id.is_empty() {
                    "none (the node serves no entries)".to_owned()
                } else {
                    format!("<code>{}</code>", escape(&d.closest_spiffe_id))
                };
                let pid = if d.pid == 0 {
                    String::new()
                } else {
                    format!(" pid {}", d.pid)
                };
                let _ = write!(
                    m,
                    "<tr data-request-id=\"{id}\"><td>{when}</td><th scope=\"row\"><code>{id}</code></th>\
                     <td>{api}</td><td>uid {uid}{pid}</td><td>{lacks}</td><td>{closest}</td><td>{why}</td></tr>",
                    id = escape(&d.request_id),
                    when = escape(&rfc3339(d.at)),
                    api = escape(&d.api),
                    uid = d.uid,
                    lacks = escape(&d.missing_kinds.join(", ")),
                    why = escape(&d.explanation),
                );
            }
            m.push_str("</tbody></table>");
        }
        Err(e) => m.push_str(&problem(e)),
    }
    m.push_str("</section>");
    m
}

/// What the check form was asked and what the server said.
#[derive(Debug, Default)]
pub struct CheckForm {
    /// The fields as typed.
    pub source: String,
    /// The destination.
    pub destination: String,
    /// HTTP method (empty: the L4 decision).
    pub method: String,
    /// HTTP path.
    pub path: String,
    /// The answer, if the form was submitted.
    pub result: Option<Result<CheckIntentionResponse, String>>,
}

fn decision_row(d: &Decision) -> String {
    let decided_here = d.decision == "allow" || d.decision == "deny";
    let intention = match (&d.intention, &d.intention_summary) {
        _ if !decided_here => {
            "<span class=\"summary\">— (the destination's sidecar decides)</span>".into()
        }
        (Some(id), Some(s)) => format!(
            "<code>{}</code> <span class=\"summary\">{}</span>",
            escape(id),
            escape(s)
        ),
        (Some(id), None) => format!("<code>{}</code>", escape(id)),
        (None, _) => "<span class=\"summary\">none (default deny)</span>".into(),
    };
    let request = escape(&d.request_text());
    format!(
        "<tr class=\"{cls}\" data-decision=\"{dec}\" data-intention=\"{iid}\" data-id=\"{id}\">\
         <td>{ts}</td><td>{proxy} {dir}</td><td>{src} → {dst}</td><td>{request}</td>\
         <td><strong>{dec}</strong></td><td>{intention}</td><td>{reason}</td></tr>",
        cls = if d.decision == "allow" {
            "allow"
        } else {
            "deny"
        },
        dec = escape(&d.decision),
        iid = escape(d.intention.as_deref().unwrap_or("")),
        id = d.id,
        ts = escape(&d.ts),
        proxy = escape(&d.proxy),
        dir = escape(&d.direction),
        src = escape(&short(&d.source)),
        dst = escape(&short(&d.destination)),
        reason = escape(&d.reason),
    )
}

const DECISION_HEAD: &str = "<thead><tr><th scope=\"col\">When</th><th scope=\"col\">Sidecar</th>\
    <th scope=\"col\">Call</th><th scope=\"col\">Request</th><th scope=\"col\">Decision</th>\
    <th scope=\"col\">Intention</th><th scope=\"col\">Reason</th></tr></thead>";

/// The inspector's main page: one section after another, in the order the tabs name them.
pub fn inspector(
    mesh: &MeshView,
    graph: &Graph,
    check: &CheckForm,
    decisions: &[std::sync::Arc<Decision>],
    asks: &[std::sync::Arc<AskRecord>],
    feeds: &[String],
) -> String {
    let mut m = String::new();
    m.push_str("<h1>Security Inspector</h1>");
    m.push_str(NAV);
    m.push_str(&graph_section(mesh, graph));
    m.push_str(&mesh_section(mesh));
    m.push_str(&denials_section(&mesh.denials));
    m.push_str(&intentions_section(&mesh.intentions));
    m.push_str(&check_section(check));
    m.push_str(&decisions_section(decisions, feeds));
    m.push_str(&requests_section(asks));
    layout_with_script("Inspector", &m, Some("/static/inspector.js"))
}

/// The mesh graph, or why there is none: without the server there are no services to draw.
fn graph_section(mesh: &MeshView, graph: &Graph) -> String {
    let mut m = String::from(
        "<section id=\"graph-section\" aria-labelledby=\"graph-h\"><h2 id=\"graph-h\">Who may call whom</h2>",
    );
    match (&mesh.services, &mesh.intentions) {
        (Err(e), _) | (_, Err(e)) => m.push_str(&problem(e)),
        _ => m.push_str(&graph.render()),
    }
    m.push_str("</section>");
    m
}

/// Whether the server and the node answer, and every service with the SVID the node holds.
fn mesh_section(mesh: &MeshView) -> String {
    let mut m = String::new();
    m.push_str("<section id=\"mesh\" aria-labelledby=\"mesh-h\"><h2 id=\"mesh-h\">Mesh</h2>");
    m.push_str("<dl class=\"status\">");
    match &mesh.server {
        Ok(s) => {
            let _ = write!(
                m,
                "<dt>Server</dt><dd id=\"server-status\" data-ok=\"true\">reachable · trust domain <code>{}</code> · {} entries · {} nodes</dd>",
                escape(&s.trust_domain),
                s.entries,
                s.nodes
            );
        }
        Err(e) => {
            let _ = write!(
                m,
                "<dt>Server</dt><dd id=\"server-status\" data-ok=\"false\">{}</dd>",
                escape(&e.to_string())
            );
        }
    }
    match &mesh.node {
        Ok(n) => {
            let _ = write!(
                m,
                "<dt>Node</dt><dd id=\"node-status\" data-ok=\"true\"><code>{}</code> · SVID expires {} · server {} · {} entries · {} SVIDs held</dd>",
                escape(&n.spiffe_id),
                countdown(n.expires_at),
                if n.server_reachable {
                    "reachable"
                } else {
                    "<strong>unreachable</strong> (serving from cache)"
                },
                n.entries,
                n.cached_svids
            );
        }
        Err(e) => {
            let _ = write!(
                m,
                "<dt>Node</dt><dd id=\"node-status\" data-ok=\"false\">{}</dd>",
                escape(&e.to_string())
            );
        }
    }
    m.push_str("</dl>");
    if let Some(e) = &mesh.svids_error {
        m.push_str(&problem(e));
    }
    m.push_str(&services_table(&mesh.services));
    m.push_str("</section>");
    m
}

fn services_table(services: &Result<Vec<ServiceRow>, MeshError>) -> String {
    let mut m = String::new();
    match services {
        Ok(rows) => {
            m.push_str(
                "<table id=\"services\"><caption>Every registered service, with the SVID the node holds for it</caption>\
                 <thead><tr><th scope=\"col\">Service</th><th scope=\"col\">SPIFFE ID</th><th scope=\"col\">SVID serial</th>\
                 <th scope=\"col\">Expires</th><th scope=\"col\">Chain</th></tr></thead><tbody>",
            );
            for r in rows {
                let (serial, expires, chain) = match &r.svid {
                    Some(s) => {
                        let chain: String = s
                            .chain
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                format!(
                                    "<li>{}: {} <span class=\"serial\">serial {}</span>, expires {}</li>",
                                    if i == 0 { "leaf" } else { "CA" },
                                    c.spiffe_id.as_deref().map_or_else(
                                        || "(no SPIFFE ID)".to_owned(),
                                        |id| format!("<code>{}</code>", escape(id))
                                    ),
                                    escape(&c.serial),
                                    escape(&rfc3339(c.not_after))
                                )
                            })
                            .collect();
                        (
                            format!("<code>{}</code>", escape(&s.serial)),
                            countdown(s.not_after),
                            format!("<ol class=\"chain\">{chain}</ol>"),
                        )
                    }
                    None => (
                        "—".to_owned(),
                        "no SVID held (no workload has asked)".to_owned(),
                        String::new(),
                    ),
                };
                let _ = write!(
                    m,
                    "<tr><th scope=\"row\">{}</th><td class=\"spiffe-id\" data-spiffe-id=\"{id}\"><code>{id}</code></td>\
                     <td>{serial}</td><td>{expires}</td><td>{chain}</td></tr>",
                    escape(&short(&r.spiffe_id)),
                    id = escape(&r.spiffe_id),
                );
            }
            m.push_str("</tbody></table>");
        }
        Err(e) => m.push_str(&problem(e)),
    }
    m
}

fn intentions_section(intentions: &Result<Vec<IntentionRow>, MeshError>) -> String {
    let mut m = String::new();
    m.push_str(
        "<section id=\"intentions\" aria-labelledby=\"int-h\"><h2 id=\"int-h\">Intentions</h2>\
         <p>Everything not allowed here is denied.</p>",
    );
    match intentions {
        Ok(list) => {
            m.push_str(
                "<table id=\"intention-table\"><caption>Intentions, as the server holds them</caption>\
                 <thead><tr><th scope=\"col\">ID</th><th scope=\"col\">Source</th><th scope=\"col\">Destination</th>\
                 <th scope=\"col\">Action</th><th scope=\"col\">Permissions</th><th scope=\"col\">Description</th></tr></thead><tbody>",
            );
            for i in list {
                let s = |k: &str| escape(&short(i.spec[k].as_str().unwrap_or("")));
                let perms = match i.spec.get("permissions") {
                    Some(Value::Array(p)) if !p.is_empty() => {
                        format!(
                            "<code>{}</code>",
                            escape(&Value::Array(p.clone()).to_string())
                        )
                    }
                    _ => "all requests".into(),
                };
                let _ = write!(
                    m,
                    "<tr data-intention=\"{id}\"><td><code>{id}</code></td><td>{}</td><td>{}</td><td><strong>{}</strong></td><td>{perms}</td><td>{}</td></tr>",
                    s("source"),
                    s("destination"),
                    s("action"),
                    escape(i.spec["description"].as_str().unwrap_or("")),
                    id = escape(&i.id),
                );
            }
            m.push_str("</tbody></table>");
        }
        Err(e) => m.push_str(&problem(e)),
    }
    m.push_str("</section>");
    m
}

/// The form, refilled with what was typed, and the server's answer to it if it was submitted.
fn check_section(check: &CheckForm) -> String {
    let mut m = String::new();
    let _ = write!(
        m,
        "<section id=\"check\" aria-labelledby=\"check-h\"><h2 id=\"check-h\">Can X call Y?</h2>\
         <p>The server's own answer, the same as <code>agentmesh intention check</code>.</p>\
         <form method=\"get\" action=\"/inspector/check\" class=\"check\">\
         <label for=\"check-source\">Source (service name or SPIFFE ID)</label>\
         <input id=\"check-source\" name=\"source\" required value=\"{}\">\
         <label for=\"check-destination\">Destination</label>\
         <input id=\"check-destination\" name=\"destination\" required value=\"{}\">\
         <label for=\"check-method\">Method (empty: the connection)</label>\
         <input id=\"check-method\" name=\"method\" value=\"{}\">\
         <label for=\"check-path\">Path</label>\
         <input id=\"check-path\" name=\"path\" value=\"{}\">\
         <button type=\"submit\">Check</button></form>",
        escape(&check.source),
        escape(&check.destination),
        escape(&check.method),
        escape(&check.path)
    );
    match &check.result {
        Some(Ok(r)) => {
            let _ = write!(
                m,
                "<div id=\"check-result\" role=\"status\" data-allowed=\"{}\" data-intention=\"{}\">\
                 <p><strong>{}</strong>: {} → {}</p><p>Intention: {}</p><p>Reason: {}</p></div>",
                r.allowed,
                escape(&r.intention_id),
                if r.allowed { "ALLOW" } else { "DENY" },
                escape(&r.source),
                escape(&r.destination),
                if r.intention_id.is_empty() {
                    "none (default deny)".to_owned()
                } else {
                    format!("<code>{}</code>", escape(&r.intention_id))
                },
                escape(&r.reason)
            );
        }
        Some(Err(e)) => {
            let _ = write!(
                m,
                "<div id=\"check-result\" role=\"alert\" data-error=\"true\"><p>{}</p></div>",
                escape(e)
            );
        }
        None => {}
    }
    m.push_str("</section>");
    m
}

/// The decisions known when the page was rendered; `data-after` tells the script where the
/// live stream must take over so no decision shows twice.
fn decisions_section(decisions: &[std::sync::Arc<Decision>], feeds: &[String]) -> String {
    let mut m = String::new();
    let after = decisions.first().map_or(0, |d| d.id);
    let _ = write!(
        m,
        "<section id=\"decisions\" aria-labelledby=\"dec-h\"><h2 id=\"dec-h\">Live decisions</h2>\
         <p>Every allow and deny, streamed from the sidecars ({}), newest first. \
         <span id=\"live-status\" role=\"status\" aria-live=\"polite\"></span></p>\
         <table id=\"decision-table\" data-after=\"{after}\"><caption>Decisions with the intention that matched and why</caption>{DECISION_HEAD}<tbody>",
        if feeds.is_empty() {
            "none configured".to_owned()
        } else {
            escape(&feeds.join(", "))
        }
    );
    for d in decisions {
        m.push_str(&decision_row(d));
    }
    m.push_str("</tbody></table></section>");
    m
}

fn requests_section(asks: &[std::sync::Arc<AskRecord>]) -> String {
    let mut m = String::new();
    m.push_str("<section id=\"requests\" aria-labelledby=\"req-h\"><h2 id=\"req-h\">Requests</h2>");
    if asks.is_empty() {
        m.push_str("<p>No questions asked yet in this session of the frontend. <a href=\"/\">Ask one</a>.</p>");
    } else {
        m.push_str("<ul id=\"request-list\">");
        for a in asks {
            let _ = write!(
                m,
                "<li><a href=\"/inspector/requests/{t}\">{q}</a> <code>{t}</code></li>",
                t = escape(&a.trace_id),
                q = escape(&a.question)
            );
        }
        m.push_str("</ul>");
    }
    m.push_str("</section>");
    m
}

fn verdict(v: &Result<(), String>) -> (bool, String) {
    match v {
        Ok(()) => (true, "✓ verified".to_owned()),
        Err(e) => (false, format!("✗ {}", escape(e))),
    }
}

fn claims_table(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return String::new();
    };
    let mut t = String::from("<table class=\"claims\"><tbody>");
    for (k, v) in obj {
        let shown = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = write!(
            t,
            "<tr><th scope=\"row\">{}</th><td><code>{}</code></td></tr>",
            escape(k),
            escape(&shown)
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn chain_item(i: usize, e: &ChainElement) -> String {
    let (ok, text) = verdict(&e.verified);
    let who = if i == 0 {
        format!(
            "User token for <strong>{}</strong>, issued by <code>{}</code>",
            escape(e.decoded.claims["sub"].as_str().unwrap_or("?")),
            escape(e.decoded.signer.as_deref().unwrap_or("?"))
        )
    } else {
        format!(
            "Hop {i}: <code>{}</code> passed it on",
            escape(
                e.decoded.claims["act"]["sub"]
                    .as_str()
                    .or(e.decoded.signer.as_deref())
                    .unwrap_or("?")
            )
        )
    };
    format!(
        "<li data-verified=\"{ok}\"><p>{who} — <span class=\"verdict\">{text}</span></p>\
         <details><summary>Header and claims</summary>{}{}<p>Signer certificate serial <code>{}</code></p></details></li>",
        claims_table(&e.decoded.header),
        claims_table(&e.decoded.claims),
        escape(e.decoded.signer_serial.as_deref().unwrap_or("?")),
    )
}

/// One ask's page: what was asked and answered, then the evidence for it.
pub fn request(a: &AskRecord, hops: &[std::sync::Arc<Decision>]) -> String {
    let mut m = request_summary(a);
    m.push_str(&timeline_section(a, hops));
    m.push_str(&trace_section(&a.trace_id, hops));
    m.push_str(&chain_section(&a.chain));
    m.push_str(&signatures_section(&a.answer));
    layout_with_script("Request", &m, None)
}

fn request_summary(a: &AskRecord) -> String {
    let mut m = String::new();
    let _ = write!(
        m,
        "<h1>Request <code>{}</code></h1>{NAV}<p>Question: <q id=\"question\">{}</q></p>\
         <p>Asked {} · answered with HTTP {} by {}</p>",
        escape(&a.trace_id),
        escape(&a.question),
        escape(&rfc3339(
            a.at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default()
        )),
        a.status,
        escape(
            &a.answer["agents"]
                .as_array()
                .map(|l| l
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" → "))
                .unwrap_or_default()
        )
    );
    if let Some(text) = a.answer["answer"].as_str() {
        let _ = write!(
            m,
            "<section aria-labelledby=\"ans-h\"><h2 id=\"ans-h\">Answer</h2><pre id=\"answer\">{}</pre></section>",
            escape(text)
        );
    } else if let Some(e) = a.answer["error"].as_str() {
        let _ = write!(
            m,
            "<section aria-labelledby=\"ans-h\"><h2 id=\"ans-h\">Error</h2><p id=\"answer\" role=\"alert\">{}</p></section>",
            escape(e)
        );
    }
    m
}

/// The picture of the request: the chain of signed links above the waterfall of its hops;
/// the tables below hold the same facts in full.
fn timeline_section(a: &AskRecord, hops: &[std::sync::Arc<Decision>]) -> String {
    let mut m = String::from(
        "<section id=\"timeline\" aria-labelledby=\"tl-h\"><h2 id=\"tl-h\">Timeline</h2>\
         <h3>Delegation chain</h3>",
    );
    m.push_str(&super::timeline::chain_row(&a.chain));
    m.push_str("<h3>Hops</h3>");
    if hops.is_empty() {
        m.push_str("<p role=\"status\">No sidecar has reported a hop of this trace (yet).</p>");
    } else {
        m.push_str(&super::timeline::waterfall(hops));
    }
    m.push_str("</section>");
    m
}

fn trace_section(trace_id: &str, hops: &[std::sync::Arc<Decision>]) -> String {
    let mut m = String::new();
    let start = hops.first().map_or(0, |h| h.started_ms());
    let _ = write!(
        m,
        "<section aria-labelledby=\"trace-h\"><h2 id=\"trace-h\">Trace</h2>\
         <table id=\"trace\"><caption>Every hop of trace <code>{}</code>, as its sidecars decided it, in the order the calls started</caption>\
         <thead><tr><th scope=\"col\">#</th><th scope=\"col\">Start</th><th scope=\"col\">Sidecar</th><th scope=\"col\">Call</th>\
         <th scope=\"col\">Request</th><th scope=\"col\">Decision</th><th scope=\"col\">Intention</th><th scope=\"col\">Reason</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Took</th></tr></thead><tbody>",
        escape(trace_id)
    );
    for (i, h) in hops.iter().enumerate() {
        let _ = write!(
            m,
            "<tr data-decision=\"{dec}\"><td>{}</td><td>+{} ms</td><td>{} {}</td><td><code>{}</code><br>→ <code>{}</code></td><td>{} {}</td>\
             <td><strong>{dec}</strong></td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td></tr>",
            i + 1,
            h.started_ms() - start,
            escape(&h.proxy),
            escape(&h.direction),
            escape(&h.source),
            escape(&h.destination),
            escape(h.method.as_deref().unwrap_or("")),
            escape(h.path.as_deref().unwrap_or("")),
            match (h.decision.as_str(), &h.intention_summary, &h.intention) {
                ("allow" | "deny", Some(s), _) => escape(s),
                ("allow" | "deny", None, Some(i)) => escape(i),
                ("allow" | "deny", None, None) => "none (default deny)".to_owned(),
                _ => "—".to_owned(),
            },
            escape(&h.reason),
            h.status.map(|s| s.to_string()).unwrap_or_default(),
            h.duration_ms,
            dec = escape(&h.decision),
        );
    }
    m.push_str("</tbody></table>");
    if hops.is_empty() {
        m.push_str(
            "<p role=\"status\">No sidecar has reported a decision for this trace (yet).</p>",
        );
    }
    m.push_str("</section>");
    m
}

fn chain_section(chain: &[ChainElement]) -> String {
    let mut m = String::new();
    m.push_str(
        "<section aria-labelledby=\"chain-h\"><h2 id=\"chain-h\">User token and delegation chain</h2>\
         <p>Verified here against the trust bundle: the token's signer is this frontend, each link is \
         signed by the agent it names, in order, bound to this token.</p><ol id=\"chain\">",
    );
    for (i, e) in chain.iter().enumerate() {
        m.push_str(&chain_item(i, e));
    }
    m.push_str("</ol></section>");
    m
}

/// Each agent's JWS over its part of the answer; none at all is shown as a failure, since an
/// unsigned answer cannot be attributed.
fn signatures_section(answer: &Value) -> String {
    let mut m = String::new();
    m.push_str(
        "<section aria-labelledby=\"jws-h\"><h2 id=\"jws-h\">Signed responses</h2><ul id=\"signatures\">",
    );
    let verified = answer["verified"].as_array().cloned().unwrap_or_default();
    if verified.is_empty() {
        m.push_str("<li data-verified=\"false\">✗ the answer carries no signatures</li>");
    }
    for v in verified {
        let ok = v["ok"].as_bool() == Some(true);
        let _ = write!(
            m,
            "<li data-verified=\"{ok}\">{} <code>{}</code>{}</li>",
            if ok {
                "✓ JWS verified: signed by"
            } else {
                "✗ JWS not verified:"
            },
            escape(v["agent"].as_str().unwrap_or("?")),
            if ok {
                String::new()
            } else {
                format!(" — {}", escape(v["reason"].as_str().unwrap_or("")))
            }
        );
    }
    m.push_str("</ul></section>");
    m
}
