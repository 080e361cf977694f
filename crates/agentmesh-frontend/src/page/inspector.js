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

// Lights the edge of the intention that decided `d`, bumps its counters (on the edge and in
// its panel) and flashes both ends. A default deny has no intention, hence no edge.
function light(d) {
  const kind = d.decision === 'allow' ? 'allowed' : d.decision === 'deny' ? 'denied' : null;
  if (!kind || !d.intention) return;
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
    const node = end && document.querySelector(`#mesh-graph g.node[data-spiffe-id="${CSS.escape(end)}"]`);
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
