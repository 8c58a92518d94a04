// The fleet page (docs/ui.md): four views drawn from the node's public API, kept live by its
// `GET /v1/events` stream. No framework and no build step (D76 in docs/decisions.md): the
// DOM is built with `h()` and `textContent` only, so no value from the API is ever parsed as
// HTML, and the page runs under `Content-Security-Policy: default-src 'self'`.

const TOKEN_KEY = 'grapevine.token';
// A safety net only: the event stream drives every refresh. Slower than "a few seconds".
const SAFETY_POLL_MS = 10000;
// Bursts of events make one read per view at most this often.
const MIN_REFRESH_MS = 300;
// How long to wait before reconnecting a dropped event stream, doubling up to the most.
const RECONNECT_MS = 500;
const MAX_RECONNECT_MS = 8000;
const ROLLOUTS_SHOWN = 10;
// The event stream's `ready` makes a view's first read; if it has not come by then, the page
// reads anyway (a proxy that holds the stream back must not leave the page empty).
const FIRST_READ_WAIT_MS = 1000;

const state = {
  view: 'fleet',
  who: null,
  status: null,
  rollouts: null,
  history: null,
  keys: null,
  fetchedAt: 0,
  stream: null,
  refreshing: false,
  refreshAgain: false,
  lastRefresh: 0,
};

// ---------------------------------------------------------------- DOM and formatting

const $ = (id) => document.getElementById(id);

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === 'class') element.className = value;
    else if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function replace(element, ...children) {
  element.replaceChildren();
  for (const child of children.flat(Infinity)) if (child) element.append(child);
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function seconds(ms) {
  return ms >= 10000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

function hlcTime(hlc) {
  const wall = Number(String(hlc).split('.')[0]);
  return Number.isFinite(wall) ? new Date(wall).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : hlc;
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many || one + 's'}`;
}

function showError(error) {
  const box = $('error');
  if (!error) {
    box.hidden = true;
    return;
  }
  const where = error.path ? `${error.method} ${error.path}: ` : '';
  const status = error.status ? `${error.status} ` : '';
  box.textContent = `${where}${status}${error.message}`;
  box.hidden = false;
}

function notice(text) {
  const box = $('notice');
  box.textContent = text;
  box.hidden = !text;
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message, method, path) {
    super(message);
    this.status = status;
    this.method = method;
    this.path = path;
  }
}

function authorization() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(method, path, body) {
  const headers = authorization();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, `the node did not answer (${error.message})`, method, path);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || text.trim() || response.statusText || 'no message';
    throw new ApiError(response.status, message, method, path);
  }
  return data;
}

const mayWrite = () => state.who && state.who.role === 'write';

// ---------------------------------------------------------------- access

function askForToken(reason) {
  $('login').hidden = false;
  $('login-reason').textContent = reason;
  $('token').focus();
}

async function identify() {
  try {
    state.who = await api('GET', '/v1/whoami');
  } catch (error) {
    state.who = null;
    replace($('principal'));
    if (error.status === 401 || error.status === 403) {
      askForToken(`The node answered ${error.status}: ${error.message}`);
      return false;
    }
    showError(error);
    return false;
  }
  $('login').hidden = true;
  $('node-name').textContent = `node ${state.who.node}`;
  const scope = state.who.prefixes.includes('') ? 'every key' : `keys under ${state.who.prefixes.join(', ')}`;
  replace($('principal'), h('span', { title: scope }, `${state.who.principal} (${state.who.role})`));
  const token = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $('sign-out').hidden = !token;
  // Reading anonymously, a token may still bring more rights (the write role).
  $('sign-in').hidden = token;
  return true;
}

async function useToken() {
  const token = $('token').value.trim();
  $('token').value = '';
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  await restart();
}

async function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  await restart();
}

async function restart() {
  showError(null);
  if (state.stream) state.stream.abort();
  state.stream = null;
  if (await identify()) {
    // One first read, when the stream says `ready`: a read made once the stream is open misses
    // no change. Reading here as well read everything twice on each load (the stream's `ready`
    // asked again at once): 533 KiB instead of 289 KiB for 400 members (docs/benchmarks.md).
    const started = Date.now();
    follow();
    setTimeout(() => state.lastRefresh < started && scheduleRefresh(), FIRST_READ_WAIT_MS);
  }
}

// ---------------------------------------------------------------- live

function setLive(live) {
  const badge = $('live');
  badge.textContent = live ? 'live' : 'not live';
  badge.className = live ? 'live on' : 'live off';
}

// Reads `GET /v1/events` with fetch(), not EventSource: EventSource cannot send the
// Authorization header, and a token in the URL would land in logs.
async function follow() {
  const controller = new AbortController();
  state.stream = controller;
  let wait = RECONNECT_MS;
  while (state.stream === controller) {
    try {
      const response = await fetch('/v1/events', { headers: authorization(), cache: 'no-store', signal: controller.signal });
      if (!response.ok) throw new ApiError(response.status, (await response.text()).trim(), 'GET', '/v1/events');
      setLive(true);
      wait = RECONNECT_MS;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r/g, '');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (/^event: (changed|ready)$/m.test(block)) scheduleRefresh();
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error.status) showError(error);
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, MAX_RECONNECT_MS);
  }
}

function scheduleRefresh() {
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  const wait = Math.max(0, state.lastRefresh + MIN_REFRESH_MS - Date.now());
  setTimeout(refresh, wait);
  state.refreshing = true;
}

async function refresh() {
  state.refreshing = true;
  state.lastRefresh = Date.now();
  try {
    await load(state.view);
    state.fetchedAt = Date.now();
    showError(null);
    draw();
  } catch (error) {
    if (error.status === 401) askForToken(`The node answered 401: ${error.message}`);
    showError(error);
  } finally {
    state.refreshing = false;
    if (state.refreshAgain) {
      state.refreshAgain = false;
      scheduleRefresh();
    }
  }
}

async function load(view) {
  if (view === 'fleet') {
    [state.status, state.rollouts] = await Promise.all([
      api('GET', '/v1/status'),
      api('GET', `/v1/rollouts?limit=${ROLLOUTS_SHOWN}`),
    ]);
  } else if (view === 'rollouts') {
    state.rollouts = await api('GET', `/v1/rollouts?limit=${ROLLOUTS_SHOWN}`);
  } else if (view === 'history') {
    state.history = await api('GET', `/v1/history?limit=${$('history-limit').value}&values=true`);
  } else if (view === 'keys') {
    state.keys = await api('GET', '/v1/keys');
  }
}

function draw() {
  if (state.view === 'fleet' && state.status) drawFleet();
  if (state.view === 'rollouts' && state.rollouts) drawRollouts();
  if (state.view === 'history' && state.history) drawHistory();
  if (state.view === 'keys' && state.keys) drawKeys();
}

// ---------------------------------------------------------------- fleet

// Each member's verdicts on the rollouts shown, by name.
function verdictsByMember(rollouts) {
  const verdicts = new Map();
  for (const rollout of rollouts) {
    for (const wave of rollout.waves) {
      for (const member of wave.members) {
        if (!member.report) continue;
        if (!verdicts.has(member.name)) verdicts.set(member.name, []);
        verdicts.get(member.name).push({ generation: rollout.generation, verdict: member.report.verdict, reverted: rollout.reverted });
      }
    }
  }
  return verdicts;
}

// The newest seq of each origin that any member holds: how far behind is measured against it.
function newestVector(status) {
  const newest = { ...status.version_vector };
  for (const member of status.members) {
    for (const [origin, seq] of Object.entries(member.version_vector || {})) newest[origin] = Math.max(newest[origin] || 0, seq);
  }
  return newest;
}

function behind(member, newest) {
  let count = 0;
  for (const [origin, seq] of Object.entries(newest)) count += Math.max(0, seq - ((member.version_vector || {})[origin] || 0));
  return count;
}

function appliedNewest(member, rollout) {
  if (!rollout) return false;
  if (member.applied === rollout.generation) return true;
  return rollout.waves.some((wave) => wave.members.some((m) => m.name === member.name && m.report));
}

// When this node last heard from the member itself (`last_heard_ms`), and whether it is live.
function lastSeen(member) {
  if (member.self) return 'now (this node)';
  const live = member.alive ? 'live' : 'not live';
  if (member.last_heard_ms === null || member.last_heard_ms === undefined) {
    return `${live}; not heard from directly since this node started`;
  }
  return `${seconds(member.last_heard_ms)} ago (${live})`;
}

function drawFleet() {
  const status = state.status;
  const rollouts = state.rollouts.rollouts;
  const newest = newestVector(status);
  const verdicts = verdictsByMember(rollouts);
  const latest = rollouts[0];
  const members = status.members.map((member) => {
    const judged = (verdicts.get(member.name) || []).filter((v) => !v.reverted);
    return {
      ...member,
      behind: behind(member, newest),
      verdicts: verdicts.get(member.name) || [],
      anomalous: judged.some((v) => v.verdict === 'anomalous'),
      appliedLatest: appliedNewest(member, latest),
    };
  });
  const live = members.filter((m) => m.alive);
  const healthy = live.filter((m) => !m.anomalous);
  const newestText = latest
    ? `${members.filter((m) => m.appliedLatest).length} of ${members.length} hosts applied the newest change (${latest.generation}, ${latest.keys.join(', ')}${latest.reverted ? ', reverted' : ''})`
    : 'no change yet';
  $('fleet-summary').textContent = `${newestText}; ${healthy.length} of ${members.length} healthy; ${live.length} live.`;

  const query = $('fleet-search').value.trim().toLowerCase();
  const filter = $('fleet-filter').value;
  const shown = members.filter((m) => {
    if (query && !`${m.name} ${m.labels || ''}`.toLowerCase().includes(query)) return false;
    if (filter === 'behind') return m.behind > 0;
    if (filter === 'anomalous') return m.anomalous;
    if (filter === 'dead') return !m.alive;
    return true;
  });
  // `data-label`: at phone width each row is a card, and each cell names its column.
  const rows = shown.map((m) =>
    h('tr', { 'data-member': m.name, class: m.alive ? '' : 'dead' },
      h('td', { 'data-label': 'Member' }, m.name, m.self ? h('span', { class: 'tag' }, 'this node') : null),
      h('td', { 'data-label': 'Labels' }, m.labels || '—'),
      h('td', { 'data-label': 'Applied' }, m.applied || 'nothing'),
      h('td', { 'data-label': 'Behind' }, m.behind === 0 ? 'up to date' : plural(m.behind, 'generation')),
      h('td', { 'data-label': 'Health verdicts' }, m.verdicts.length === 0 ? 'judging nothing'
        : m.verdicts.map((v) => h('span', { class: `verdict ${v.verdict}`, title: v.reverted ? 'reverted' : '' }, `${v.generation} ${v.verdict}`))),
      h('td', { 'data-label': 'Last seen' }, lastSeen(m))));
  replace($('fleet-table').tBodies[0], rows.length ? rows : h('tr', {}, h('td', { colspan: 6 }, 'no member matches')));
}

// ---------------------------------------------------------------- rollouts

// Why wave `index` (closed) waits, by the gate rule of proto/src/rollout.rs (`is_open`): a
// pause; or an earlier wave short of its quorum of healthy reports baked for the bake time.
function gateWaits(rollout, index, age) {
  if (rollout.reverted) return 'reverted: no wave opens';
  if (rollout.hold) return `${rollout.hold.reason}`;
  const promoted = rollout.controls.promoted_through;
  if (rollout.controls.paused && !(promoted !== null && promoted >= index)) return 'paused';
  const policy = rollout.policy;
  for (const wave of rollout.waves.slice(0, index)) {
    const needed = Math.max(1, Math.ceil((wave.members.length * policy.health_quorum_permille) / 1000));
    const waits = wave.members
      .map((m) => m.report)
      .filter((r) => r && r.verdict === 'healthy')
      .map((r) => Math.max(0, policy.bake_ms - (r.elapsed_ms + age)))
      .sort((a, b) => a - b);
    if (waits.length < needed) {
      return `waits on wave ${wave.index}: ${waits.length} of the ${needed} healthy reports needed (${wave.members.length} members, quorum ${policy.health_quorum_permille / 10}%)`;
    }
    if (waits[needed - 1] > 0) return `waits on wave ${wave.index}'s bake clock: ${seconds(waits[needed - 1])} left of ${seconds(policy.bake_ms)}`;
  }
  return 'opens at the next pass';
}

function rolloutState(rollout) {
  if (rollout.reverted) return ['reverted', 'reverted'];
  if (rollout.controls.paused) return ['paused', 'paused'];
  // A scheduled start or a freeze window holds it on this node (proto/src/schedule.rs).
  if (rollout.hold) return [rollout.hold.kind, 'paused'];
  if (rollout.all_waves_open) return ['every wave open', 'done'];
  return [`${rollout.open_waves} of ${rollout.waves.length} waves open`, 'rolling'];
}

function memberChip(member) {
  const report = member.report;
  const verdict = report ? report.verdict : 'pending';
  const title = report ? `applied; ${report.verdict}, report ${seconds(report.elapsed_ms)} old` : 'not applied, or no report yet';
  return h('li', { class: `chip ${verdict}`, title, 'data-member': member.name }, member.name, ' ', h('small', {}, report ? verdict : 'not applied'));
}

function drawWave(rollout, wave, age) {
  const applied = wave.members.filter((m) => m.report).length;
  const healthy = wave.members.filter((m) => m.report && m.report.verdict === 'healthy').length;
  const anomalous = wave.members.filter((m) => m.report && m.report.verdict === 'anomalous').length;
  const name = wave.index === 0 ? 'canary' : `wave ${wave.index}`;
  return h('li', { class: `wave ${wave.open ? 'open' : 'closed'}`, 'data-wave': wave.index },
    h('h4', {}, `${name}: ${wave.open ? 'open' : 'waiting'}`),
    h('p', { class: 'counts' }, `${applied} of ${wave.members.length} applied, ${healthy} healthy, ${anomalous} anomalous`),
    h('ul', { class: 'members' }, wave.members.map(memberChip)),
    wave.open ? null : h('p', { class: 'gate' }, gateWaits(rollout, wave.index, age)));
}

function revertReason(rollout) {
  const writers = Object.entries(rollout.reverted_by).map(([node, cause]) => `${node} (${cause})`);
  const quorum = rollout.anomaly_quorum;
  const parts = [];
  if (writers.length) parts.push(`revert written by ${writers.join(', ')}`);
  if (Object.values(rollout.reverted_by).includes('quorum') || quorum.anomalous.length >= quorum.needed) {
    parts.push(`anomaly quorum reached: ${quorum.anomalous.length} of ${quorum.needed} needed reported anomalous (${quorum.anomalous.join(', ') || 'none seen here'})`);
  }
  if (Object.values(rollout.reverted_by).includes('rollback')) parts.push('rolled back by an operator');
  if (rollout.judgement) parts.push(`this node's judgement: ${rollout.judgement}`);
  return parts.length ? parts.join('; ') : 'the revert reached this node; who wrote it is no longer in gossip';
}

function hostsOf(rollout, waves) {
  return waves.reduce((sum, wave) => sum + wave.members.length, 0);
}

// What each control does and how many hosts it touches, for its confirmation.
function controls(rollout) {
  const closed = rollout.waves.filter((w) => !w.open);
  const next = closed[0];
  const all = hostsOf(rollout, rollout.waves);
  const applied = rollout.anomaly_quorum.applied;
  const list = [];
  if (rollout.reverted) return list;
  if (!rollout.controls.paused && !rollout.all_waves_open) {
    list.push(['pause', `Pause ${rollout.generation}: hold back the ${plural(hostsOf(rollout, closed), 'host')} in its waiting waves; the ${plural(all - hostsOf(rollout, closed), 'host')} in open waves keep it.`]);
  }
  if (rollout.controls.paused) {
    list.push(['resume', `Resume ${rollout.generation}: let its gates open again for the ${plural(hostsOf(rollout, closed), 'host')} in its waiting waves.`]);
  }
  if (next) {
    list.push(['promote', `Promote ${rollout.generation}: open wave ${next.index} now, whatever its gate waits on: ${plural(next.members.length, 'host')} (${next.members.map((m) => m.name).join(', ')}) apply it at once.`]);
  }
  list.push(['rollback', `Roll back ${rollout.generation}: revert it on all ${plural(all, 'host')} of its rollout (${applied} applied it); it cannot be undone.`]);
  return list;
}

// A selector for the same control after a redraw: its rollout and its action.
function focusKey(element) {
  const article = element && element.dataset && element.dataset.action ? element.closest('article[data-generation]') : null;
  return article ? `article[data-generation="${CSS.escape(article.dataset.generation)}"] [data-action="${element.dataset.action}"]` : null;
}

// Redraws with `draw`, then gives the focus back to the control that had it: a redraw replaces
// the buttons, and a keyboard user must not be thrown back to the top of the page.
function keepingFocus(draw) {
  const key = focusKey(document.activeElement);
  draw();
  const again = key && document.querySelector(key);
  if (again && document.activeElement !== again) again.focus();
}

function confirmThen(text, action) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  const ok = $('confirm-ok');
  const cancel = $('confirm-cancel');
  // The dialog gives the focus back to its opener, unless a redraw replaced it meanwhile:
  // then to the same control in the new drawing, however it closed (a button or Escape).
  const opener = focusKey(document.activeElement);
  dialog.onclose = () => {
    ok.onclick = null;
    cancel.onclick = null;
    dialog.onclose = null;
    const again = opener && document.querySelector(opener);
    if (again && document.activeElement !== again) again.focus();
  };
  ok.onclick = () => {
    dialog.close();
    action();
  };
  cancel.onclick = () => dialog.close();
  dialog.showModal();
}

async function control(rollout, action) {
  try {
    const answer = await api('POST', `/v1/rollouts/${encodeURIComponent(rollout.generation)}/${action}`);
    notice(action === 'rollback'
      ? `Rolled back ${rollout.generation}: ${answer.revert}${answer.already_reverted ? ' (this node already held it)' : ''}.`
      : `${action} of ${rollout.generation} written as generation ${answer.generation}.`);
    showError(null);
  } catch (error) {
    showError(error);
  }
  scheduleRefresh();
}

function drawRollout(rollout, age) {
  const [label, kind] = rolloutState(rollout);
  const policy = rollout.policy;
  const quorum = rollout.anomaly_quorum;
  const closeness = quorum.needed ? Math.min(100, Math.round((100 * quorum.anomalous.length) / quorum.needed)) : 0;
  const buttons = mayWrite()
    ? controls(rollout).map(([action, text]) =>
      h('button', { type: 'button', class: action === 'rollback' ? 'danger' : '', 'data-action': action, onclick: () => confirmThen(text, () => control(rollout, action)) }, action))
    : [];
  return h('article', { class: `rollout ${kind}`, 'data-generation': rollout.generation },
    h('header', {},
      h('h3', {}, rollout.generation, ' ', h('span', { class: `state ${kind}` }, label)),
      h('p', {}, rollout.keys.join(', ')),
      h('p', { class: 'policy' }, policy.emergency ? 'emergency: every node at once'
        : `waves ${policy.waves.map((w) => (w.Count !== undefined ? w.Count : `${w.Percent}%`)).join(', ')}; bake ${seconds(policy.bake_ms)}; health quorum ${policy.health_quorum_permille / 10}%${policy.waves_by ? `; waves by ${policy.waves_by}` : ''}`),
      buttons.length ? h('p', { class: 'buttons' }, buttons) : null),
    h('ol', { class: 'timeline' }, rollout.waves.map((wave) => drawWave(rollout, wave, age))),
    h('p', { class: 'quorum' },
      `Anomaly quorum: ${quorum.anomalous.length} of ${quorum.needed} needed anomalous (${quorum.applied} applied it)`,
      h('meter', { min: 0, max: 100, value: closeness, title: `${closeness}% of the way to a revert` })),
    rollout.reverted ? h('p', { class: 'revert' }, h('strong', {}, 'Reverted. '), revertReason(rollout)) : null,
    rollout.hold ? h('p', { class: 'hold' }, holdText(rollout, age)) : null,
    !rollout.reverted && rollout.judgement ? h('p', { class: 'judgement' }, `This node's judgement: ${rollout.judgement}`) : null);
}

function holdText(rollout, age) {
  return `${rollout.hold.reason}, in ${seconds(Math.max(0, rollout.hold.in_ms - age))}: no wave opens before.`;
}

function drawRollouts() {
  const age = Date.now() - state.fetchedAt;
  const rollouts = state.rollouts.rollouts;
  $('rollouts-role').textContent = mayWrite()
    ? `${state.who.principal} has the write role: each control asks for a confirmation first.`
    : `Pause, resume, promote and rollback are hidden: ${state.who ? `${state.who.principal} has the ${state.who.role} role` : 'no principal'}, and they need write.`;
  keepingFocus(() => replace($('rollouts-list'), rollouts.length ? rollouts.map((r) => drawRollout(r, age)) : h('p', {}, 'No rollouts yet.')));
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// Between reads only the clocks move (a gate's bake time, a hold's time left): each second
// their texts are rewritten in place, and nothing else, so the focus and a selection stay.
function tickRollouts() {
  if (state.view !== 'rollouts' || !state.rollouts) return;
  const age = Date.now() - state.fetchedAt;
  for (const rollout of state.rollouts.rollouts) {
    const article = document.querySelector(`#rollouts-list article[data-generation="${CSS.escape(rollout.generation)}"]`);
    if (!article) continue;
    for (const wave of rollout.waves.filter((w) => !w.open)) {
      const gate = article.querySelector(`[data-wave="${wave.index}"] .gate`);
      if (gate) setText(gate, gateWaits(rollout, wave.index, age));
    }
    const hold = article.querySelector('.hold');
    if (hold && rollout.hold) setText(hold, holdText(rollout, age));
  }
}

// ---------------------------------------------------------------- history

function opValue(op) {
  if (op.op === 'set_flag') return op.definition;
  return op.value !== undefined ? op.value : `(${op.bytes} bytes)`;
}

// The value each op replaced: the same key's op in the next older generation listed.
function before(generations, index, op) {
  for (const older of generations.slice(index + 1)) {
    const previous = older.ops.find((o) => o.key === op.key && o.op === op.op);
    if (previous) return { value: opValue(previous), generation: older.id };
  }
  return null;
}

// A control's target: `{"origin", "seq"}` in history, an id elsewhere.
function targetId(target) {
  return target && typeof target === 'object' ? `${target.origin}.${target.seq}` : target;
}

// The controls that target each generation, and the generation they came in.
function controlsByTarget(generations) {
  const chain = new Map();
  for (const generation of generations) {
    for (const control of generation.controls) {
      const [kind, body] = Object.entries(control)[0] || [String(control), {}];
      const target = targetId(body && body.target);
      if (!target) continue;
      if (!chain.has(target)) chain.set(target, []);
      chain.get(target).push(`${kind.toLowerCase()} by ${generation.id}${generation.author ? ` (${generation.author})` : ''}`);
    }
  }
  return chain;
}

function drawDiff(generations, index, op) {
  const old = before(generations, index, op);
  return h('div', { class: 'diff' },
    h('p', {}, `${op.op === 'set_flag' ? 'flag' : 'config'} ${op.key}`, op.schema ? ' (with a JSON Schema)' : ''),
    h('div', { class: 'sides' },
      h('div', { class: 'before' }, h('h5', {}, old ? `before (${old.generation})` : 'before'), h('pre', {}, old ? json(old.value) : 'no earlier value listed')),
      h('div', { class: 'after' }, h('h5', {}, 'after'), h('pre', {}, json(opValue(op))))));
}

function drawHistory() {
  const history = state.history;
  const query = $('history-search').value.trim().toLowerCase();
  const chain = controlsByTarget(history.generations);
  const shown = history.generations
    .map((generation, index) => ({ generation, index }))
    .filter(({ generation: g }) => !query || [g.id, g.author || '', ...g.ops.map((o) => o.key)].join(' ').toLowerCase().includes(query));
  $('history-summary').textContent = `${shown.length} of ${history.generations.length} listed; ${history.total} held whole, ${history.compacted} compacted into the snapshot.`;
  replace($('history-list'), shown.map(({ generation: g, index }) => {
    const rollout = g.rollout;
    const revert = rollout && rollout.reverted ? `reverted: ${revertReason(rollout)}` : null;
    const controlText = g.controls.map((c) => {
      const [kind, body] = Object.entries(c)[0] || [String(c), {}];
      return `${kind.toLowerCase()} of ${targetId(body && body.target)}${body && body.through_wave !== undefined ? ` through wave ${body.through_wave}` : ''}`;
    });
    return h('article', { class: `generation${rollout && rollout.reverted ? ' reverted' : ''}`, 'data-generation': g.id },
      h('h3', {}, g.id, ' ', h('small', {}, hlcTime(g.hlc))),
      h('p', {}, `by ${g.author || 'no author recorded'}; `,
        g.signed_by ? `signed by ${g.signed_by.key} (root ${g.signed_by.root})` : 'not signed'),
      h('p', { class: 'policy' }, g.policy.emergency ? 'policy: emergency'
        : `policy: waves ${g.policy.waves.map((w) => (w.Count !== undefined ? w.Count : `${w.Percent}%`)).join(', ')}, bake ${seconds(g.policy.bake_ms)}, anomaly quorum ${g.policy.anomaly_quorum_permille / 10}% (at least ${g.policy.anomaly_quorum_min})`),
      controlText.length ? h('p', {}, `control: ${controlText.join(', ')}`) : null,
      g.ops.map((op) => drawDiff(history.generations, index, op)),
      revert ? h('p', { class: 'revert' }, revert) : null,
      chain.has(g.id) ? h('p', { class: 'chain' }, `controls: ${chain.get(g.id).join(', ')}`) : null);
  }));
}

// ---------------------------------------------------------------- flags and config

function variantsText(definition) {
  return Object.entries(definition.variants).map(([name, value]) =>
    h('li', { class: name === definition.defaultVariant ? 'default' : '' }, `${name}: ${JSON.stringify(value)}`, name === definition.defaultVariant ? ' (default)' : ''));
}

function targetingText(targeting) {
  if (!targeting || Object.keys(targeting).length === 0) return 'no targeting: every context gets the default variant';
  return json(targeting);
}

function drawFlag(flag) {
  const applied = flag.applied && flag.applied.value;
  const desired = flag.desired && flag.desired.value;
  const shown = applied || desired;
  const pending = flag.desired && (!flag.applied || flag.desired.generation !== flag.applied.generation);
  return h('article', { class: 'key', 'data-key': flag.key },
    h('h4', {}, flag.key, ' ', h('span', { class: `state ${shown.state === 'ENABLED' ? 'done' : 'paused'}` }, shown.state)),
    h('p', {}, applied ? `applied here: ${applied.defaultVariant || 'no default variant'} (${flag.applied.generation})` : 'not applied on this node yet'),
    pending ? h('p', { class: 'pending' }, flag.desired ? `desired: ${desired.defaultVariant || 'no default variant'} (${flag.desired.generation}, rolling out)` : 'removed in the log') : null,
    h('ul', { class: 'variants' }, variantsText(shown)),
    h('pre', { class: 'targeting' }, targetingText(shown.targeting)),
    shown.metadata && Object.keys(shown.metadata).length ? h('p', {}, `metadata: ${JSON.stringify(shown.metadata)}`) : null);
}

function drawConfig(entry) {
  const pending = entry.desired && (!entry.applied || entry.desired.generation !== entry.applied.generation);
  return h('article', { class: 'key', 'data-key': entry.key },
    h('h4', {}, entry.key),
    h('div', { class: 'sides' },
      h('div', {}, h('h5', {}, entry.applied ? `applied here (${entry.applied.generation})` : 'applied here'), h('pre', {}, entry.applied ? json(entry.applied.value) : 'not applied on this node yet')),
      h('div', { class: pending ? 'pending' : '' }, h('h5', {}, entry.desired ? `desired (${entry.desired.generation})${pending ? ', rolling out' : ''}` : 'desired'), h('pre', {}, entry.desired ? json(entry.desired.value) : 'none'))));
}

function drawKeys() {
  const query = $('keys-search').value.trim().toLowerCase();
  const match = (entry) => !query || entry.key.toLowerCase().includes(query);
  const flags = state.keys.flags.filter(match);
  const config = state.keys.config.filter(match);
  replace($('flags-list'), flags.length ? flags.map(drawFlag) : h('p', {}, 'No flags.'));
  replace($('config-list'), config.length ? config.map(drawConfig) : h('p', {}, 'No config keys.'));
  const select = $('playground-flag');
  const chosen = select.value;
  replace(select, state.keys.flags.map((f) => h('option', { value: f.key, selected: f.key === chosen }, f.key)));
  if (state.keys.truncated) notice('Only the first keys are listed (GET /v1/keys is capped); search narrows them.');
}

async function evaluate() {
  const key = $('playground-flag').value;
  const result = $('playground-result');
  if (!key) return;
  let context;
  try {
    context = JSON.parse($('playground-context').value || '{}');
  } catch (error) {
    result.textContent = `The context is not JSON: ${error.message}`;
    return;
  }
  const desired = $('playground-desired').checked ? '?desired=true' : '';
  try {
    const answer = await api('POST', `/v1/flags/${encodeURIComponent(key)}/evaluate${desired}`, { context });
    const { definition, ...evaluation } = answer;
    result.textContent = json(evaluation);
  } catch (error) {
    result.textContent = `${error.status} ${error.message}`;
  }
}

// ---------------------------------------------------------------- views

function show(view) {
  state.view = ['fleet', 'rollouts', 'history', 'keys'].includes(view) ? view : 'fleet';
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.dataset.view !== state.view;
  for (const link of document.querySelectorAll('nav a')) link.setAttribute('aria-current', link.dataset.view === state.view ? 'page' : 'false');
  notice('');
  if (state.who) refresh();
}

function start() {
  $('use-token').addEventListener('click', useToken);
  $('token').addEventListener('keydown', (event) => event.key === 'Enter' && useToken());
  $('sign-out').addEventListener('click', signOut);
  $('sign-in').addEventListener('click', () => askForToken(`Reading as ${state.who ? state.who.principal : 'nobody'}; a token may bring more rights.`));
  $('fleet-search').addEventListener('input', draw);
  $('fleet-filter').addEventListener('change', draw);
  $('history-search').addEventListener('input', draw);
  $('history-limit').addEventListener('change', refresh);
  $('keys-search').addEventListener('input', draw);
  $('playground-evaluate').addEventListener('click', evaluate);
  window.addEventListener('hashchange', () => show(location.hash.slice(1)));
  // The bake clock runs on between reads; only the rollouts view has one.
  setInterval(tickRollouts, 1000);
  setInterval(() => state.who && scheduleRefresh(), SAFETY_POLL_MS);
  show(location.hash.slice(1));
  restart();
}

start();
