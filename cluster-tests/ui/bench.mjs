// The fleet page's benchmark in headless Chromium; started by cluster-tests/benches/ui.rs,
// which passes GV_NODE (the node's API URL), GV_TOKEN (write), GV_CHROMIUM, GV_MEMBERS (rows
// the fleet view must show), GV_LOADS and GV_CHANGES. Prints one `RESULT {json}` line per
// measurement on stdout; progress on stderr. Clocks: in the page, `performance.timeOrigin +
// performance.now()` (Chromium), here the same in Node.js: both read the machine's wall clock.

import { chromium } from 'playwright-core';

const node = process.env.GV_NODE;
const token = process.env.GV_TOKEN;
const members = Number(process.env.GV_MEMBERS);
const loads = Number(process.env.GV_LOADS);
const changes = Number(process.env.GV_CHANGES);
// After the rendered frame, how long to keep counting bytes: a read the page makes at once
// after its first (the event stream's `ready`) belongs to the first load too.
const SETTLE_MS = 2000;
// Between changes: the page's reads of one change (and of the members' gossip that follows
// it) are over, so each change starts from an idle page.
const BETWEEN_CHANGES_MS = 1500;

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (text) => console.error(`[bench] ${text}`);
const result = (value) => console.log(`RESULT ${JSON.stringify(value)}`);

const browser = await chromium.launch({
  executablePath: process.env.GV_CHROMIUM,
  headless: true,
  chromiumSandbox: false,
  args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

// In the page before its scripts: when the fleet table first holds `rows` rows, note the start
// of the frame after the one that drew them (the rows laid out and painted).
function noteRendered(rows) {
  new MutationObserver((_, observer) => {
    if (document.querySelectorAll('#fleet-table tr[data-member]').length < rows) return;
    observer.disconnect();
    requestAnimationFrame(() => requestAnimationFrame(() => { window.benchRendered = performance.now(); }));
  }).observe(document, { childList: true, subtree: true });
}

// Resource Timing's bytes (headers and body) of every response complete by `until` (ms
// since the navigation), the page itself included; the event stream, never complete, is not.
function bytesBy(until) {
  const entries = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
  const done = entries.filter((e) => e.responseEnd > 0 && e.responseEnd <= until);
  return {
    bytes: done.reduce((sum, e) => sum + e.transferSize, 0),
    resources: done.map((e) => [new URL(e.name).pathname + new URL(e.name).search, e.transferSize, Math.round(e.startTime), Math.round(e.responseEnd)]),
  };
}

async function firstLoad(run) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  await page.addInitScript(noteRendered, members);
  await page.goto(`${node}/ui/#fleet`);
  await page.waitForFunction(() => window.benchRendered !== undefined, null, { timeout: 60000 });
  const rendered = await page.evaluate(() => window.benchRendered);
  const atRender = await page.evaluate(bytesBy, rendered);
  await sleep(SETTLE_MS);
  const settled = await page.evaluate(bytesBy, rendered + SETTLE_MS);
  const rows = await page.locator('#fleet-table tr[data-member]').count();
  await context.close();
  if (errors.length) throw new Error(`console errors: ${errors.join('; ')}`);
  log(`load ${run}: ${rows} rows rendered at ${rendered.toFixed(0)} ms, ${atRender.bytes} bytes by then, ${settled.bytes} by ${SETTLE_MS} ms later`);
  log(`  requested at / done at (ms): ${settled.resources.map(([path, , start, end]) => `${path} ${start}/${end}`).join(', ')}`);
  result({ kind: 'load', rendered_ms: rendered, rows, bytes_rendered: atRender.bytes, bytes_settled: settled.bytes, resources: settled.resources });
}

// In the page: note when a rollout of `config KEY` enters the rollouts view, for each KEY.
function noteRollouts() {
  window.benchShown = {};
  new MutationObserver(() => {
    for (const keys of document.querySelectorAll('#rollouts-list article header p:nth-of-type(1)')) {
      const key = keys.textContent.replace(/^config /, '');
      if (!(key in window.benchShown)) window.benchShown[key] = performance.timeOrigin + performance.now();
    }
  }).observe(document.getElementById('rollouts-list'), { childList: true, subtree: true });
}

// Follows the node's `/v1/watch` (its applied state): when the node applied each key.
async function watchApplied(applied, signal) {
  const response = await fetch(`${node}/v1/watch?prefix=bench-`, { headers: { Authorization: `Bearer ${token}` }, signal });
  if (!response.ok) throw new Error(`GET /v1/watch answered ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const at = now();
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(0, end).split('\n').find((line) => line.startsWith('data:'));
      buffer = buffer.slice(end + 2);
      if (data) applied.set(JSON.parse(data.slice(5)).key, at);
    }
  }
}

async function waitFor(what, condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

async function liveChanges() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${node}/ui/#rollouts`);
  await page.waitForSelector('#rollouts-list article');
  await page.waitForSelector('#live.on');
  await page.evaluate(noteRollouts);
  const applied = new Map();
  const watching = new AbortController();
  watchApplied(applied, watching.signal).catch((error) => watching.signal.aborted || log(`watch ended: ${error.message}`));
  await sleep(BETWEEN_CHANGES_MS);
  const stamp = Date.now();
  for (let index = 0; index < changes; index += 1) {
    const key = `bench-${stamp}-${index}`;
    const posted = now();
    const response = await fetch(`${node}/v1/config/${key}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ value: index }),
    });
    if (!response.ok) throw new Error(`POST /v1/config/${key} answered ${response.status}: ${await response.text()}`);
    await waitFor(`the node applying ${key}`, () => applied.has(key), 10000);
    await page.waitForFunction((k) => k in window.benchShown, key, { timeout: 10000 });
    const shown = await page.evaluate((k) => window.benchShown[k], key);
    const change = {
      kind: 'change', key, post_to_applied_ms: applied.get(key) - posted, applied_to_shown_ms: shown - applied.get(key),
      post_to_shown_ms: shown - posted,
    };
    log(`change ${index}: applied ${change.post_to_applied_ms.toFixed(1)} ms after the POST, shown ${change.applied_to_shown_ms.toFixed(1)} ms after that`);
    result(change);
    await sleep(BETWEEN_CHANGES_MS);
  }
  watching.abort();
  await context.close();
}

try {
  for (let run = 0; run < loads; run += 1) await firstLoad(run);
  await liveChanges();
} catch (error) {
  console.error(error.stack || String(error));
  process.exitCode = 1;
} finally {
  await browser.close();
}
