// Headless Chromium through a whole visit, as a person makes it: the frontend's page, the
// real oidc-provider's login and consent pages, back to the frontend, a question asked from
// the page by keyboard, the request's page in the inspector (trace, chain, JWS checks), then
// the inspector itself: the SPIFFE IDs it lists, the mesh graph (its nodes and edges read
// from the SVG's data attributes, lit live by a denied call and by an ask, its panels opened
// by keyboard), a denied call showing up live, the check form driven by keyboard, and a
// refusal by default deny drawn as an edge of its own while it is lit. Every
// page at 1280×800, where none may scroll sideways. Prints one JSON object and saves
// screenshots (the graph, the timeline and the ask page among them).
// Run with: PUPPETEER_MODULE=.cache/node/node_modules/puppeteer-core/lib/puppeteer/puppeteer-core.js \
//           node browser_login.mjs FRONTEND_URL SCREENSHOT_DIR DENIED_CALL_URL
// DENIED_CALL_URL is a plain local sidecar port whose destination the intentions refuse
// (`unix:///path/to-gateway.sock#/v1/chat/completions` for a sidecar's Unix socket, or an
// http:// URL); the script POSTs to it once the live view is connected. At the end it runs
// $DELETE_DENY_INTENTION (a JSON array: the command deleting that refusal's intention) and
// calls again, for a refusal by default deny.
import { pathToFileURL } from 'node:url';
import { request } from 'node:http';
import { resolve, join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const [frontend, shots, deniedUrl] = process.argv.slice(2);

// POSTs to DENIED_CALL_URL (the planner's sidecar port for the gateway); the status.
async function callDenied() {
  const deniedBody = JSON.stringify({ model: 'agentmesh-default', messages: [{ role: 'user', content: 'from the inspector test' }] });
  if (deniedUrl.startsWith('unix://')) {
    // fetch() cannot dial a Unix socket; node's http module can.
    const [socketPath, path] = deniedUrl.slice('unix://'.length).split('#');
    return new Promise((done, fail) => {
      const req = request({ socketPath, path, method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => { res.resume(); done(res.statusCode); });
      req.on('error', fail);
      req.end(deniedBody);
    });
  }
  const refused = await fetch(deniedUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: deniedBody });
  return refused.status;
}
const { default: puppeteer } = await import(pathToFileURL(resolve(process.env.PUPPETEER_MODULE)).href);
mkdirSync(shots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const out = {};
const errors = [];
try {
  const page = await browser.newPage();
  // The size the inspector must be readable at without scrolling sideways.
  await page.setViewport({ width: 1280, height: 800 });
  const sideways = () => page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
  out.scrolls_sideways = {};
  // A CSP violation or a script error on the frontend's pages is a failure, not noise (the
  // provider's pages and the browser's own favicon fetches are not ours to judge).
  page.on('pageerror', (e) => errors.push(`pageerror at ${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    const text = m.text();
    if (m.type() === 'error' && page.url().startsWith(frontend)
        && (/Content Security Policy|Refused to/.test(text) || !/Failed to load resource/.test(text))) {
      errors.push(`console at ${page.url()}: ${text}`);
    }
  });
  const home = await page.goto(`${frontend}/`);
  out.csp = home.headers()['content-security-policy'];
  out.frame = home.headers()['x-frame-options'];
  await page.screenshot({ path: join(shots, '1-home.png') });
  await Promise.all([page.waitForNavigation(), page.click('a[href="/login"]')]);
  // oidc-provider's devInteractions login form.
  await page.type('input[name="login"]', 'alice');
  await page.type('input[name="password"]', 'any password');
  await page.screenshot({ path: join(shots, '2-provider-login.png') });
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  // Consent, then back to the frontend.
  if (await page.$('input[name="prompt"][value="consent"]')) {
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  }
  await page.waitForSelector('#question');
  out.logged_in = await page.$eval('main', (m) => m.textContent);
  await page.screenshot({ path: join(shots, '3-logged-in.png') });

  // By keyboard: type into the question, Tab to the Ask button, Enter.
  await page.focus('#question');
  await page.keyboard.type('How does agentmesh decide who may call whom?');
  await page.keyboard.press('Tab');
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  out.answer = await page.$eval('#answer', (a) => a.textContent);
  out.signatures_on_answer = await page.$$eval('#signatures li', (l) => l.map((x) => x.textContent));
  out.ask_page = await page.evaluate(() => ({
    text: document.getElementById('answer-text').textContent,
    agents: [...document.querySelectorAll('#agents li')].map((l) => l.textContent),
    signatures: [...document.querySelectorAll('#signatures li')].map((l) => ({ verified: l.dataset.verified, text: l.textContent })),
    raw_folded: document.querySelector('details#raw pre#answer') !== null && !document.getElementById('raw').open,
    timeline_link: document.getElementById('request-link')?.getAttribute('href') || null,
  }));
  out.scrolls_sideways.ask = await sideways();
  await page.screenshot({ path: join(shots, '4-answer.png'), fullPage: true });

  // The request's page.
  await Promise.all([page.waitForNavigation(), page.click('#request-link')]);
  // The sidecars' decisions for this trace arrive within milliseconds; reload until every
  // hop is in (or give up and report what was there).
  for (let i = 0; i < 50; i++) {
    const rows = await page.$$eval('#trace tbody tr', (r) => r.length);
    if (rows >= 6) break;
    await new Promise((r) => setTimeout(r, 200));
    await page.reload();
  }
  out.request = {
    url: page.url(),
    trace: await page.$$eval('#trace tbody tr', (r) => r.map((x) => ({
      decision: x.dataset.decision, text: x.textContent,
    }))),
    chain: await page.$$eval('#chain > li', (l) => l.map((x) => ({
      verified: x.dataset.verified, text: x.querySelector('p').textContent,
    }))),
    jws: await page.$$eval('#signatures li', (l) => l.map((x) => ({
      verified: x.dataset.verified, text: x.textContent,
    }))),
    waterfall: await page.$$eval('#waterfall g.bar', (l) => l.map((g) => ({
      decision: g.dataset.decision,
      start_ms: Number(g.dataset.startMs),
      duration_ms: Number(g.dataset.durationMs),
      x: Number(g.querySelector('rect').getAttribute('x')),
      width: Number(g.querySelector('rect').getAttribute('width')),
      rendered_width: g.querySelector('rect').getBoundingClientRect().width,
    }))),
    chain_links: await page.$$eval('#chain-links li[data-verified]', (l) => l.map((x) => ({
      role: x.dataset.role, verified: x.dataset.verified, text: x.textContent,
    }))),
  };
  out.scrolls_sideways.request = await sideways();
  await page.screenshot({ path: join(shots, '5-request.png'), fullPage: true });
  await (await page.$('#timeline')).screenshot({ path: join(shots, '9-timeline.png') });

  // The inspector: the SPIFFE IDs it shows, then a denied call arriving live.
  await page.goto(`${frontend}/inspector`);
  out.spiffe_ids = await page.$$eval('#services [data-spiffe-id]', (l) => l.map((x) => x.dataset.spiffeId));
  out.countdown_before = await page.$eval('#services time.countdown', (t) => t.textContent);
  out.graph = await page.evaluate(() => ({
    nodes: [...document.querySelectorAll('#mesh-graph g.node')].map((g) => ({
      kind: g.dataset.kind, name: g.dataset.name, spiffe_id: g.dataset.spiffeId || null,
    })),
    edges: [...document.querySelectorAll('#mesh-graph g.edge[data-intention]')].map((g) => ({
      intention: g.dataset.intention, action: g.dataset.action,
      source: g.dataset.source, destination: g.dataset.destination,
      dash: getComputedStyle(g.querySelector('path.line')).strokeDasharray,
      label: g.querySelector('.action').textContent,
    })),
  }));
  out.scrolls_sideways.inspector = await sideways();
  await page.waitForFunction(() => document.getElementById('live-status').textContent.startsWith('live'), { timeout: 30000 });
  const after = Number(await page.$eval('#decision-table', (t) => t.dataset.after));
  const edgeState = () => page.$$eval('#mesh-graph g.edge[data-intention]', (l) => l.map((g) => ({
    intention: g.dataset.intention, action: g.dataset.action,
    allowed: Number(g.dataset.allowed), denied: Number(g.dataset.denied),
    last_decision: Number(g.dataset.lastDecision || 0), last_lit: g.dataset.lastLit || null,
  })));
  out.edges_before = await edgeState();
  // The refusal below must flash the deny edge red; watch for it before making the call, with
  // no time limit (the test's own patience bounds the whole run).
  const redFlash = page.waitForFunction(
    () => document.querySelector('#mesh-graph g.edge.lit-deny[data-action="deny"]') !== null,
    { polling: 'mutation', timeout: 0 });
  out.denied_status = await callDenied();
  await page.waitForFunction(
    (after) => [...document.querySelectorAll('#decision-table tbody tr[data-decision="deny"]')]
      .some((r) => Number(r.dataset.id) > after),
    { timeout: 30000 }, after);
  await redFlash;
  out.red_flash = true;
  // An ask made while the graph is open lights every edge it crosses.
  out.lighting_ask_status = await page.evaluate(async () => (await fetch('/ask', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ question: 'Which edges does this question cross?' }),
  })).status);
  await page.waitForFunction(
    (after) => [...document.querySelectorAll('#mesh-graph g.edge[data-intention]')]
      .every((g) => Number(g.dataset.lastDecision || 0) > after),
    { polling: 'mutation', timeout: 0 }, after);
  out.edges_after = await edgeState();
  await (await page.$('#graph')).screenshot({ path: join(shots, '8-graph.png') });
  // By keyboard: a node's panel (its SVID), then the deny edge's (the check, filled in).
  await page.evaluate(() => document.querySelector('#mesh-graph g.node[data-name="planner"] a').focus());
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash.startsWith('#panel-node-'), { timeout: 0 });
  out.node_panel = await page.evaluate(() => {
    const p = document.querySelector(location.hash);
    return { shown: getComputedStyle(p).display !== 'none', text: p.textContent,
      serial: p.querySelector('code.serial')?.textContent || null };
  });
  await page.evaluate(() => document.querySelector('#mesh-graph g.edge[data-action="deny"] a').focus());
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash.startsWith('#panel-edge-'), { timeout: 0 });
  out.edge_panel = await page.evaluate(() => {
    const p = document.querySelector(location.hash);
    return { shown: getComputedStyle(p).display !== 'none', text: p.textContent,
      source: p.querySelector('input[name="source"]').value,
      destination: p.querySelector('input[name="destination"]').value };
  });
  await page.screenshot({ path: join(shots, '8-graph-edge-panel.png') });
  out.live_denied = await page.$$eval('#decision-table tbody tr[data-decision="deny"]', (rows, after) => rows
    .filter((r) => Number(r.dataset.id) > after)
    .map((r) => ({ intention: r.dataset.intention, text: r.textContent })), after);
  // The countdown ticks on its own (the script), without a reload.
  await page.waitForFunction((before) => document.querySelector('#services time.countdown').textContent !== before,
    { timeout: 10000 }, out.countdown_before);
  out.countdown_after = await page.$eval('#services time.countdown', (t) => t.textContent);
  await page.screenshot({ path: join(shots, '6-inspector-live-denied.png'), fullPage: true });

  // The check form, by keyboard only.
  await page.focus('#check-source');
  await page.keyboard.type('planner');
  await page.keyboard.press('Tab');
  await page.keyboard.type('gateway');
  await page.keyboard.press('Tab');
  await page.keyboard.type('POST');
  await page.keyboard.press('Tab');
  await page.keyboard.type('/v1/chat/completions');
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  out.check = await page.$eval('#check-result', (d) => ({
    allowed: d.dataset.allowed, intention: d.dataset.intention, text: d.textContent,
  }));
  await page.screenshot({ path: join(shots, '7-check.png'), fullPage: true });
  // Scripts off (a new page in the same session): the tables come complete from the server,
  // the graph is drawn server-side, and a panel opens through a plain link (CSS :target).
  const noScript = await browser.newPage();
  await noScript.setJavaScriptEnabled(false);
  await noScript.setViewport({ width: 1280, height: 800 });
  await noScript.goto(new URL('/inspector', frontend).href);
  out.no_script = await noScript.evaluate(() => ({
    intention_rows: document.querySelectorAll('#intention-table tbody tr').length,
    service_rows: document.querySelectorAll('#services tbody tr').length,
    decision_rows: document.querySelectorAll('#decision-table tbody tr').length,
    graph_nodes: document.querySelectorAll('#mesh-graph g.node[data-spiffe-id]').length,
    graph_edges: document.querySelectorAll('#mesh-graph g.edge[data-intention]').length,
  }));
  // Following the deny edge's link (what a click or Enter does) opens its panel by :target.
  const edgeHref = await noScript.$eval('#mesh-graph g.edge[data-action="deny"] a',
    (a) => a.getAttribute('href') || a.getAttribute('xlink:href'));
  out.no_script.edge_href = edgeHref;
  await noScript.goto(new URL(edgeHref, noScript.url()).href);
  out.no_script.edge_panel_shown = await noScript.evaluate(
    () => getComputedStyle(document.querySelector(location.hash)).display !== 'none');
  await noScript.goto(out.request.url);
  out.no_script.trace_rows = await noScript.$$eval('#trace tbody tr', (r) => r.length);
  out.no_script.waterfall_bars = await noScript.$$eval('#waterfall g.bar', (l) => l.length);
  await noScript.close();

  // A default deny (no intention decides the pair) has no edge in the SVG: the live page draws
  // one for as long as it stays lit, then removes it. DELETE_DENY_INTENTION (a JSON argv) takes
  // away the planner -> gateway deny, so the same call is then refused by default; it is
  // repeated until the sidecar has the new policy and the drawn edge shows.
  await page.goto(new URL('/inspector', frontend).href);
  await page.waitForFunction(() => document.getElementById('live-status').textContent.startsWith('live'), { timeout: 30000 });
  const [cmd, ...cmdArgs] = JSON.parse(process.env.DELETE_DENY_INTENTION);
  execFileSync(cmd, cmdArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
  const drawn = page.waitForFunction(
    () => document.querySelector('#mesh-graph g.edges g.edge.default-deny.lit-deny') !== null,
    { polling: 'mutation', timeout: 0 });
  let shown = false;
  drawn.then(() => { shown = true; });
  while (!shown) {
    await callDenied();
    await new Promise((done) => setTimeout(done, 300));
  }
  out.default_deny = await page.$eval('#mesh-graph g.edges g.edge.default-deny', (g) => ({
    source: g.dataset.source, destination: g.dataset.destination,
    label: g.querySelector('.action').textContent, title: g.querySelector('title').textContent,
    dash: getComputedStyle(g.querySelector('path.line')).strokeDasharray,
    marker: g.querySelector('path.line').getAttribute('marker-end'),
    intention_edges_now: document.querySelectorAll('#mesh-graph g.edge[data-intention]').length,
  }));
  await (await page.$('#graph')).screenshot({ path: join(shots, '9-default-deny.png') });
  // It is gone once no refusal keeps it lit (no time limit: the test's patience bounds it).
  await page.waitForFunction(() => document.querySelector('#mesh-graph g.edge.default-deny') === null,
    { polling: 'mutation', timeout: 0 });
  out.default_deny.removed = true;
  out.errors = errors;
  console.log(JSON.stringify(out));
} catch (e) {
  console.error(`${e.stack}\nso far: ${JSON.stringify(out)}\nerrors: ${errors.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
