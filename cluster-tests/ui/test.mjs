// Drives the fleet page in headless Chromium against a running cluster; started by
// cluster-tests/tests/ui.rs, which passes the nodes and tokens in the environment:
// GV_NODES (API URLs, comma-separated), GV_TOKEN (write), GV_READ_TOKEN (read), GV_BINARY
// (grapevine), GV_CHROMIUM, GV_SCREENSHOTS, and GV_DOCS_SCREENSHOTS (docs/ui, when the
// screenshots docs/ui.md shows are to be refreshed). Exits non-zero on the first failed check.

import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const nodes = process.env.GV_NODES.split(',');
const [first, second] = nodes;
const token = process.env.GV_TOKEN;
const readToken = process.env.GV_READ_TOKEN;
const shots = process.env.GV_SCREENSHOTS;
const docShots = process.env.GV_DOCS_SCREENSHOTS;
const started = Date.now();

function step(text) {
  console.error(`[ui ${((Date.now() - started) / 1000).toFixed(1)} s] ${text}`);
}

function check(condition, text) {
  if (!condition) throw new Error(`check failed: ${text}`);
}

// The CLI, as an operator runs it, against one node.
function cli(node, ...args) {
  const out = execFileSync(process.env.GV_BINARY, [...args, '--node', node, '--json'], {
    env: { ...process.env, GRAPEVINE_TOKEN: token, GRAPEVINE_NODE: '' },
  });
  return JSON.parse(out.toString());
}

// The same, without blocking this script's event loop, for steps that time the page meanwhile.
async function cliAsync(node, ...args) {
  const { stdout } = await promisify(execFile)(process.env.GV_BINARY, [...args, '--node', node, '--json'], {
    env: { ...process.env, GRAPEVINE_TOKEN: token, GRAPEVINE_NODE: '' },
  });
  return JSON.parse(stdout);
}

async function apiGet(node, path) {
  const response = await fetch(`${node}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  check(response.ok, `GET ${path} answered ${response.status}`);
  return response.json();
}

async function until(what, condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.GV_CHROMIUM,
  headless: true,
  chromiumSandbox: false,
  args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

const problems = [];
const urls = [];

// A desktop page (1280 px), or a phone's (390 x 844, a mobile viewport that honours the
// page's `<meta name="viewport">`).
async function openPage({ phone = false } = {}) {
  const context = await browser.newContext(phone
    ? { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1 }
    : { viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  // A value run as markup would fire `alert`: any dialog of the page's own is a failure.
  page.on('dialog', (dialog) => {
    problems.push(`a dialog fired: ${dialog.type()} ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  page.on('request', (request) => urls.push(request.url()));
  return page;
}

// One of the screenshots docs/ui.md shows, when they are being refreshed: the window only
// (1280 x 900, or a phone's), which keeps each file small.
async function docShot(page, name) {
  if (docShots) await page.screenshot({ path: `${docShots}/${name}.png` });
}

async function view(page, name) {
  await page.click(`nav a[data-view="${name}"]`);
  await page.waitForSelector(`#view-${name}:not([hidden])`);
}

async function signIn(page, secret) {
  await page.click('#sign-in');
  await page.fill('#token', secret);
  await page.click('#use-token');
}

// Whether the node at `node` answers `path` with a success, with the write token.
async function holds(node, path) {
  const response = await fetch(`${node}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  return response.ok;
}

// The most a change may take to show once the page's node holds it. The page reads again on
// the node's next event (coalesced over 250 ms), at most every 300 ms (MIN_REFRESH_MS), and
// draws: about 300 ms on a quiet machine (docs/benchmarks.md, "The fleet page"); 1.5 s leaves
// room for a CI machine loaded with other tests.
const SHOWN_WITHIN_MS = 1500;

// How long after the page's node first held something (`onNode`, its API polled every 20 ms
// for up to `timeoutMs`) the page showed it (`locator`). Start it before the action. Fails
// past SHOWN_WITHIN_MS: the cluster may take its time (a revert waits for health checks),
// the page may not.
async function shownAfterNode(what, onNode, locator, timeoutMs) {
  const shown = locator.waitFor({ timeout: timeoutMs + SHOWN_WITHIN_MS }).then(() => Date.now());
  shown.catch(() => {});
  const deadline = Date.now() + timeoutMs;
  while (!(await onNode())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} on the node`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const held = Date.now();
  const after = Math.max(0, (await shown) - held);
  step(`${what}: shown ${after} ms after the node held it`);
  check(after <= SHOWN_WITHIN_MS, `${what} showed within ${SHOWN_WITHIN_MS} ms of the node holding it (${after} ms)`);
}

// Presses Tab from the view's link in the header until the focus has been on each of
// `actions`' buttons of the rollout `generation`, and leaves it on the last one reached; fails
// if one is never reached.
async function tabTo(page, generation, actions) {
  await page.focus('nav a[aria-current="page"]');
  const reached = new Set();
  for (let press = 0; press < 80 && reached.size < actions.length; press += 1) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const element = document.activeElement;
      const article = element && element.closest('article[data-generation]');
      return { action: element && element.dataset.action, generation: article && article.dataset.generation };
    });
    if (focused.generation === generation && actions.includes(focused.action)) reached.add(focused.action);
  }
  check(reached.size === actions.length, `Tab reaches ${actions.join(', ')} of ${generation} (reached ${[...reached].join(', ') || 'none'})`);
}

async function focusedAction(page) {
  return page.evaluate(() => {
    const element = document.activeElement;
    const article = element && element.closest('article[data-generation]');
    return `${article ? article.dataset.generation : '-'}/${element ? element.dataset.action || element.tagName : '-'}`;
  });
}

try {
  const page = await openPage();
  const response = await page.goto(`${first}/ui/`);
  check(response.status() === 200, `/ui/ answered ${response.status()}`);
  check((response.headers()['content-security-policy'] || '').includes("default-src 'self'"), 'a strict CSP on /ui/');

  step('fleet: every member listed, read anonymously');
  await page.waitForSelector('#fleet-table tbody tr[data-member]');
  await until('three members', async () => (await page.locator('#fleet-table tr[data-member]').count()) === 3, 10000);
  check((await page.textContent('#principal')).includes('anonymous (read)'), 'anonymous reads');

  step('the write token, typed once');
  await signIn(page, token);
  await page.waitForSelector('#principal:has-text("token:tests (write)")');
  await page.waitForSelector('#live.on');
  // A reload would lose this mark: every later check proves the page was not reloaded.
  await page.evaluate(() => { window.notReloaded = true; });

  step('a change made from the CLI on another node appears live');
  await view(page, 'keys');
  const put = Date.now();
  const limits = shownAfterNode('the CLI change', () => holds(first, '/v1/config/limits'),
    page.locator('#config-list [data-key="limits"]'), 5000);
  await cliAsync(second, 'config', 'put', 'limits', '--value', '{"burst": 50}', '--emergency');
  await limits;
  step(`shown ${Date.now() - put} ms after the CLI started`);
  await page.screenshot({ path: `${shots}/fleet-before-rollouts.png`, fullPage: true }).catch(() => {});

  step('a waved rollout: the canary applied, the later wave waiting');
  // Never judged (a million samples first): on a loaded machine a slow health check must not
  // revert it by itself while the page steers it.
  const waved = cli(first, 'flag', 'set', 'checkout', '--on', '--waves', '1,100%', '--bake', '10m',
    '--min-samples', '1000000').generation;
  await view(page, 'rollouts');
  const article = page.locator(`article[data-generation="${waved}"]`);
  await article.waitFor({ timeout: 3000 });
  await until('the canary applied', async () =>
    (await article.locator('[data-wave="0"] .chip:not(.pending)').count()) === 1, 5000);
  check(await article.locator('[data-wave="1"].closed').count() === 1, 'the second wave waits');
  const gate = await article.locator('[data-wave="1"] .gate').textContent();
  check(gate.includes('waits on wave 0'), `the gate says what it waits on: ${gate}`);
  await page.screenshot({ path: `${shots}/rollouts-waved.png`, fullPage: true });
  await docShot(page, 'rollouts');

  step('the keyboard reaches each control, and redraws keep the focus on it');
  await tabTo(page, waved, ['pause', 'promote', 'rollback']);
  const focusedBefore = await focusedAction(page);
  check(focusedBefore === `${waved}/rollback`, `the focus is on rollback: ${focusedBefore}`);
  // Two ticks of the bake clock, then a full redraw on a change's event.
  await new Promise((resolve) => setTimeout(resolve, 2200));
  const redrawn = cli(first, 'config', 'put', 'focus-check', '--value', '1', '--emergency').generation;
  await page.locator(`#rollouts-list article[data-generation="${redrawn}"]`).waitFor({ timeout: 3000 });
  const focusedAfter = await focusedAction(page);
  check(focusedAfter === focusedBefore, `the focus stays through the redraws: ${focusedAfter}`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#confirm[open]');
  check(/Roll back/.test(await page.textContent('#confirm-text')), 'Enter opens the rollback confirmation');
  // A change redraws the list behind the open dialog: the button that opened it is replaced.
  const behind = cli(first, 'config', 'put', 'focus-check', '--value', '2', '--emergency').generation;
  await page.locator(`#rollouts-list article[data-generation="${behind}"]`).waitFor({ state: 'attached', timeout: 3000 });
  await page.keyboard.press('Escape');
  await page.waitForSelector('#confirm', { state: 'hidden' });
  // The dialog's `close` event, which gives the focus back, comes in a task of its own.
  const refocused = await page.waitForFunction((before) => {
    const element = document.activeElement;
    const article = element && element.closest('article[data-generation]');
    return `${article ? article.dataset.generation : '-'}/${element.dataset.action || element.tagName}` === before;
  }, focusedBefore, { timeout: 2000 }).then(() => true, () => false);
  check(refocused, `Escape cancels, and the focus is back on rollback (${await focusedAction(page)})`);
  check((await apiGet(first, `/v1/rollouts/${waved}`)).reverted === false, 'the cancelled rollback changed nothing');

  step('pause from the page, confirmed through the API');
  await article.locator('button[data-action="pause"]').click();
  const confirmation = await page.textContent('#confirm-text');
  check(/hold back the 2 hosts/.test(confirmation), `the confirmation names the hosts: ${confirmation}`);
  await page.click('#confirm-ok');
  await until('the pause in the API', async () => (await apiGet(second, `/v1/rollouts/${waved}`)).controls.paused === true, 5000);
  await article.locator('.state.paused').waitFor({ timeout: 3000 });
  check(await article.locator('button[data-action="resume"]').count() === 1, 'resume offered once paused');
  await tabTo(page, waved, ['resume']);

  step('a scheduled rollout: marked scheduled, with its start and the time left');
  const scheduled = cli(first, 'config', 'put', 'later', '--value', '1', '--in', '1h').generation;
  const held = page.locator(`article[data-generation="${scheduled}"]`);
  await held.locator('.state.paused').waitFor({ timeout: 3000 });
  const heldState = await held.locator('.state').first().textContent();
  check(heldState === 'scheduled', `the state says scheduled: ${heldState}`);
  const holdText = await held.locator('.hold').textContent();
  check(/scheduled to start at .*, in \d+ s: no wave opens before/.test(holdText), `the hold says when: ${holdText}`);
  cli(first, 'rollback', scheduled);
  await held.locator('.state.reverted').waitFor({ timeout: 3000 });

  step('the keys page: variants, targeting, playground');
  await view(page, 'keys');
  await page.waitForSelector('#flags-list [data-key="checkout"]');
  await page.selectOption('#playground-flag', 'checkout');
  // The page's node may be outside the paused rollout's canary: evaluate the desired definition.
  await page.check('#playground-desired');
  await page.fill('#playground-context', '{"targetingKey": "user-7"}');
  await page.click('#playground-evaluate');
  await page.waitForSelector('#playground-result:has-text("variant")');
  const evaluation = JSON.parse(await page.textContent('#playground-result'));
  check(evaluation.variant === 'on' && evaluation.value === true, `the evaluator answered: ${JSON.stringify(evaluation)}`);
  await page.screenshot({ path: `${shots}/keys.png`, fullPage: true });
  await docShot(page, 'flags');

  step('markup in a value, a variant name and metadata renders as text');
  const markup = '<img src=x onerror=alert(1)>';
  const definition = {
    state: 'ENABLED',
    variants: { [markup]: `<b>bold</b>${markup}`, plain: '<script>alert(2)</script>' },
    defaultVariant: markup,
    metadata: { owner: markup, [`<script>alert(3)</script>`]: 'team' },
  };
  const flagFile = join(mkdtempSync(join(tmpdir(), 'gv-ui-')), 'markup.json');
  writeFileSync(flagFile, JSON.stringify(definition));
  cli(first, 'flag', 'set', 'markup', '--file', flagFile, '--emergency');
  cli(first, 'config', 'put', 'markup-config', '--value', JSON.stringify(`</pre>${markup}`), '--emergency');
  const markupFlag = page.locator('#flags-list [data-key="markup"]');
  await markupFlag.waitFor({ timeout: 3000 });
  await page.locator('#config-list [data-key="markup-config"]').waitFor({ timeout: 3000 });
  const flagText = await markupFlag.textContent();
  check(flagText.includes(`${markup}: "<b>bold</b>${markup}"`) && flagText.includes('<script>alert(3)</script>'),
    `the variants and metadata show as text: ${flagText}`);
  check((await page.textContent('#config-list [data-key="markup-config"]')).includes(`</pre>${markup}`), 'the config value shows as text');
  await page.selectOption('#playground-flag', 'markup');
  await page.uncheck('#playground-desired');
  await page.click('#playground-evaluate');
  // The earlier evaluation's answer also names a variant: wait for this one's.
  await page.waitForSelector('#playground-result:has-text("onerror")');
  check(JSON.parse(await page.textContent('#playground-result')).variant === markup, 'the evaluator names the variant as text');
  await view(page, 'history');
  await page.waitForSelector('#history-list [data-generation] pre:has-text("onerror")');
  await view(page, 'keys');
  const injected = await page.evaluate(() => document.querySelectorAll('img, b, script:not([src]), main script').length);
  check(injected === 0, `no element made from a value (${injected} found)`);

  step('promote from the page: the next wave opens, shown live');
  await view(page, 'rollouts');
  await article.locator('button[data-action="promote"]').click();
  const promotion = await page.textContent('#confirm-text');
  check(/2 hosts \(/.test(promotion), `the confirmation names the hosts: ${promotion}`);
  const promoted = Date.now();
  const opened = shownAfterNode('wave 1 opening', async () => (await apiGet(first, `/v1/rollouts/${waved}`)).waves[1].open,
    article.locator('[data-wave="1"].open'), 5000);
  await page.click('#confirm-ok');
  await opened;
  await until('the second wave applied', async () =>
    (await article.locator('[data-wave="1"] .chip:not(.pending)').count()) === 2, 5000);
  step(`wave 1 shown open and applied ${Date.now() - promoted} ms after the click`);

  step('rollback from the page');
  await article.locator('button[data-action="rollback"]').click();
  check(/revert it on all 3 hosts/.test(await page.textContent('#confirm-text')), 'the rollback names the hosts');
  const rolledBack = shownAfterNode('the rollback', async () => (await apiGet(first, `/v1/rollouts/${waved}`)).reverted,
    article.locator('.revert:has-text("rolled back by an operator")'), 5000);
  await page.click('#confirm-ok');
  await rolledBack;
  await until('the rollback on another node', async () => (await apiGet(second, `/v1/rollouts/${waved}`)).reverted === true, 5000);

  step('a bad change, reverted by the cluster, shown with its reason without a reload');
  await view(page, 'rollouts');
  const bad = cli(first, 'config', 'put', 'risky', '--value', '"bad"', '--waves', '1,100%', '--bake', '3s', '--min-samples', '5').generation;
  const reverted = page.locator(`article[data-generation="${bad}"] .revert`);
  // The cluster's health checks decide when (up to 30 s); the page must follow within the bound.
  await shownAfterNode('the revert', async () => (await apiGet(first, `/v1/rollouts/${bad}`)).reverted, reverted, 30000);
  const reason = await reverted.textContent();
  step(`revert shown: ${reason}`);
  check(/anomaly quorum reached/.test(reason), `the revert names its reason: ${reason}`);
  check(await page.evaluate(() => window.notReloaded === true), 'the page was not reloaded');
  await page.screenshot({ path: `${shots}/rollouts-reverted.png`, fullPage: true });

  step('history and fleet views');
  await view(page, 'history');
  await page.waitForSelector(`#history-list [data-generation="${bad}"] .revert`);
  await page.waitForSelector(`#history-list [data-generation="${waved}"] .chain`);
  await page.screenshot({ path: `${shots}/history.png`, fullPage: true });
  await docShot(page, 'history');
  await view(page, 'fleet');
  await page.waitForSelector('#fleet-summary:has-text("hosts applied the newest change")');
  await page.screenshot({ path: `${shots}/fleet.png`, fullPage: true });
  await docShot(page, 'fleet');

  step('phone width: every view fits 390 px');
  const phone = await openPage({ phone: true });
  await phone.goto(`${first}/ui/#fleet`);
  await signIn(phone, token);
  await phone.waitForSelector('#principal:has-text("token:tests (write)")');
  // Each view once drawn: the keys view by its config list, since on a heavily loaded machine
  // the cluster may have reverted the flags by now (health checks fail while `risky` is bad).
  const filled = { fleet: '#fleet-table tr[data-member]', rollouts: '#rollouts-list article', history: '#history-list article', keys: '#config-list > *' };
  for (const [name, selector] of Object.entries(filled)) {
    await view(phone, name);
    await phone.waitForSelector(selector);
    const width = await phone.evaluate(() => {
      const page = document.documentElement;
      const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > page.clientWidth + 1);
      return { scroll: page.scrollWidth, client: page.clientWidth, inner: window.innerWidth, wide: wide.slice(0, 3).map((e) => `${e.tagName}.${e.className}`) };
    });
    check(width.scroll <= width.client && width.client <= width.inner,
      `${name} at 390 px: the page is ${width.scroll} px wide in a ${width.client} px window (wider: ${width.wide.join(', ')})`);
    await phone.screenshot({ path: `${shots}/phone-${name}.png`, fullPage: true });
    if (name === 'rollouts') await docShot(phone, 'phone-rollouts');
  }

  step('a read-only token sees no write buttons');
  const reader = await openPage();
  await reader.goto(`${second}/ui/#rollouts`);
  await signIn(reader, readToken);
  await reader.waitForSelector('#principal:has-text("token:viewer (read)")');
  await reader.waitForSelector(`article[data-generation="${waved}"]`);
  check(await reader.locator('button[data-action]').count() === 0, 'no control buttons for read');
  check((await reader.textContent('#rollouts-role')).includes('has the read role'), 'the reason is shown');
  await reader.screenshot({ path: `${shots}/rollouts-read-only.png`, fullPage: true });

  check(!urls.some((url) => url.includes(token) || url.includes(readToken)), 'no token in any URL');
  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
  step('every check passed');
} catch (error) {
  console.error(error.stack || String(error));
  for (const [index, context] of browser.contexts().entries()) {
    for (const open of context.pages()) {
      await open.screenshot({ path: `${shots}/failure-${index}.png`, fullPage: true }).catch(() => {});
      console.error(`page ${index} error box: ${await open.textContent('#error').catch(() => '?')}`);
    }
  }
  if (problems.length) console.error(`console: ${problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
