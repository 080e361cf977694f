// The Security Inspector's only script (same-origin, CSP script-src 'self'): it makes the
// SVID expiry countdowns tick, appends decisions as the sidecars stream them, and lights the
// mesh graph's edge of each decision's intention (and counts it). The page is complete
// without it; nothing here uses innerHTML, so streamed text is never markup.
'use strict';

function remaining(unix) {
  let left = unix - Math.floor(Date.now() / 1000);
  const fmt = (s) => s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
    : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  return left >= 0 ? `in ${fmt(left)}` : `expired ${fmt(-left)} ago`;
}

function tick() {
  for (const t of document.querySelectorAll('time.countdown[data-expires]')) {
    t.textContent = remaining(Number(t.dataset.expires));
  }
}

function short(id) {
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id || '');
  if (!m) return id || '';
  return m[1] === 'default' ? m[2] : `${m[1]}/${m[2]}`;
}

function cell(row, text, strong) {
  const td = document.createElement('td');
  if (strong) {
    const s = document.createElement('strong');
    s.textContent = text;
    td.append(s);
  } else {
    td.textContent = text;
  }
  row.append(td);
}

function decisionRow(d) {
  const tr = document.createElement('tr');
  tr.className = d.decision === 'allow' ? 'allow'
    : ['deny', 'denied_by_destination', 'error'].includes(d.decision) ? 'deny' : 'other';
  tr.dataset.decision = d.decision;
  tr.dataset.intention = d.intention || '';
  tr.dataset.id = String(d.id);
  cell(tr, d.ts);
  cell(tr, `${d.proxy} ${d.direction}`);
  cell(tr, `${short(d.source)} → ${short(d.destination)}`);
  cell(tr, d.mcp_method
    ? `MCP ${d.mcp_method}${d.mcp_tool ? ' ' + d.mcp_tool : ''}${d.user ? ' (user ' + d.user + ')' : ''}`
    : d.method && d.path ? `${d.method} ${d.path}` : '(connection)');
  cell(tr, d.decision, true);
  const decidedHere = d.decision === 'allow' || d.decision === 'deny';
  const intention = !decidedHere ? "— (the destination's sidecar decides)"
    : d.intention ? `${d.intention}${d.intention_summary ? ' ' + d.intention_summary : ''}`
    : 'none (default deny)';
  cell(tr, intention);
  cell(tr, d.reason);
  return tr;
}

// How long an edge stays lit after a decision; long enough to see, short enough that a
// burst of calls reads as a burst.
const LIT_MS = 1500;
const litTimers = new Map();

function flash(el, cls) {
  el.classList.remove('lit-allow', 'lit-deny', 'lit');
  // Reading layout restarts the transition when the same edge is lit again at once.
  void el.getBoundingClientRect();
  el.classList.add(cls);
  clearTimeout(litTimers.get(el));
  litTimers.set(el, setTimeout(() => el.classList.remove(cls), LIT_MS));
}

const SVG_NS = 'http://www.w3.org/2000/svg';

// A node's box, from the attributes the server drew it with.
function boxOf(node) {
  const box = node.querySelector('rect.box');
  const n = (a) => Number(box.getAttribute(a));
  return { x: n('x'), y: n('y'), w: n('width'), h: n('height') };
}

// A default deny has no intention, hence no edge of its own: for as long as an edge stays
// lit, a dashed red edge is drawn from the bottom of one node to the bottom of the other,
// bending below both (where no forward edge runs), and then removed. One per pair at a time;
// a second refusal restarts it. The drawing grows taller when the bend needs the room.
function flashDefaultDeny(d, from, to) {
  const svg = document.getElementById('mesh-graph');
  const edges = svg && svg.querySelector('g.edges');
  if (!edges) return;
  const pair = `${d.source} ${d.destination}`;
  let g = [...edges.querySelectorAll('g.edge.default-deny')].find((e) => e.dataset.pair === pair);
  if (!g) {
    const [a, b] = [boxOf(from), boxOf(to)];
    const [x1, y1] = [a.x + a.w / 2 - 12, a.y + a.h];
    const [x2, y2] = [b.x + b.w / 2 + 12, b.y + b.h];
    const low = Math.max(y1, y2) + 95;
    // The lowest point of the curve, where its label goes.
    const apex = Math.max(y1, y2) + 0.75 * (low - Math.max(y1, y2));
    const view = svg.viewBox.baseVal;
    if (view && apex + 24 > view.height) {
      const h = Math.ceil(apex + 24);
      svg.setAttribute('viewBox', `${view.x} ${view.y} ${view.width} ${h}`);
      svg.setAttribute('height', String(h));
    }
    g = document.createElementNS(SVG_NS, 'g');
    g.setAttribute('class', 'edge deny default-deny');
    g.dataset.pair = pair;
    g.dataset.source = d.source;
    g.dataset.destination = d.destination;
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent = `${d.source} → ${d.destination}: no intention, denied by default`;
    const line = document.createElementNS(SVG_NS, 'path');
    line.setAttribute('class', 'line');
    const f = (v) => v.toFixed(1);
    line.setAttribute('d', `M${f(x1)} ${f(y1)} C${f(x1)} ${f(low)} ${f(x2)} ${f(low)} ${f(x2)} ${f(y2)}`);
    line.setAttribute('marker-end', 'url(#arrow-deny)');
    const label = document.createElementNS(SVG_NS, 'text');
    label.setAttribute('class', 'edge-label');
    label.setAttribute('x', f((x1 + x2) / 2));
    label.setAttribute('y', f(apex + 18));
    label.setAttribute('text-anchor', 'middle');
    const action = document.createElementNS(SVG_NS, 'tspan');
    action.setAttribute('class', 'action');
    action.textContent = 'default deny';
    label.append(action);
    g.append(title, line, label);
    edges.append(g);
  }
  g.dataset.lastDecision = String(d.id);
  g.dataset.lastLit = 'deny';
  flash(g, 'lit-deny');
  clearTimeout(removeTimers.get(g));
  removeTimers.set(g, setTimeout(() => g.remove(), LIT_MS));
}
const removeTimers = new Map();

// Lights the edge of the intention that decided `d`, bumps its counters (on the edge and in
// its panel) and flashes both ends; a default deny gets an edge for as long as it is lit.
function light(d) {
  const kind = d.decision === 'allow' ? 'allowed' : d.decision === 'deny' ? 'denied' : null;
  if (!kind) return;
  const nodeOf = (end) => end && document.querySelector(`#mesh-graph g.node[data-spiffe-id="${CSS.escape(end)}"]`);
  if (!d.intention) {
    const [from, to] = [nodeOf(d.source), nodeOf(d.destination)];
    if (kind === 'denied' && from && to && from !== to) {
      flashDefaultDeny(d, from, to);
      flash(from, 'lit');
      flash(to, 'lit');
    }
    return;
  }
  const id = CSS.escape(d.intention);
  for (const g of document.querySelectorAll(`#mesh-graph g.edge[data-intention="${id}"]`)) {
    g.dataset[kind] = String(Number(g.dataset[kind] || 0) + 1);
    g.dataset.lastDecision = String(d.id);
    g.dataset.lastLit = d.decision;
    const counts = g.querySelector('text.counts');
    if (counts) counts.textContent = `✓${g.dataset.allowed} ✗${g.dataset.denied}`;
    flash(g, d.decision === 'allow' ? 'lit-allow' : 'lit-deny');
    for (const span of document.querySelectorAll(`[data-for="${id}"][data-count="${kind}"]`)) {
      span.textContent = g.dataset[kind];
    }
  }
  for (const end of [d.source, d.destination]) {
    const node = nodeOf(end);
    if (node) flash(node, 'lit');
  }
}

function live() {
  const table = document.getElementById('decision-table');
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const status = document.getElementById('live-status');
  let seen = 0;
  const source = new EventSource(`/inspector/decisions/stream?after=${table.dataset.after || 0}`);
  source.onopen = () => { status.textContent = 'live'; };
  source.onerror = () => { status.textContent = 'reconnecting…'; };
  source.onmessage = (e) => {
    let d;
    try { d = JSON.parse(e.data); } catch { return; }
    if (body.querySelector(`tr[data-id="${Number(d.id)}"]`)) return;
    body.prepend(decisionRow(d));
    light(d);
    while (body.rows.length > 200) body.deleteRow(-1);
    seen += 1;
    status.textContent = `live · ${seen} new`;
  };
}

// A node or an edge of the graph opens its panel through the URL's fragment (CSS :target,
// so it works without script too); here the page stays where it was instead of jumping to
// the panel, and the panel is scrolled into view only as far as needed.
function panels() {
  const graph = document.getElementById('mesh-graph');
  if (!graph) return;
  graph.addEventListener('click', (e) => {
    const a = e.target.closest('a[href^="#panel-"]');
    if (!a) return;
    e.preventDefault();
    const y = window.scrollY;
    location.hash = a.getAttribute('href');
    window.scrollTo(window.scrollX, y);
    document.getElementById(a.getAttribute('href').slice(1))?.scrollIntoView({ block: 'nearest' });
  });
}

tick();
setInterval(tick, 1000);
live();
panels();
