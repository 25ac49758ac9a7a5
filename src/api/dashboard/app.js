// The fogmesh dashboard: reads the node's /v1 API and /metrics with the token the user signs in
// with, and renders each panel with DOM nodes and textContent only (never innerHTML), so nothing
// the node holds can run as markup. The token lives in sessionStorage, nowhere else.
'use strict';

(() => {
  const TOKEN_KEY = 'fogmesh.token';
  const REFRESH_MS = 5000;
  const AUDIT_SHOWN = 25;
  const ROWS_SHOWN = 500;

  const byId = (id) => document.getElementById(id);
  let timer = null;
  let paused = false;
  let refreshing = false;
  /** Who is signed in, learnt from the panels: the node's answer and whether /v1/apps answered. */
  let nodeInfo = null;
  let admin = null;

  /** An answer of the node other than 2xx: its status and the API's error code and message. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Thrown when the token is refused mid-session: the user must sign in again. */
  class SignedOut extends Error {}

  async function call(path, token, init = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${token}` }, init.headers || {});
    const res = await fetch(path, Object.assign({}, init, {
      headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
    }));
    const text = await res.text();
    if (!res.ok) {
      throw errorOf(res.status, text);
    }
    return text;
  }

  function errorOf(status, text) {
    let code = '';
    let message = text.trim() || `HTTP ${status}`;
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        code = String(body.error.code || '');
        message = String(body.error.message || message);
      }
    } catch (_) { /* not JSON: keep the text */ }
    return new ApiError(status, code, message);
  }

  /** GET (or `init`) with the signed-in token; a 401 signs the user out. */
  async function api(path, init) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new SignedOut('not signed in');
    try {
      return await call(path, token, init);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        signOut('The node no longer accepts this token (rotated or removed?). Sign in again.');
        throw new SignedOut(e.message);
      }
      throw e;
    }
  }

  const apiJson = async (path, init) => JSON.parse(await api(path, init));

  // ---- DOM helpers: text only ----

  function el(tag, opts = {}, ...children) {
    const node = document.createElement(tag);
    if (opts.cls) node.className = opts.cls;
    if (opts.title) node.title = opts.title;
    for (const [k, v] of Object.entries(opts.data || {})) node.dataset[k] = v;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const mono = (text) => el('span', { cls: 'mono' }, text);
  const badge = (text, kind) => el('span', { cls: `badge ${kind}` }, text);
  const empty = (text) => el('p', { cls: 'empty' }, text);

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '—';
    return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function fmtBytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function fmtAgo(ms) {
    if (!ms) return '—';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  /** A cell's content: a node as is, an object as JSON text, anything else as text. */
  function cell(value) {
    if (value instanceof Node) return value;
    if (value === null || value === undefined) return '—';
    if (typeof value === 'object') return mono(JSON.stringify(value));
    return String(value);
  }

  /** A table of `rows`; each column is [heading, row => value] (numbers right-aligned). */
  function table(columns, rows, name) {
    const head = el('tr', {}, ...columns.map(([h]) => el('th', {}, h)));
    const body = rows.map((row) => el('tr', {}, ...columns.map(([, get]) => {
      const v = get(row);
      return el('td', { cls: typeof v === 'number' ? 'num' : '' }, cell(v));
    })));
    return el('table', { data: { table: name || '' } }, el('thead', {}, head), el('tbody', {}, ...body));
  }

  function facts(pairs) {
    const dl = el('dl');
    for (const [k, v] of pairs) dl.append(el('dt', {}, k), el('dd', {}, cell(v)));
    return dl;
  }

  // ---- panels ----

  function setStatus(panel, state, message) {
    const status = panel.querySelector(':scope > .status');
    status.dataset.state = state;
    status.textContent = message;
  }

  function describe(e) {
    if (e instanceof ApiError) {
      if (e.status === 403) return ['forbidden', `Not shown to this token (403): ${e.message}`];
      if (e.status === 503) return ['error', `Unavailable (503): ${e.message}`];
      return ['error', `The node answered ${e.status}: ${e.message}`];
    }
    return ['error', `No answer from the node: ${e.message}`];
  }

  async function node() {
    const n = await apiJson('/v1/node');
    nodeInfo = n;
    const pairs = [
      ['organization', n.org], ['mesh', n.mesh], ['peer id', mono(n.peer_id)],
      ['author key', mono(n.author)], ['agreement key', mono(n.agreement_key)],
      ['API', n.api], ['listen', mono((n.listen || []).join(' '))], ['version', n.version],
      ['store', fmtBytes(n.store_bytes)], ['memory', fmtBytes(n.memory_bytes)],
      ['disk', n.disk_failed ? badge(`failed: ${n.disk_failed}`, 'bad') : badge('ok', 'ok')],
    ];
    return facts(pairs);
  }

  function peerState(p) {
    return p.up ? badge('up', 'ok') : badge('down', 'bad');
  }

  async function peers() {
    const [status, list] = await Promise.all([apiJson('/v1/mesh'), apiJson('/v1/peers')]);
    const out = [facts([
      ['mesh', status.mesh], ['members', (status.members || []).join(', ') || '—'],
      ['catch-ups under way', (status.catching_up || []).length],
      ['equivocating authors', (status.equivocations || []).length],
    ])];
    out.push(el('h3', {}, 'Peers'));
    const ps = list.peers || [];
    out.push(ps.length === 0 ? empty('No peers known yet: this node is alone in its mesh.') : table([
      ['organization', (p) => p.org || '(not a member)'], ['peer id', (p) => mono(p.peer)],
      ['state', peerState], ['last seen', (p) => fmtAgo(p.last_seen_ms)],
      ['round trip', (p) => (typeof p.rtt_ms === 'number' ? `${p.rtt_ms.toFixed(1)} ms` : '—')],
      ['addresses', (p) => mono((p.addrs || []).join(' '))], ['bad inputs', (p) => p.bad_inputs],
    ], ps, 'peers'));
    out.push(...catchUps(status.catching_up || []), ...forks(status.equivocations || []));
    return out;
  }

  function catchUps(list) {
    if (list.length === 0) return [];
    return [el('h3', {}, 'Catching up'), table([
      ['dataset', (c) => c.dataset], ['from', (c) => mono(c.from)],
      ['fetched', (c) => c.fetched], ['missing', (c) => c.missing],
    ], list, 'catchup')];
  }

  function forks(list) {
    if (list.length === 0) return [];
    return [el('h3', {}, 'Equivocating authors (their envelopes from the fork on are set aside)'), table([
      ['dataset', (f) => f.dataset], ['organization', (f) => f.org], ['author', (f) => mono(f.author)],
      ['fork at seq', (f) => f.seq],
    ], list, 'forks')];
  }

  async function members() {
    const { members: list } = await apiJson('/v1/members');
    if (!list || list.length === 0) return empty('No roster yet.');
    return table([
      ['organization', (m) => m.org], ['role', (m) => m.role],
      ['state', (m) => badge(m.state, m.state === 'active' ? 'ok' : 'muted')],
      ['peer id', (m) => mono(m.peer_id)], ['addresses', (m) => mono((m.addresses || []).join(' '))],
      ['retired keys', (m) => (m.retired_keys || []).length],
    ], list, 'members');
  }

  let knownDatasets = [];

  async function datasets() {
    const { datasets: list } = await apiJson('/v1/datasets');
    knownDatasets = (list || []).map((d) => d.id);
    seedQuery();
    if (!list || list.length === 0) return empty('No datasets visible to this token.');
    return table([
      ['dataset', (d) => d.id], ['visibility', (d) => d.visibility],
      ['sealed', (d) => (d.encrypted ? 'yes' : 'no')],
      ['readable', (d) => (d.readable ? badge('yes', 'ok') : badge('ciphertext only', 'muted'))],
      ['records', (d) => d.records], ['envelopes', (d) => d.envelopes],
      ['readers', (d) => (d.readers || []).join(', ') || '—'], ['priority', (d) => d.priority],
      ['created', (d) => fmtTime(d.created)],
    ], list, 'datasets');
  }

  async function apps() {
    let list;
    try {
      ({ apps: list } = await apiJson('/v1/apps'));
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) admin = false;
      throw e;
    }
    admin = true;
    if (!list || list.length === 0) return empty('No apps registered.');
    return table([
      ['app', (a) => a.name], ['admin', (a) => (a.admin ? badge('admin', 'warn') : 'no')],
      ['rights', (a) => (a.rights || []).join(', ') || '—'], ['token id', (a) => mono(a.token_id)],
      ['created', (a) => fmtTime(a.created)],
    ], list, 'apps');
  }

  function grantState(g) {
    const kind = { active: 'ok', expired: 'muted', revoked: 'bad' }[g.state] || 'muted';
    return badge(g.state, kind);
  }

  async function grants() {
    const { grants: list } = await apiJson('/v1/grants');
    if (!list || list.length === 0) return empty('No grants issued on the datasets held here.');
    return table([
      ['dataset', (g) => g.dataset], ['grantee', (g) => g.grantee],
      ['rights', (g) => g.rights.join(', ') || '(revocation)'], ['prefix', (g) => g.prefix],
      ['state', grantState], ['expires', (g) => (g.not_after ? fmtTime(g.not_after) : 'never')],
      ['issued', (g) => fmtTime(g.issued)],
    ], list, 'grants');
  }

  async function flows() {
    const { flows: list } = await apiJson('/v1/flows');
    if (!list || list.length === 0) return empty('No flows declared on this node.');
    const mode = (f) => ((f.aggregates || []).length > 0
      ? `aggregate: ${(f.group_by || []).join(', ') || 'all'} → ${f.aggregates.join(', ')}`
      : `records${(f.project || []).length ? `: ${f.project.join(', ')}` : ''}`);
    return table([
      ['flow', (f) => f.name], ['source', (f) => f.source], ['target', (f) => f.target],
      ['computes', mode], ['filter', (f) => f.filter || '—'],
    ], list, 'flows');
  }

  async function audit() {
    const { entries } = await apiJson(`/v1/audit?limit=${AUDIT_SHOWN}`);
    if (!entries || entries.length === 0) return empty('The audit log is empty.');
    const newest = entries.slice().reverse();
    return table([
      ['seq', (a) => a.seq], ['time', (a) => fmtTime(a.time)], ['actor', (a) => a.actor],
      ['action', (a) => a.action], ['dataset', (a) => a.dataset],
      ['outcome', (a) => badge(a.outcome, a.outcome === 'ok' ? 'ok' : 'bad')],
      ['detail', (a) => (a.reason ? `${a.reason} — ${a.detail}` : a.detail)],
    ], newest, 'audit');
  }

  // ---- health, from /metrics ----

  /** Prometheus or OpenMetrics text: samples as {name, labels, value}, and the families declared. */
  function parseMetrics(text) {
    const samples = [];
    const families = new Set();
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split('\n')) {
      const declared = /^# TYPE (\S+) /.exec(raw);
      if (declared) families.add(declared[1]);
      if (raw === '' || raw.startsWith('#')) continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(label)) labels[l[1]] = l[2];
      samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return { samples, families };
  }

  /** The figures shown; `bad` marks one that should stay 0. */
  const FIGURES = [
    ['members on the roster', 'fogmesh_members'],
    ['members connected', 'fogmesh_peers_up'],
    ['catch-ups under way', 'fogmesh_catchups'],
    ['envelopes still to fetch (replication lag)', 'fogmesh_catchup_remaining_envelopes', 'bad'],
    ['envelopes received from members', 'fogmesh_envelopes_received_total'],
    ['pushes sent / failed', ['fogmesh_pushes_total', 'fogmesh_push_failures_total']],
    ['envelopes rejected (no write authority)', 'fogmesh_envelopes_rejected_total', 'bad'],
    ['bad input from peers', 'fogmesh_peer_bad_inputs_total', 'bad'],
    ['forks proven (equivocation)', 'fogmesh_equivocations_total', 'bad'],
    ['removed members refused', 'fogmesh_removed_member_refusals_total', 'bad'],
    ['disk failed', 'fogmesh_disk_failed', 'bad'],
    ['audit entries not written', 'fogmesh_audit_failures_total', 'bad'],
    ['API errors answered', 'fogmesh_api_errors_total'],
    ['records written here', 'fogmesh_records_written_total'],
  ];

  /** The sum of a family's samples: 0 for a family declared without samples yet (a labelled
   * family has none until its first label), null for one the node does not declare. */
  function sumOf({ samples, families }, name) {
    const found = samples.filter((s) => s.name === name);
    if (found.length > 0) return found.reduce((a, s) => a + s.value, 0);
    return families.has(name.replace(/_total$/, '')) ? 0 : null;
  }

  function figureRow(metrics, [label, names, bad]) {
    const values = (Array.isArray(names) ? names : [names]).map((n) => sumOf(metrics, n));
    const text = values.map((v) => (v === null ? 'not exposed' : String(v))).join(' / ');
    const alarm = bad && values.some((v) => v > 0);
    return { label, text, alarm };
  }

  async function health() {
    const metrics = parseMetrics(await api('/metrics'));
    const rows = FIGURES.map((f) => figureRow(metrics, f));
    const t = table([
      ['figure', (r) => r.label],
      ['value', (r) => (r.alarm ? badge(r.text, 'warn') : r.text)],
    ], rows, 'health');
    const errors = metrics.samples.filter((s) => s.name === 'fogmesh_api_errors_total');
    const byStatus = errors.map((s) => `${s.labels.status}: ${s.value}`).join(', ');
    return [t, el('p', { cls: 'hint' }, `API errors by status: ${byStatus || 'none'}. `,
      'Quarantined changes are not counted in /metrics yet; see the node\'s log.')];
  }

  /** Each panel's element id (`panel-ID`) and what fills it. */
  const PANELS = [
    ['node', node], ['health', health], ['peers', peers], ['members', members],
    ['datasets', datasets], ['apps', apps], ['grants', grants], ['flows', flows], ['audit', audit],
  ];

  async function refreshPanel([id, load]) {
    const panel = byId(`panel-${id}`);
    const body = panel.querySelector(':scope > .body');
    try {
      const content = await load();
      body.replaceChildren(...[].concat(content));
      setStatus(panel, 'ok', '');
    } catch (e) {
      if (e instanceof SignedOut) return;
      const [state, message] = describe(e);
      body.replaceChildren();
      setStatus(panel, state, message);
    }
  }

  async function refreshAll() {
    if (refreshing || !sessionStorage.getItem(TOKEN_KEY)) return;
    refreshing = true;
    byId('panels').setAttribute('aria-busy', 'true');
    try {
      await Promise.all(PANELS.map(refreshPanel));
      if (sessionStorage.getItem(TOKEN_KEY)) {
        showWho();
        const t = byId('updated');
        t.dateTime = new Date().toISOString();
        t.textContent = new Date().toLocaleTimeString();
      }
    } finally {
      refreshing = false;
      byId('panels').setAttribute('aria-busy', 'false');
    }
  }

  function showWho() {
    const who = byId('whoami');
    const kind = { true: 'the admin token', false: 'an app token' }[admin] || 'a token';
    who.textContent = nodeInfo ? `${nodeInfo.org} in mesh ${nodeInfo.mesh}, signed in with ${kind}` : '';
    who.dataset.token = { true: 'admin', false: 'app' }[admin] || '';
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (paused || !sessionStorage.getItem(TOKEN_KEY)) return;
    timer = setTimeout(async () => {
      await refreshAll();
      schedule();
    }, REFRESH_MS);
  }

  function togglePause() {
    paused = !paused;
    const button = byId('pause');
    button.setAttribute('aria-pressed', String(paused));
    button.textContent = paused ? 'Resume' : 'Pause';
    byId('paused-note').hidden = !paused;
    schedule();
  }

  // ---- query box ----

  function seedQuery() {
    const box = byId('query-text');
    if (box.value.trim() === '' && knownDatasets.length > 0) {
      box.value = JSON.stringify({ datasets: [knownDatasets[0]], limit: 20 }, null, 1);
    }
  }

  /** Where a column goes: a row's own fields first, then a group's dimensions, the data last. */
  function rank(key) {
    const fixed = ['dataset', 'id', 'name', 'time'].indexOf(key);
    if (fixed >= 0) return fixed;
    if (/^(segment|bucket|field):/.test(key)) return 4;
    return key === 'data' ? 6 : 5;
  }

  /** Columns of a list of objects: every key, ranked, then in order of first appearance. */
  function keysOf(objects) {
    const keys = [];
    for (const o of objects) for (const k of Object.keys(o)) if (!keys.includes(k)) keys.push(k);
    return keys.map((k, i) => [rank(k), i, k]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((e) => e[2]);
  }

  function resultTable(objects, name) {
    const shown = objects.slice(0, ROWS_SHOWN);
    const value = (k) => (o) => (k === 'time' && typeof o[k] === 'number' ? fmtTime(o[k]) : o[k]);
    return table(keysOf(shown).map((k) => [k, value(k)]), shown, name);
  }

  function renderAnswer(answer) {
    if (Array.isArray(answer.rows)) {
      const more = answer.rows.length > ROWS_SHOWN ? ` (first ${ROWS_SHOWN} shown)` : '';
      return [`${answer.count} rows${more}`, answer.rows.length ? resultTable(answer.rows, 'rows') : empty('No rows.')];
    }
    const groups = answer.groups || [];
    return [`${groups.length} groups`, el('div', {},
      groups.length ? resultTable(groups, 'groups') : empty('No groups.'),
      el('h3', {}, 'Sources'), resultTable(answer.sources || [], 'sources'))];
  }

  async function runQuery(event) {
    event.preventDefault();
    const panel = byId('panel-query');
    const body = panel.querySelector(':scope > .body');
    let query;
    try {
      query = JSON.parse(byId('query-text').value);
    } catch (e) {
      setStatus(panel, 'error', `The query is not JSON: ${e.message}`);
      return;
    }
    setStatus(panel, 'loading', 'Running…');
    try {
      const answer = await apiJson('/v1/query', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(query),
      });
      const [summary, content] = renderAnswer(answer);
      body.replaceChildren(content);
      setStatus(panel, 'ok', summary);
    } catch (e) {
      if (e instanceof SignedOut) return;
      body.replaceChildren();
      setStatus(panel, ...describe(e));
    }
  }

  // ---- signing in and out ----

  function showPanels(on) {
    byId('signin').hidden = on;
    byId('panels').hidden = !on;
    byId('controls').hidden = !on;
  }

  async function signIn(event) {
    event.preventDefault();
    const input = byId('token');
    const token = input.value.trim().replace(/^Bearer\s+/i, '');
    const error = byId('signin-error');
    error.textContent = '';
    if (!token) return;
    try {
      await call('/v1/node', token);
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401
        ? 'The node refused this token (401): check that it is the whole token.'
        : describe(e)[1];
      return;
    }
    input.value = '';
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  }

  function start() {
    showPanels(true);
    for (const [id] of PANELS) setStatus(byId(`panel-${id}`), 'loading', 'Loading…');
    refreshAll().then(schedule);
  }

  /** Forgets the token and every figure shown; `why`, if given, is shown on the sign-in form. */
  function signOut(why) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    timer = null;
    knownDatasets = [];
    for (const panel of document.querySelectorAll('.panel')) {
      panel.querySelector(':scope > .body').replaceChildren();
      setStatus(panel, 'empty', '');
    }
    byId('query-text').value = '';
    nodeInfo = null;
    admin = null;
    showWho();
    byId('updated').textContent = 'never';
    byId('signin-error').textContent = typeof why === 'string' ? why : '';
    showPanels(false);
  }

  function init() {
    byId('signin-form').addEventListener('submit', signIn);
    byId('query-form').addEventListener('submit', runQuery);
    byId('pause').addEventListener('click', togglePause);
    byId('refresh').addEventListener('click', () => refreshAll());
    byId('signout').addEventListener('click', () => signOut());
    if (sessionStorage.getItem(TOKEN_KEY)) start();
  }

  init();
})();
