//! A request page's timeline: the trace's hops as a waterfall (inline SVG, one bar per hop
//! placed by when it started and sized by how long it took, as Jaeger draws a trace) and the
//! delegation chain as a row of signed links, each marked ✓ or ✗.
//!
//! Drawn here rather than in a script: the page stays complete without script, and SVG
//! geometry is attributes, which the Content-Security-Policy allows where inline styles
//! would not be.

use std::fmt::Write as _;
use std::sync::Arc;

use super::feed::Decision;
use super::mesh::short;
use super::requests::ChainElement;
use crate::page::escape;

/// The waterfall's width in SVG user units (it scales to the page).
const WIDTH: f64 = 1000.0;
/// Where the bars start: the hop's name is written to the left of it.
const BARS_X: f64 = 330.0;
/// The width of the bars' area; the decision and duration are written to its right.
const BARS_W: f64 = 520.0;
/// One hop's row.
const ROW_H: f64 = 28.0;
/// The axis above the rows.
const HEAD_H: f64 = 26.0;
/// A hop that took 0 ms still shows as a sliver.
const MIN_BAR: f64 = 2.0;

/// How a decision is drawn: `allow` solid green, a refusal (`deny`, `denied_by_destination`,
/// `error`) hatched red, anything else (a caller's sidecar forwarding) grey and dashed; each
/// bar also says its decision in words, so colour is never the only signal.
fn class_of(decision: &str) -> &'static str {
    match decision {
        "allow" => "allow",
        "deny" | "denied_by_destination" | "error" => "deny",
        _ => "other",
    }
}

/// The waterfall of `hops` (in start order, as `DecisionLog::for_trace` returns them).
pub fn waterfall(hops: &[Arc<Decision>]) -> String {
    if hops.is_empty() {
        return String::new();
    }
    let t0 = hops
        .iter()
        .map(|h| h.started_ms())
        .min()
        .unwrap_or_default();
    let end = hops
        .iter()
        .map(|h| h.started_ms() + i128::from(h.duration_ms))
        .max()
        .unwrap_or_default();
    let total = (end - t0).max(1) as f64;
    let scale = BARS_W / total;
    let height = HEAD_H + ROW_H * hops.len() as f64 + 6.0;
    let mut m = String::new();
    let _ = write!(
        m,
        "<svg id=\"waterfall\" role=\"img\" viewBox=\"0 0 {WIDTH} {height:.0}\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         aria-labelledby=\"waterfall-title\"><title id=\"waterfall-title\">Waterfall: {} hops over {total:.0} ms; \
         green bars were allowed, hatched red bars refused, grey dashed bars forwarded by the caller's sidecar</title>\
         <defs><pattern id=\"wf-hatch\" width=\"8\" height=\"8\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
         <rect class=\"hatch-bg\" width=\"8\" height=\"8\"/><line class=\"hatch-line\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"8\"/></pattern></defs>\
         <line class=\"axis\" x1=\"{BARS_X}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\"/>\
         <text x=\"{BARS_X}\" y=\"14\">0 ms</text><text x=\"{:.0}\" y=\"14\" text-anchor=\"middle\">{:.0} ms</text>\
         <text x=\"{:.0}\" y=\"14\" text-anchor=\"end\">{total:.0} ms</text>",
        hops.len(),
        HEAD_H - 6.0,
        BARS_X + BARS_W,
        HEAD_H - 6.0,
        BARS_X + BARS_W / 2.0,
        total / 2.0,
        BARS_X + BARS_W,
    );
    for (i, h) in hops.iter().enumerate() {
        let start = (h.started_ms() - t0) as f64;
        let x = BARS_X + start * scale;
        let w = (h.duration_ms as f64 * scale).max(MIN_BAR);
        let y = HEAD_H + ROW_H * i as f64;
        let cls = class_of(&h.decision);
        let fill = if cls == "deny" {
            " fill=\"url(#wf-hatch)\""
        } else {
            ""
        };
        let name = format!(
            "{}. {} → {}",
            i + 1,
            short(&h.source),
            short(&h.destination)
        );
        let side = format!("{} {}", h.proxy, h.direction);
        let _ = write!(
            m,
            "<g class=\"bar {cls}\" data-hop=\"{n}\" data-decision=\"{dec}\" data-start-ms=\"{start:.0}\" \
             data-duration-ms=\"{dur}\"><title>{name} at {side}: {dec}, started +{start:.0} ms, took {dur} ms</title>\
             <text x=\"4\" y=\"{ty:.1}\">{name_e} <tspan class=\"side\">({side_e})</tspan></text>\
             <rect x=\"{x:.2}\" y=\"{ry:.1}\" width=\"{w:.2}\" height=\"{rh:.1}\" rx=\"2\"{fill}/>\
             <text class=\"decision\" x=\"{tx:.0}\" y=\"{ty:.1}\">{dec} · {dur} ms</text></g>",
            n = i + 1,
            dec = escape(&h.decision),
            dur = h.duration_ms,
            name = escape(&name),
            side = escape(&side),
            name_e = escape(&name),
            side_e = escape(&side),
            ty = y + ROW_H / 2.0 + 4.0,
            ry = y + 5.0,
            rh = ROW_H - 10.0,
            tx = BARS_X + BARS_W + 10.0,
        );
    }
    m.push_str("</svg>");
    m
}

/// The chain as a row: the user, the frontend that signed the user token, each agent that
/// signed a link, and the hop the last link names (its `aud`). Each is marked with the
/// check of the element that vouches for it.
pub fn chain_row(chain: &[ChainElement]) -> String {
    let Some(token) = chain.first() else {
        return "<p id=\"chain-links\">No user token was recorded for this request.</p>".into();
    };
    let mut items: Vec<(String, &'static str, String, bool)> = Vec::new();
    let ok = |e: &ChainElement| e.verified.is_ok();
    let why = |e: &ChainElement| match &e.verified {
        Ok(()) => "verified".to_owned(),
        Err(r) => format!("not verified: {r}"),
    };
    items.push((
        token.decoded.claims["sub"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        "user",
        format!("the user, named by the user token ({})", why(token)),
        ok(token),
    ));
    items.push((
        short(token.decoded.signer.as_deref().unwrap_or("?")),
        "issuer",
        format!("signed the user token ({})", why(token)),
        ok(token),
    ));
    for link in &chain[1..] {
        let signer = link.decoded.claims["act"]["sub"]
            .as_str()
            .or(link.decoded.signer.as_deref())
            .unwrap_or("?");
        items.push((
            short(signer),
            "link",
            format!("signed a delegation link ({})", why(link)),
            ok(link),
        ));
    }
    if let Some(last) = chain.last().filter(|_| chain.len() > 1)
        && let Some(aud) = last.decoded.claims["aud"].as_str()
    {
        items.push((
            short(aud),
            "audience",
            format!(
                "named as the next hop by the last signed link ({})",
                why(last)
            ),
            ok(last),
        ));
    }
    let mut m = String::from(
        "<ol id=\"chain-links\" class=\"chain-row\" aria-label=\"Delegation chain, as signed links\">",
    );
    for (i, (name, role, title, ok)) in items.into_iter().enumerate() {
        if i > 0 {
            m.push_str("<li class=\"sep\" aria-hidden=\"true\">→</li>");
        }
        let _ = write!(
            m,
            "<li data-role=\"{role}\" data-verified=\"{ok}\" title=\"{}\">{} {}</li>",
            escape(&title),
            if ok { "✓" } else { "✗" },
            escape(&name)
        );
    }
    m.push_str("</ol>");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ts: &str, duration_ms: u64, decision: &str) -> Arc<Decision> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "ts": ts, "direction": "inbound", "decision": decision, "reason": "r",
                "source": "spiffe://td/ns/default/sa/a", "destination": "spiffe://td/ns/default/sa/b",
                "duration_ms": duration_ms,
            }))
            .unwrap(),
        )
    }

    fn attr(bar: &str, name: &str) -> f64 {
        let at = bar.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        bar[at..at + bar[at..].find('"').unwrap()].parse().unwrap()
    }

    fn element(claims: serde_json::Value, signer: &str, ok: bool) -> ChainElement {
        ChainElement {
            decoded: super::super::requests::Decoded {
                claims,
                signer: Some(format!("spiffe://td/ns/default/sa/{signer}")),
                ..Default::default()
            },
            verified: if ok { Ok(()) } else { Err("bad link".into()) },
        }
    }

    #[test]
    fn the_chain_row_names_each_signer_and_the_last_links_audience_with_its_check() {
        let chain = [
            element(serde_json::json!({"sub": "alice"}), "frontend", true),
            element(
                serde_json::json!({"act": {"sub": "spiffe://td/ns/default/sa/planner"},
                    "aud": "spiffe://td/ns/default/sa/executor"}),
                "planner",
                true,
            ),
            element(
                serde_json::json!({"act": {"sub": "spiffe://td/ns/default/sa/executor"},
                    "aud": "spiffe://td/ns/default/sa/gateway"}),
                "executor",
                false,
            ),
        ];
        let row = chain_row(&chain);
        let items: Vec<&str> = row
            .split("<li data-role=")
            .skip(1)
            .map(|li| &li[li.find('>').unwrap() + 1..li.find("</li>").unwrap()])
            .collect();
        assert_eq!(
            items,
            [
                "✓ alice",
                "✓ frontend",
                "✓ planner",
                "✗ executor",
                "✗ gateway"
            ]
        );
        assert!(row.contains("not verified: bad link"));
        assert!(chain_row(&[]).contains("No user token"));
    }

    #[test]
    fn bars_start_where_their_hop_started_and_are_as_long_as_it_took() {
        // Ends at .100 after 100 ms (starts at 0), .090 after 60 (starts at 30), .050 after 0.
        let hops = [
            hop("2026-12-03T10:00:00.100Z", 100, "allow"),
            hop("2026-12-03T10:00:00.090Z", 60, "deny"),
            hop("2026-12-03T10:00:00.050Z", 0, "forwarded"),
        ];
        let svg = waterfall(&hops);
        let bars: Vec<&str> = svg.split("<g class=\"bar ").skip(1).collect();
        assert_eq!(bars.len(), 3);
        let rect = |b: &str| b[b.find("<rect").unwrap()..].to_owned();
        let (w0, w1, w2) = (
            attr(&rect(bars[0]), "width"),
            attr(&rect(bars[1]), "width"),
            attr(&rect(bars[2]), "width"),
        );
        assert!((w0 - BARS_W).abs() < 0.01, "{w0}");
        assert!((w1 / w0 - 0.6).abs() < 0.01, "{w1}");
        assert_eq!(w2, MIN_BAR);
        assert!((attr(&rect(bars[1]), "x") - (BARS_X + 0.3 * BARS_W)).abs() < 0.01);
        assert!(bars[1].starts_with("deny") && bars[1].contains("url(#wf-hatch)"));
        assert!(bars[2].starts_with("other"));
        assert!(waterfall(&[]).is_empty());
    }
}
