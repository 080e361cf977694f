//! The mesh graph at the top of `/inspector`: one node per registered service, one per
//! external destination (`[[inspector.external]]`) and one for `*`, and one edge per
//! intention, laid out in layers (callers left, providers right) here in Rust and drawn as
//! inline SVG, so the page needs no layout library and nothing from another origin.
//!
//! Every node and edge is an SVG `<a>` to a details panel on the same page (`#panel-…`,
//! shown by CSS `:target`), so Tab reaches each one, Enter opens its panel, and all of it
//! works without the script; `inspector.js` only lights edges as decisions stream in and
//! keeps their counters.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::mesh::{HeldSvid, IntentionRow, MeshView, short};
use crate::config::ExternalConfig;
use crate::page::escape;

/// Width of a node's box, in SVG user units (the graph scales to the page's width).
const NODE_W: f64 = 190.0;
/// Height of a node's box: a name and a SPIFFE ID on two lines.
const NODE_H: f64 = 70.0;
/// Horizontal distance between the left edges of two layers.
const COL_W: f64 = 300.0;
/// Vertical distance between the tops of two nodes of one layer.
const ROW_H: f64 = 110.0;
/// Space around the drawing, and below it for edges that bend under the nodes they skip.
const MARGIN: f64 = 24.0;
/// How far below its ends an edge that skips a layer bends, so it passes under the nodes
/// between (a cubic reaches ¾ of its control points' offset).
const BEND: f64 = 100.0;

/// What a node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A registration entry.
    Service,
    /// Named by an intention but not registered (no workload can hold its identity yet).
    Unregistered,
    /// `*` in an intention: any service.
    Any,
    /// A destination outside the mesh; the string says what it is (`llm`, `mcp`, …).
    External(String),
}

impl NodeKind {
    fn attr(&self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Unregistered => "unregistered",
            Self::Any => "any",
            Self::External(_) => "external",
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The short name (`planner`), `*`, or the external destination's name.
    pub label: String,
    /// The SPIFFE ID, for services (registered or not).
    pub spiffe_id: Option<String>,
    /// What it stands for.
    pub kind: NodeKind,
    /// The SVID the node holds for it, if any.
    pub svid: Option<HeldSvid>,
    /// More about an external destination (`ollama at http://…`).
    pub detail: String,
    layer: usize,
    row: usize,
}

/// One edge: an intention, or the wire from a service to an external destination.
#[derive(Debug, Clone)]
pub struct GraphEdge {
    /// The intention's id; `None` for a link to an external destination.
    pub intention: Option<String>,
    /// `allow` or `deny` (`call` for an external link).
    pub action: String,
    /// Index of the source node.
    pub from: usize,
    /// Index of the destination node.
    pub to: usize,
    /// The intention's document.
    pub spec: Value,
    /// Decisions that matched it so far: allowed, denied.
    pub counts: (u64, u64),
}

/// The mesh as nodes and edges, laid out.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Services first (in entry order), then intention-only names, `*`, externals.
    pub nodes: Vec<GraphNode>,
    /// Intentions (in the server's order), then external links.
    pub edges: Vec<GraphEdge>,
    layers: usize,
    rows: usize,
}

/// A service name (`planner`, `team/planner`) or SPIFFE ID as the SPIFFE ID it stands for,
/// as intentions and the CLI read it; `*` stays `*`.
fn resolve(name: &str, trust_domain: &str) -> String {
    if name == "*" || name.starts_with("spiffe://") || trust_domain.is_empty() {
        return name.to_owned();
    }
    match name.split_once('/') {
        Some((ns, svc)) => format!("spiffe://{trust_domain}/ns/{ns}/sa/{svc}"),
        None => format!("spiffe://{trust_domain}/ns/default/sa/{name}"),
    }
}

impl Graph {
    /// Builds and lays out the graph of `mesh`'s services and intentions, the external
    /// destinations, and each intention's decision counts (`id → (allowed, denied)`).
    pub fn build(
        mesh: &MeshView,
        externals: &[ExternalConfig],
        counts: &HashMap<String, (u64, u64)>,
    ) -> Self {
        let td = mesh
            .server
            .as_ref()
            .map(|s| s.trust_domain.clone())
            .unwrap_or_default();
        let mut nodes: Vec<GraphNode> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let node = |label: String, id: Option<String>, kind: NodeKind| GraphNode {
            label,
            spiffe_id: id,
            kind,
            svid: None,
            detail: String::new(),
            layer: 0,
            row: 0,
        };
        for s in mesh.services.as_deref().unwrap_or_default() {
            if index.contains_key(&s.spiffe_id) {
                continue;
            }
            index.insert(s.spiffe_id.clone(), nodes.len());
            let mut n = node(
                short(&s.spiffe_id),
                Some(s.spiffe_id.clone()),
                NodeKind::Service,
            );
            n.svid = s.svid.clone();
            nodes.push(n);
        }
        let mut edges = Vec::new();
        let intentions: &[IntentionRow] = mesh.intentions.as_deref().unwrap_or_default();
        for i in intentions {
            let mut end = |field: &str| {
                let key = resolve(i.spec[field].as_str().unwrap_or("?"), &td);
                *index.entry(key.clone()).or_insert_with(|| {
                    nodes.push(if key == "*" {
                        node("*".into(), None, NodeKind::Any)
                    } else {
                        node(short(&key), Some(key.clone()), NodeKind::Unregistered)
                    });
                    nodes.len() - 1
                })
            };
            let (from, to) = (end("source"), end("destination"));
            edges.push(GraphEdge {
                intention: Some(i.id.clone()),
                action: i.spec["action"].as_str().unwrap_or("?").to_owned(),
                from,
                to,
                spec: i.spec.clone(),
                counts: counts.get(&i.id).copied().unwrap_or_default(),
            });
        }
        for e in externals {
            let Some(&from) = index.get(&resolve(&e.from, &td)) else {
                continue;
            };
            let mut n = node(e.name.clone(), None, NodeKind::External(e.kind.clone()));
            n.detail = e.detail.clone();
            nodes.push(n);
            edges.push(GraphEdge {
                intention: None,
                action: "call".into(),
                from,
                to: nodes.len() - 1,
                spec: Value::Null,
                counts: (0, 0),
            });
        }
        let mut g = Self {
            nodes,
            edges,
            layers: 1,
            rows: 1,
        };
        g.layout();
        g
    }

    /// Layers by the longest path from a node nothing calls (the entry point lands on the
    /// left), ignoring the edges that close a cycle; external destinations in a last layer
    /// of their own (providers on the right); within a layer, nodes follow their callers'
    /// rows so edges cross less.
    fn layout(&mut self) {
        let n = self.nodes.len();
        if n == 0 {
            return;
        }
        let forward = self.forward_edges();
        let mut layer = vec![0usize; n];
        // Longest path on a DAG: n rounds of relaxation always suffice.
        for _ in 0..n {
            let mut changed = false;
            for &(u, v) in &forward {
                if layer[v] < layer[u] + 1 {
                    layer[v] = layer[u] + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let inner = self
            .nodes
            .iter()
            .zip(&layer)
            .filter(|(node, _)| !matches!(node.kind, NodeKind::External(_)))
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        for (i, node) in self.nodes.iter().enumerate() {
            if matches!(node.kind, NodeKind::External(_)) {
                layer[i] = inner + 1;
            }
        }
        let layers = layer.iter().max().copied().unwrap_or(0) + 1;
        let mut row = vec![0usize; n];
        let mut rows = 1;
        for l in 0..layers {
            let mut here: Vec<(f64, usize)> = (0..n)
                .filter(|&i| layer[i] == l)
                .map(|i| {
                    let callers: Vec<f64> = forward
                        .iter()
                        .filter(|&&(u, v)| v == i && layer[u] < l)
                        .map(|&(u, _)| row[u] as f64)
                        .collect();
                    let at = if callers.is_empty() {
                        f64::MAX
                    } else {
                        callers.iter().sum::<f64>() / callers.len() as f64
                    };
                    (at, i)
                })
                .collect();
            here.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (r, &(_, i)) in here.iter().enumerate() {
                row[i] = r;
            }
            rows = rows.max(here.len());
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.layer = layer[i];
            node.row = row[i];
        }
        self.layers = layers;
        self.rows = rows;
    }

    /// The edges that do not close a cycle (depth-first from the nodes nothing calls, then
    /// from the rest), as (from, to) without self-loops or duplicates.
    fn forward_edges(&self) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut called = vec![false; n];
        for e in &self.edges {
            if e.from != e.to && !out[e.from].contains(&e.to) {
                out[e.from].push(e.to);
                called[e.to] = true;
            }
        }
        // 0: not seen, 1: on the current path, 2: done.
        let mut state = vec![0u8; n];
        let mut kept = Vec::new();
        let starts: Vec<usize> = (0..n)
            .filter(|&i| !called[i])
            .chain((0..n).filter(|&i| called[i]))
            .collect();
        for s in starts {
            if state[s] != 0 {
                continue;
            }
            // An explicit stack of (node, next child to look at): no recursion depth limit.
            let mut stack = vec![(s, 0usize)];
            state[s] = 1;
            while let Some(top) = stack.last_mut() {
                let u = top.0;
                if let Some(&v) = out[u].get(top.1) {
                    top.1 += 1;
                    match state[v] {
                        0 => {
                            kept.push((u, v));
                            state[v] = 1;
                            stack.push((v, 0));
                        }
                        2 => kept.push((u, v)),
                        // On the path: this edge closes a cycle.
                        _ => {}
                    }
                } else {
                    state[u] = 2;
                    stack.pop();
                }
            }
        }
        kept
    }

    fn pos(&self, i: usize) -> (f64, f64) {
        let node = &self.nodes[i];
        (
            MARGIN + node.layer as f64 * COL_W,
            MARGIN + node.row as f64 * ROW_H,
        )
    }

    /// How many edges leave (`out`) or reach a node from the next layer or the previous one.
    fn degree(&self, node: usize, out: bool) -> usize {
        self.edges
            .iter()
            .filter(|e| {
                let (here, there) = if out { (e.from, e.to) } else { (e.to, e.from) };
                here == node && self.nodes[there].layer.abs_diff(self.nodes[here].layer) == 1
            })
            .count()
    }

    fn size(&self) -> (f64, f64) {
        // Room below the nodes only when some edge bends there.
        let bends = self
            .edges
            .iter()
            .any(|e| e.from == e.to || self.nodes[e.to].layer != self.nodes[e.from].layer + 1);
        (
            2.0 * MARGIN + (self.layers - 1) as f64 * COL_W + NODE_W,
            2.0 * MARGIN
                + (self.rows - 1) as f64 * ROW_H
                + NODE_H
                + if bends { BEND + 10.0 } else { 0.0 },
        )
    }

    /// The SVG path of edge `e` and where its label goes. Edges between the same two nodes
    /// are spread apart (`k` of `of`) so each stays visible and clickable.
    fn geometry(&self, e: &GraphEdge, k: usize, of: usize) -> (String, f64, f64) {
        let (ux, uy) = self.pos(e.from);
        let (vx, vy) = self.pos(e.to);
        let spread = (k as f64 - (of as f64 - 1.0) / 2.0) * 16.0;
        let (lu, lv) = (self.nodes[e.from].layer, self.nodes[e.to].layer);
        if e.from == e.to {
            // A loop over the top of the node.
            let (x, y) = (ux + NODE_W / 2.0 + spread, uy);
            return (
                format!(
                    "M{:.1} {y:.1} C{:.1} {:.1} {:.1} {:.1} {:.1} {y:.1}",
                    x - 20.0,
                    x - 40.0,
                    y - 45.0,
                    x + 40.0,
                    y - 45.0,
                    x + 20.0
                ),
                x,
                y - 38.0,
            );
        }
        if lv == lu + 1 {
            let (x1, y1) = (ux + NODE_W, uy + NODE_H / 2.0 + spread);
            let (x2, y2) = (vx, vy + NODE_H / 2.0 + spread);
            let mid = (x1 + x2) / 2.0;
            // Where along the curve the label goes: near the end that does not fan out, so
            // the labels of a fan-out (or fan-in) sit at their own rows, not on each other.
            let t = match (self.degree(e.from, true) > 1, self.degree(e.to, false) > 1) {
                (true, false) => 0.75,
                (false, true) => 0.25,
                _ => 0.5,
            };
            let s = 1.0 - t;
            let lx = s * s * s * x1 + 3.0 * s * t * mid + t * t * t * x2;
            let ly = y1 + (y2 - y1) * (3.0 * t * t - 2.0 * t * t * t);
            return (
                format!("M{x1:.1} {y1:.1} C{mid:.1} {y1:.1} {mid:.1} {y2:.1} {x2:.1} {y2:.1}"),
                lx,
                ly - 6.0,
            );
        }
        if lv > lu {
            // Skips a layer: bend below the nodes in between.
            let (x1, y1) = (ux + NODE_W, uy + NODE_H / 2.0 + 10.0);
            let (x2, y2) = (vx, vy + NODE_H / 2.0 + 10.0);
            let bend = BEND + spread.abs() * 2.0;
            return (
                format!(
                    "M{x1:.1} {y1:.1} C{:.1} {:.1} {:.1} {:.1} {x2:.1} {y2:.1}",
                    x1 + 60.0,
                    y1 + bend,
                    x2 - 60.0,
                    y2 + bend
                ),
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0 + 0.75 * bend - 6.0,
            );
        }
        // Backwards or within a layer: from the bottom of one to the bottom of the other.
        let (x1, y1) = (ux + NODE_W / 2.0 + spread, uy + NODE_H);
        let (x2, y2) = (vx + NODE_W / 2.0 + spread, vy + NODE_H);
        let low = y1.max(y2) + 60.0 + spread.abs();
        (
            format!("M{x1:.1} {y1:.1} C{x1:.1} {low:.1} {x2:.1} {low:.1} {x2:.1} {y2:.1}"),
            (x1 + x2) / 2.0,
            low - 10.0,
        )
    }

    /// The graph as an inline `<svg>`, followed by its details panels.
    pub fn render(&self) -> String {
        let mut m = String::new();
        let (w, h) = self.size();
        let services = self
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Service)
            .count();
        let intentions = self.edges.iter().filter(|e| e.intention.is_some()).count();
        let _ = write!(
            m,
            "<figure id=\"graph\" class=\"graph\"><svg id=\"mesh-graph\" role=\"group\" \
             viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" aria-labelledby=\"graph-cap\">\
             <defs>\
             <marker id=\"arrow-allow\" class=\"arrow allow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"14\" markerHeight=\"14\" orient=\"auto-start-reverse\"><path d=\"M0 0L10 5L0 10z\"/></marker>\
             <marker id=\"arrow-deny\" class=\"arrow deny\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"14\" markerHeight=\"14\" orient=\"auto-start-reverse\"><path d=\"M0 0L10 5L0 10z\"/></marker>\
             <marker id=\"arrow-call\" class=\"arrow call\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"14\" markerHeight=\"14\" orient=\"auto-start-reverse\"><path d=\"M0 0L10 5L0 10z\"/></marker>\
             </defs><g class=\"edges\">"
        );
        let mut pairs: HashMap<(usize, usize), usize> = HashMap::new();
        for e in &self.edges {
            *pairs.entry((e.from, e.to)).or_default() += 1;
        }
        let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
        for (i, e) in self.edges.iter().enumerate() {
            let k = seen.entry((e.from, e.to)).or_default();
            let (d, lx, ly) = self.geometry(e, *k, pairs[&(e.from, e.to)]);
            *k += 1;
            m.push_str(&self.edge_svg(i, e, &d, lx, ly));
        }
        m.push_str("</g><g class=\"nodes\">");
        for (i, n) in self.nodes.iter().enumerate() {
            m.push_str(&self.node_svg(i, n));
        }
        let _ = write!(
            m,
            "</g></svg><figcaption id=\"graph-cap\">{services} services and {intentions} intentions. \
             Solid green arrows allow, dashed red arrows deny, dotted grey arrows leave the mesh; \
             each is labelled, and counts its decisions (✓ allowed, ✗ denied). Tab to a node or an \
             arrow and press Enter for its details.</figcaption></figure>"
        );
        m.push_str(&self.panels());
        m
    }

    fn edge_svg(&self, i: usize, e: &GraphEdge, d: &str, lx: f64, ly: f64) -> String {
        let from = &self.nodes[e.from].label;
        let to = &self.nodes[e.to].label;
        let (cls, marker) = match e.action.as_str() {
            "allow" => ("allow", "arrow-allow"),
            "deny" => ("deny", "arrow-deny"),
            _ => ("call", "arrow-call"),
        };
        // The action above the line, the counters below it: both fit between two layers.
        let label = match &e.intention {
            Some(_) => format!(
                "<text class=\"edge-label\" x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\"><tspan class=\"action\">{}</tspan></text>\
                 <text class=\"edge-label counts\" x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">✓{} ✗{}</text>",
                escape(&e.action),
                ly + 22.0,
                e.counts.0,
                e.counts.1
            ),
            None => format!(
                "<text class=\"edge-label\" x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\"><tspan class=\"action\">external</tspan></text>"
            ),
        };
        let title = match &e.intention {
            Some(id) => format!(
                "{from} → {to}: {} (intention {id}); {}",
                e.action,
                permissions_text(&e.spec)
            ),
            None => format!("{from} calls {to}, outside the mesh"),
        };
        let data = match &e.intention {
            Some(id) => format!(
                " data-intention=\"{}\" data-action=\"{}\" data-allowed=\"{}\" data-denied=\"{}\"",
                escape(id),
                escape(&e.action),
                e.counts.0,
                e.counts.1
            ),
            None => " data-action=\"call\" data-external=\"true\"".into(),
        };
        format!(
            "<g class=\"edge {cls}\" id=\"edge-{i}\"{data} data-source=\"{}\" data-destination=\"{}\">\
             <a href=\"#panel-edge-{i}\" aria-label=\"{}\"><title>{}</title>\
             <path class=\"hit\" d=\"{d}\"/><path class=\"line\" d=\"{d}\" marker-end=\"url(#{marker})\"/>{label}</a></g>",
            escape(from),
            escape(to),
            escape(&title),
            escape(&title),
        )
    }

    fn node_svg(&self, i: usize, n: &GraphNode) -> String {
        let (x, y) = self.pos(i);
        let cx = x + NODE_W / 2.0;
        let id_attr = match (&n.kind, &n.spiffe_id) {
            (NodeKind::Service, Some(id)) => format!(" data-spiffe-id=\"{}\"", escape(id)),
            (_, Some(id)) => format!(" data-ref=\"{}\"", escape(id)),
            _ => String::new(),
        };
        // The SPIFFE ID on two lines (trust domain, then path): one line would not fit.
        let (line1, line2, title) = match (&n.kind, &n.spiffe_id) {
            (NodeKind::Any, _) => (
                "any service".to_owned(),
                "(* in an intention)".to_owned(),
                "* : any service".to_owned(),
            ),
            (NodeKind::External(kind), _) => (
                format!("external{}", if kind.is_empty() { "" } else { ": " }) + kind.as_str(),
                "outside the mesh".to_owned(),
                format!("{} (external {kind}) {}", n.label, n.detail),
            ),
            (kind, Some(id)) => {
                let rest = id.strip_prefix("spiffe://").unwrap_or(id);
                let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let note = if *kind == NodeKind::Unregistered {
                    " (not registered)"
                } else {
                    ""
                };
                (
                    format!("spiffe://{td}"),
                    path.to_owned(),
                    format!("{} {id}{note}", n.label),
                )
            }
            (_, None) => (String::new(), String::new(), n.label.clone()),
        };
        format!(
            "<g class=\"node {kind}\" id=\"node-{i}\" data-kind=\"{kind}\" data-name=\"{label}\"{id_attr}>\
             <a href=\"#panel-node-{i}\" aria-label=\"{title}\"><title>{title}</title>\
             <rect class=\"box\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"8\"/>\
             <text class=\"name\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\
             <text class=\"id\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text class=\"id\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></a></g>",
            y + 24.0,
            y + 44.0,
            escape(&line1),
            y + 60.0,
            escape(&line2),
            kind = n.kind.attr(),
            label = escape(&n.label),
            title = escape(&title),
        )
    }

    /// One panel per node and per edge; CSS shows the one the URL's fragment names.
    fn panels(&self) -> String {
        let mut m = String::from(
            "<div class=\"panels\" id=\"graph-panels\"><p class=\"panel-hint\">Select a node or an \
             arrow (Tab, then Enter) to see its SVID or its intention here.</p>",
        );
        for (i, n) in self.nodes.iter().enumerate() {
            m.push_str(&self.node_panel(i, n));
        }
        for (i, e) in self.edges.iter().enumerate() {
            m.push_str(&self.edge_panel(i, e));
        }
        m.push_str("</div>");
        m
    }

    fn edge_link(&self, i: usize) -> String {
        let e = &self.edges[i];
        format!(
            "<a href=\"#panel-edge-{i}\">{} → {}</a> <strong>{}</strong>",
            escape(&self.nodes[e.from].label),
            escape(&self.nodes[e.to].label),
            escape(&e.action)
        )
    }

    fn node_panel(&self, i: usize, n: &GraphNode) -> String {
        let mut m = format!(
            "<section class=\"panel\" id=\"panel-node-{i}\" tabindex=\"-1\" aria-labelledby=\"panel-node-{i}-h\">\
             <h3 id=\"panel-node-{i}-h\">{}</h3>",
            escape(&n.label)
        );
        match (&n.kind, &n.spiffe_id) {
            (NodeKind::Any, _) => m.push_str("<p>Any service: <code>*</code> in an intention.</p>"),
            (NodeKind::External(kind), _) => {
                let _ = write!(
                    m,
                    "<p>Outside the mesh{}: it holds no SPIFFE identity, and the service that \
                     calls it is the one that answers for the call (<code>[[inspector.external]]</code>).</p>{}",
                    if kind.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", escape(kind))
                    },
                    if n.detail.is_empty() {
                        String::new()
                    } else {
                        format!("<p class=\"detail\">{}</p>", escape(&n.detail))
                    }
                );
            }
            (kind, Some(id)) => {
                let _ = write!(m, "<p>SPIFFE ID <code>{}</code></p>", escape(id));
                if *kind == NodeKind::Unregistered {
                    m.push_str(
                        "<p>Named by an intention but not registered: no workload holds this identity.</p>",
                    );
                }
            }
            (_, None) => {}
        }
        if n.kind == NodeKind::Service {
            m.push_str(&svid_details(n.svid.as_ref()));
        }
        let list = |incoming: bool| -> String {
            let items: String = self
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.intention.is_some() && if incoming { e.to == i } else { e.from == i }
                })
                .map(|(k, _)| format!("<li>{}</li>", self.edge_link(k)))
                .collect();
            if items.is_empty() {
                "<p>none</p>".into()
            } else {
                format!("<ul>{items}</ul>")
            }
        };
        let _ = write!(
            m,
            "<h4>Intentions out</h4>{}<h4>Intentions in</h4>{}</section>",
            list(false),
            list(true)
        );
        m
    }

    fn edge_panel(&self, i: usize, e: &GraphEdge) -> String {
        let from = &self.nodes[e.from];
        let to = &self.nodes[e.to];
        let mut m = format!(
            "<section class=\"panel\" id=\"panel-edge-{i}\" tabindex=\"-1\" aria-labelledby=\"panel-edge-{i}-h\">\
             <h3 id=\"panel-edge-{i}-h\">{} → {}: {}</h3>",
            escape(&from.label),
            escape(&to.label),
            escape(&e.action)
        );
        let Some(id) = &e.intention else {
            let _ = write!(
                m,
                "<p><a href=\"#panel-node-{}\">{}</a> calls this destination outside the mesh; \
                 no intention governs it.</p></section>",
                e.from,
                escape(&from.label)
            );
            return m;
        };
        let s = |k: &str| escape(e.spec[k].as_str().unwrap_or(""));
        let _ = write!(
            m,
            "<dl class=\"intention\"><dt>Intention</dt><dd><code>{}</code></dd>\
             <dt>Source</dt><dd><a href=\"#panel-node-{}\"><code>{}</code></a></dd>\
             <dt>Destination</dt><dd><a href=\"#panel-node-{}\"><code>{}</code></a></dd>\
             <dt>Action</dt><dd><strong>{}</strong></dd><dt>Description</dt><dd>{}</dd>\
             <dt>Permissions</dt><dd>{}</dd>\
             <dt>Decisions</dt><dd><span data-count=\"allowed\" data-for=\"{id}\">{}</span> allowed, \
             <span data-count=\"denied\" data-for=\"{id}\">{}</span> denied</dd></dl>",
            escape(id),
            e.from,
            s("source"),
            e.to,
            s("destination"),
            s("action"),
            if s("description").is_empty() {
                "—".to_owned()
            } else {
                s("description")
            },
            match e.spec.get("permissions") {
                Some(Value::Array(p)) if !p.is_empty() => format!(
                    "<pre class=\"permissions\">{}</pre>",
                    escape(&serde_json::to_string_pretty(p).unwrap_or_default())
                ),
                _ => "all requests (no L7 or MCP permissions)".to_owned(),
            },
            e.counts.0,
            e.counts.1,
            id = escape(id),
        );
        // "Can X call Y?", filled in; the method and path are the reader's to add.
        let _ = write!(
            m,
            "<form method=\"get\" action=\"/inspector/check\" class=\"check\">\
             <p><strong>Can {src} call {dst}?</strong></p>\
             <label for=\"edge-{i}-source\">Source</label><input id=\"edge-{i}-source\" name=\"source\" value=\"{src}\">\
             <label for=\"edge-{i}-destination\">Destination</label><input id=\"edge-{i}-destination\" name=\"destination\" value=\"{dst}\">\
             <label for=\"edge-{i}-method\">Method (empty: the connection)</label><input id=\"edge-{i}-method\" name=\"method\">\
             <label for=\"edge-{i}-path\">Path</label><input id=\"edge-{i}-path\" name=\"path\">\
             <button type=\"submit\">Check</button></form></section>",
            src = escape(&check_name(from)),
            dst = escape(&check_name(to)),
        );
        m
    }
}

/// What the check form is filled with for a node: its SPIFFE ID, or `*`.
fn check_name(n: &GraphNode) -> String {
    n.spiffe_id.clone().unwrap_or_else(|| n.label.clone())
}

/// The permissions in words for a tooltip: `all requests`, or each rule's JSON.
fn permissions_text(spec: &Value) -> String {
    match spec.get("permissions") {
        Some(Value::Array(p)) if !p.is_empty() => format!(
            "permissions: {}",
            p.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => "all requests".to_owned(),
    }
}

/// The SVID part of a service's panel: serial, expiry countdown, chain.
fn svid_details(svid: Option<&HeldSvid>) -> String {
    let Some(s) = svid else {
        return "<p>No SVID held by the node (no workload of it has asked).</p>".into();
    };
    let chain: String = s
        .chain
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "<li>{}: {} serial <code>{}</code></li>",
                if i == 0 { "leaf" } else { "CA" },
                c.spiffe_id.as_deref().map_or_else(
                    || "(no SPIFFE ID)".to_owned(),
                    |id| format!("<code>{}</code>", escape(id))
                ),
                escape(&c.serial)
            )
        })
        .collect();
    format!(
        "<dl class=\"svid\"><dt>SVID serial</dt><dd><code class=\"serial\">{}</code></dd>\
         <dt>Expires</dt><dd>{}</dd><dt>Chain</dt><dd><ol class=\"chain\">{chain}</ol></dd></dl>",
        escape(&s.serial),
        super::view::countdown(s.not_after)
    )
}

/// How many decisions each intention decided so far: `id → (allowed, denied)`.
pub fn counts<'a>(
    decisions: impl IntoIterator<Item = &'a super::feed::Decision>,
) -> HashMap<String, (u64, u64)> {
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for d in decisions {
        let Some(id) = &d.intention else { continue };
        let c = out.entry(id.clone()).or_default();
        match d.decision.as_str() {
            "allow" => c.0 += 1,
            "deny" => c.1 += 1,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
