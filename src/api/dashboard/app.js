// The fogmesh dashboard: reads the node's /v1 API and /metrics with the token the user signs in
// with, and renders each panel with DOM nodes and textContent only (never innerHTML), so nothing
// the node holds can run as markup. The token lives in sessionStorage, nowhere else.
'use strict';

(() => {
  const TOKEN_KEY = 'fogmesh.token';
  const REFRESH_MS = 5000;
  const AUDIT_SHOWN = 25;
  const ROWS_SHOWN = 500;
  /** Changes the live view keeps on the page, newest first. */
  const LIVE_SHOWN = 200;
  /** The longest event-stream line (or event) read; a longer one stops the stream. */
  const LIVE_MAX_LINE = 1 << 20;
  /** Series a chart draws (the rest are left out, and the chart says so), and bars. */
  const SERIES_SHOWN = 12;
  const BARS_SHOWN = 60;

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

  /** Whether `ms` is a time a Date can show (a peer may sign any number). */
  const isTime = (ms) => typeof ms === 'number' && Number.isFinite(ms) && Math.abs(ms) <= 8.64e15;

  function fmtTime(ms) {
    if (!isTime(ms)) return '—';
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
    const [status, list, roster] = await Promise.all([
      once('/v1/mesh'), apiJson('/v1/peers'), apiJson('/v1/members').catch(() => null),
    ]);
    const roles = new Map(((roster && roster.members) || []).map((m) => [m.peer_id, m.role]));
    const out = [facts([
      ['mesh', status.mesh], ['members', (status.members || []).join(', ') || '—'],
      ['catch-ups under way', (status.catching_up || []).length],
      ['equivocating authors', (status.equivocations || []).length],
    ])];
    out.push(el('h3', {}, 'Peers'));
    const ps = list.peers || [];
    out.push(ps.length === 0 ? empty('No peers known yet: this node is alone in its mesh.') : table([
      ['organization', (p) => p.org || '(not a member)'], ['role', (p) => roles.get(p.peer) || '—'],
      ['peer id', (p) => mono(p.peer)], ['state', peerState], ['last seen', (p) => fmtAgo(p.last_seen_ms)],
      ['round trip', (p) => (typeof p.rtt_ms === 'number' ? `${p.rtt_ms.toFixed(1)} ms` : '—')],
      ['addresses', (p) => mono((p.addrs || []).join(' '))], ['bad inputs', (p) => p.bad_inputs],
    ], ps, 'peers'));
    if (ps.length > 0) {
      out.push(el('p', { cls: 'hint' }, 'Every connection is direct: fogmesh has no relay transport, '
        + 'so no peer is reached through another.'));
    }
    out.push(...catchUps(status.catching_up || []), ...forks(status.equivocations || []));
    return out;
  }

  function catchUps(list) {
    if (list.length === 0) return [];
    return [el('h3', {}, 'Catching up'), table([
      ['dataset', (c) => c.dataset], ['from', (c) => mono(c.from)],
      ['fetched', (c) => c.fetched], ['missing when it began', (c) => c.missing],
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

  function fmtRetention(r) {
    const parts = [];
    if (r && typeof r.max_age_days === 'number') parts.push(`${r.max_age_days} days`);
    if (r && typeof r.max_records === 'number') parts.push(`${r.max_records} newest`);
    return parts.join(', ') || 'keep all';
  }

  /** A dataset's catch-ups under way, from /v1/mesh (null: the mesh did not answer). */
  function fmtCatchUp(progress, id) {
    if (progress === null) return '—';
    const mine = progress.filter((c) => c.dataset === id);
    if (mine.length === 0) return 'none under way';
    // `missing` is what was missing when the catch-up began; `fetched` counts up towards it.
    return mine.map((c) => {
      const left = Math.max(c.missing - c.fetched, 0);
      const pct = c.missing > 0 ? Math.min(Math.floor((100 * c.fetched) / c.missing), 100) : 100;
      return `${pct}% from ${c.from} (${c.fetched} of ${c.missing} envelopes fetched, ${left} to go)`;
    }).join('; ');
  }

  async function datasets() {
    const [{ datasets: list }, mesh] = await Promise.all([
      apiJson('/v1/datasets'), once('/v1/mesh').catch(() => null),
    ]);
    knownDatasets = (list || []).map((d) => d.id);
    seedQuery();
    liveChoices(list || []);
    const progress = mesh ? (mesh.catching_up || []) : null;
    if (!list || list.length === 0) return empty('No datasets visible to this token.');
    return table([
      ['dataset', (d) => d.id], ['visibility', (d) => d.visibility],
      ['sealed', (d) => (d.encrypted ? 'yes' : 'no')],
      ['readable', (d) => (d.readable ? badge('yes', 'ok') : badge('ciphertext only', 'muted'))],
      ['records', (d) => d.records], ['envelopes', (d) => d.envelopes], ['size', (d) => fmtBytes(d.bytes)],
      ['readers', (d) => (d.readers || []).join(', ') || '—'], ['priority', (d) => d.priority],
      ['retention', (d) => fmtRetention(d.retention)], ['catch-up', (d) => fmtCatchUp(progress, d.id)],
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

  /** Answers asked by more than one panel, read once per refresh. */
  let round = new Map();
  const once = (path) => {
    if (!round.has(path)) round.set(path, apiJson(path));
    return round.get(path);
  };

  async function refreshAll() {
    if (refreshing || !sessionStorage.getItem(TOKEN_KEY)) return;
    refreshing = true;
    round = new Map();
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
    const value = (k) => (o) => {
      if (k === 'time' && typeof o[k] === 'number') return fmtTime(o[k]);
      return k.startsWith('bucket:') ? fmtDim(o[k], k) : o[k];
    };
    return table(keysOf(shown).map((k) => [k, value(k)]), shown, name);
  }

  function renderAnswer(answer, query) {
    if (Array.isArray(answer.rows)) {
      const more = answer.rows.length > ROWS_SHOWN ? ` (first ${ROWS_SHOWN} shown)` : '';
      return [`${answer.count} rows${more}`, answer.rows.length ? resultTable(answer.rows, 'rows') : empty('No rows.')];
    }
    const groups = answer.groups || [];
    return [`${groups.length} groups`, el('div', {},
      groups.length ? chart(groups, query) : null,
      groups.length ? resultTable(groups, 'groups') : empty('No groups.'),
      el('h3', {}, 'Sources'), resultTable(answer.sources || [], 'sources'))];
  }

  // ---- charts: inline SVG made with DOM calls, coloured by classes (style.css) ----

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const W = 760;
  const H = 320;
  const M = { left: 64, right: 44, top: 14, bottom: 58 };

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    for (const child of children) node.append(child instanceof Node ? child : String(child));
    return node;
  }

  const isDimension = (key) => /^(segment|bucket|field):/.test(key);

  /** A bucket's label: its first millisecond as a UTC date (and time, for buckets under a day). */
  function fmtBucket(ms, dim) {
    if (!isTime(ms)) return '(none)';
    const iso = new Date(ms).toISOString();
    return /d$/.test(dim) ? iso.slice(0, 10) : `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
  }

  function fmtDim(value, dim) {
    if (dim.startsWith('bucket:')) return fmtBucket(value, dim);
    if (value === null || value === undefined) return '(none)';
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  }

  /** Round steps for an axis from lo to hi, zero included: [lo', hi', step], or null when the
   * values give no drawable axis (not finite, or too large to step through). */
  function niceScale(lo, hi) {
    lo = Math.min(0, lo);
    hi = Math.max(0, hi);
    if (hi === lo) hi = lo + 1;
    const raw = (hi - lo) / 5;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    const scale = [Math.floor(lo / step) * step, Math.ceil(hi / step) * step, step];
    const drawable = scale.every(Number.isFinite) && step > 0 && (scale[1] - scale[0]) / step <= 50;
    return drawable ? scale : null;
  }

  /** [smallest, largest] of `values`, without spreading them into arguments (thousands of groups). */
  function extent(values) {
    return values.reduce(([lo, hi], v) => [Math.min(lo, v), Math.max(hi, v)], [Infinity, -Infinity]);
  }

  function fmtNum(n) {
    if (Number.isInteger(n)) return String(n);
    return Math.abs(n) >= 100 ? n.toFixed(0) : String(Number(n.toPrecision(3)));
  }

  /** The frame: the y axis with its ticks and grid, the x axis line, the axis titles. */
  function frame(lo, hi, step, xTitle, yTitle) {
    const y = (v) => M.top + ((hi - v) / (hi - lo)) * (H - M.top - M.bottom);
    const g = svg('g', { class: 'axes' });
    const ticks = Math.round((hi - lo) / step);
    for (let i = 0; i <= ticks; i += 1) {
      const v = lo + i * step;
      const at = y(v).toFixed(1);
      g.append(svg('line', { class: 'grid', x1: M.left, x2: W - M.right, y1: at, y2: at }),
        svg('text', { class: 'tick', x: M.left - 6, y: at, 'text-anchor': 'end', 'dominant-baseline': 'middle' }, fmtNum(Number(v.toPrecision(12)))));
    }
    g.append(svg('line', { class: 'axis', x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }),
      svg('line', { class: 'axis', x1: M.left, x2: W - M.right, y1: y(Math.max(lo, 0)), y2: y(Math.max(lo, 0)) }),
      svg('text', { class: 'title', x: M.left + (W - M.left - M.right) / 2, y: H - 6, 'text-anchor': 'middle' }, xTitle),
      svg('text', { class: 'title', x: 14, y: M.top + (H - M.top - M.bottom) / 2, 'text-anchor': 'middle',
        transform: `rotate(-90 14 ${M.top + (H - M.top - M.bottom) / 2})` }, yTitle));
    return [g, y];
  }

  function xLabel(x, text, rotate) {
    const at = H - M.bottom + 16;
    return svg('text', rotate
      ? { class: 'tick', x, y: at, 'text-anchor': 'end', transform: `rotate(-30 ${x} ${at})` }
      : { class: 'tick', x, y: at, 'text-anchor': 'middle' }, text.length > 18 ? `${text.slice(0, 17)}…` : text);
  }

  function legend(names) {
    return el('ul', { cls: 'legend' }, ...names.map((name, i) => el('li', {},
      el('span', { cls: `swatch series-${i % SERIES_SHOWN}` }), name)));
  }

  /** A chart of an aggregate answer: lines per series over time buckets when the groups have a
   * bucket dimension and one other, else a bar per group; the first measure in either case. */
  function chart(groups, query) {
    const keys = keysOf(groups);
    const dims = keys.filter(isDimension);
    const wanted = (query && Array.isArray(query.aggregates)) ? query.aggregates : [];
    const measure = wanted.find((m) => keys.includes(m)) || keys.find((k) => !isDimension(k));
    if (!measure) return null;
    const bucket = dims.find((d) => d.startsWith('bucket:'));
    const figure = (dims.length === 2 && bucket)
      ? lines(groups, bucket, dims.find((d) => d !== bucket), measure)
      : bars(groups, dims, measure);
    return figure && el('figure', { cls: 'chart-box' }, ...figure);
  }

  function lines(groups, bucket, by, measure) {
    const pts = groups.filter((g) => typeof g[measure] === 'number' && typeof g[bucket] === 'number');
    if (pts.length === 0) return null;
    const names = [...new Set(pts.map((g) => fmtDim(g[by], by)))].sort();
    const shown = names.slice(0, SERIES_SHOWN);
    const xs = [...new Set(pts.map((g) => g[bucket]))].sort((a, b) => a - b);
    const scale = niceScale(...extent(pts.map((g) => g[measure])));
    if (!scale) return null;
    const [lo, hi, step] = scale;
    const [axes, y] = frame(lo, hi, step, `${bucket.slice(7)} buckets (UTC)`, measure);
    const span = W - M.left - M.right;
    const at = new Map(xs.map((t, i) => [t, i]));
    const x = (t) => M.left + (xs.length === 1 ? span / 2 : 12 + (at.get(t) / (xs.length - 1)) * (span - 24));
    const every = Math.ceil(xs.length / 10);
    const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-chart': 'lines',
      'aria-label': `${measure} per ${by} per ${bucket.slice(7)}` }, axes);
    xs.forEach((t, i) => { if (i % every === 0) root.append(xLabel(x(t), fmtBucket(t, bucket), xs.length > 6)); });
    shown.forEach((name, i) => {
      const mine = pts.filter((g) => fmtDim(g[by], by) === name).sort((a, b) => a[bucket] - b[bucket]);
      const g = svg('g', { class: `series series-${i}`, 'data-series': name });
      const d = mine.map((p, j) => `${j ? 'L' : 'M'}${x(p[bucket]).toFixed(1)},${y(p[measure]).toFixed(1)}`).join(' ');
      g.append(svg('path', { class: 'line', d }));
      for (const p of mine) {
        g.append(svg('circle', { cx: x(p[bucket]).toFixed(1), cy: y(p[measure]).toFixed(1), r: 3.5, 'data-point': '' },
          svg('title', {}, `${name}, ${fmtBucket(p[bucket], bucket)}: ${p[measure]}`)));
      }
      root.append(g);
    });
    const note = names.length > shown.length ? el('figcaption', { cls: 'hint' }, `The first ${shown.length} of ${names.length} series are drawn; the table has them all.`) : null;
    return [root, legend(shown), note];
  }

  function bars(groups, dims, measure) {
    const all = groups.filter((g) => typeof g[measure] === 'number');
    if (all.length === 0) return null;
    const shown = all.slice(0, BARS_SHOWN);
    const label = (g) => dims.map((d) => fmtDim(g[d], d)).join(' / ') || 'all';
    const scale = niceScale(...extent(shown.map((g) => g[measure])));
    if (!scale) return null;
    const [lo, hi, step] = scale;
    const [axes, y] = frame(lo, hi, step, dims.join(', ') || 'every record', measure);
    const slot = (W - M.left - M.right) / shown.length;
    const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-chart': 'bars',
      'aria-label': `${measure} per ${dims.join(', ') || 'query'}` }, axes);
    const g = svg('g', { class: 'series series-0', 'data-series': measure });
    const every = Math.ceil(shown.length / 20);
    shown.forEach((grp, i) => {
      const v = grp[measure];
      const top = y(Math.max(v, 0));
      const height = Math.max(Math.abs(y(0) - y(v)), 0.5);
      const cx = M.left + slot * (i + 0.5);
      g.append(svg('rect', { x: (cx - slot * 0.35).toFixed(1), y: top.toFixed(1), width: (slot * 0.7).toFixed(1),
        height: height.toFixed(1), 'data-bar': '' }, svg('title', {}, `${label(grp)}: ${v}`)));
      if (i % every === 0) root.append(xLabel(cx, label(grp), shown.length > 6));
    });
    root.append(g);
    const note = all.length > shown.length ? el('figcaption', { cls: 'hint' }, `The first ${shown.length} of ${all.length} groups are drawn; the table has them all.`) : null;
    return [root, legend([measure]), note];
  }

  /**
   * The example queries, first match wins: flu cases per district per day, from the demo flow's
   * daily counts (a `flu-daily` dataset, one record per district and day) or from admissions
   * records (a `flu-cases` dataset, one per ward and time, flu and other diagnoses).
   */
  const EXAMPLES = [
    { pattern: /\/flu-daily$/, query: (ds) => ({ datasets: [ds], group_by: ['segment:0', 'bucket:1d'],
      aggregates: ['sum:count'] }) },
    { pattern: /\/flu-cases$/, query: (ds) => ({ datasets: [ds], where: ['diagnosis=flu'],
      group_by: ['segment:0', 'bucket:1d'], aggregates: ['sum:cases'] }) },
  ];

  /** The example query: flu cases per district per day over a flu dataset this token sees. */
  function exampleQuery() {
    let query = null;
    for (const ex of EXAMPLES) {
      const ds = knownDatasets.find((d) => ex.pattern.test(d));
      if (ds) {
        query = ex.query(ds);
        break;
      }
    }
    if (!query) {
      const flu = knownDatasets.find((d) => d.includes('flu')) || knownDatasets[0] || 'hospital/flu-cases';
      query = EXAMPLES[EXAMPLES.length - 1].query(flu);
    }
    byId('query-text').value = JSON.stringify(query);
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
      const [summary, content] = renderAnswer(answer, query);
      body.replaceChildren(content);
      setStatus(panel, 'ok', summary);
    } catch (e) {
      if (e instanceof SignedOut) return;
      body.replaceChildren();
      setStatus(panel, ...describe(e));
    }
  }

  // ---- live view: a dataset's event stream ----

  /** The stream followed: its abort controller, dataset and changes seen; null when none. */
  let live = null;

  /** The datasets the live view offers; the choice made is kept across refreshes. */
  function liveChoices(list) {
    const select = byId('live-dataset');
    const ids = list.map((d) => d.id);
    const have = [...select.options].map((o) => o.value);
    if (ids.length === have.length && ids.every((id, i) => id === have[i])) return;
    const chosen = select.value;
    select.replaceChildren(...list.map((d) => {
      const option = el('option', {}, d.readable ? d.id : `${d.id} (ciphertext only)`);
      option.value = d.id;
      return option;
    }));
    if (ids.includes(chosen)) select.value = chosen;
  }

  /** Stops the stream followed, if any; `why` goes in the panel's status. */
  function stopLive(why) {
    const was = live;
    live = null;
    byId('live-stop').disabled = true;
    if (!was) return;
    was.controller.abort();
    if (why) setStatus(byId('panel-live'), 'stopped', why);
  }

  /** Reads server-sent events from `stream`, calling `onEvent(kind, data)` for each. An event
   * (or a line) longer than LIVE_MAX_LINE is dropped as it comes, never held whole, and reported
   * as `onEvent('skipped', '')`; the stream goes on. */
  async function readEvents(stream, onEvent) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let kind = '';
    let data = [];
    let size = 0;
    let skipping = false; // the event under way is too long: its lines are dropped
    let midLine = false; // a too-long line is being dropped up to its end
    const line = (text) => {
      if (text === '') {
        if (skipping) onEvent('skipped', '');
        else if (data.length > 0) onEvent(kind || 'message', data.join('\n'));
        [kind, data, size, skipping] = ['', [], 0, false];
        return;
      }
      if (skipping || text.startsWith(':')) return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      const value = colon < 0 ? '' : text.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') kind = value.slice(0, 64);
      if (field !== 'data') return;
      size += value.length + 1;
      if (size > LIVE_MAX_LINE) [skipping, data] = [true, []];
      else data.push(value);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl = buffer.indexOf('\n');
      while (nl >= 0) {
        const text = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (midLine) midLine = false;
        else line(text);
        nl = buffer.indexOf('\n');
      }
      if (buffer.length > LIVE_MAX_LINE) [buffer, midLine, skipping, data] = ['', true, true, []];
    }
  }

  /** One change as a list item: when it arrived, its kind, the record's name and id, its data. */
  function change(kind, text) {
    let ev = null;
    try { ev = JSON.parse(text); } catch (_) { /* shown as text */ }
    const at = el('time', {}, new Date().toLocaleTimeString());
    if (kind === 'upsert' && ev && ev.record) {
      const r = ev.record;
      return el('li', { data: { kind, name: String(r.name) } }, at, ' ', badge('upsert', 'ok'), ' ',
        el('strong', {}, r.name), ' ', mono(r.id), ' ', el('span', { cls: 'hint' }, fmtTime(r.time)),
        el('div', {}, mono(JSON.stringify(r.data))));
    }
    if (kind === 'delete' && ev) {
      return el('li', { data: { kind, name: String(ev.name) } }, at, ' ', badge('delete', 'bad'), ' ',
        el('strong', {}, ev.name), ' ', mono(ev.id));
    }
    if (kind === 'lagged' && ev) {
      return el('li', { data: { kind } }, at, ' ', badge('lagged', 'warn'),
        ` ${ev.missed} changes were missed (the page fell behind): run a query to see the dataset as it is.`);
    }
    if (kind === 'skipped') {
      return el('li', { data: { kind } }, at, ' ', badge('skipped', 'warn'),
        ` a change longer than ${LIVE_MAX_LINE} bytes was not shown: run a query to see it.`);
    }
    return el('li', { data: { kind } }, at, ' ', badge(kind, 'muted'), ' ', mono(text.slice(0, 500)));
  }

  async function follow(event) {
    event.preventDefault();
    const dataset = byId('live-dataset').value;
    const token = sessionStorage.getItem(TOKEN_KEY);
    stopLive();
    if (!dataset || !token) return;
    const me = { controller: new AbortController(), dataset, seen: 0 };
    live = me;
    byId('live-stop').disabled = false;
    const panel = byId('panel-live');
    const list = el('ol', { cls: 'changes', data: { dataset } });
    panel.querySelector(':scope > .body').replaceChildren(list);
    setStatus(panel, 'loading', `Connecting to ${dataset}…`);
    const [owner, name] = dataset.split('/').map(encodeURIComponent);
    try {
      const res = await fetch(`/v1/datasets/${owner}/${name}/events`, {
        headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
        cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer', signal: me.controller.signal,
      });
      if (!res.ok) throw errorOf(res.status, await res.text());
      const since = new Date().toLocaleTimeString();
      const following = () => `Following ${dataset} since ${since}: ${me.seen} changes, newest first`
        + (me.seen > LIVE_SHOWN ? ` (the last ${LIVE_SHOWN} shown)` : '');
      if (live === me) setStatus(panel, 'following', following());
      await readEvents(res.body, (kind, text) => {
        if (live !== me) return;
        me.seen += 1;
        list.prepend(change(kind, text));
        while (list.children.length > LIVE_SHOWN) list.lastElementChild.remove();
        setStatus(panel, 'following', following());
      });
      if (live === me) setStatus(panel, 'ended', `The node ended the stream of ${dataset} (shut down, or this token may no longer read it).`);
    } catch (e) {
      if (live !== me || (e && e.name === 'AbortError')) return;
      if (e instanceof ApiError && e.status === 401) {
        signOut('The node no longer accepts this token (rotated or removed?). Sign in again.');
        return;
      }
      setStatus(panel, ...describe(e));
    } finally {
      if (live === me) {
        live = null;
        byId('live-stop').disabled = true;
      }
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
    stopLive();
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    timer = null;
    knownDatasets = [];
    for (const panel of document.querySelectorAll('.panel')) {
      panel.querySelector(':scope > .body').replaceChildren();
      setStatus(panel, 'empty', '');
    }
    byId('query-text').value = '';
    byId('live-dataset').replaceChildren();
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
    byId('query-example').addEventListener('click', exampleQuery);
    byId('live-form').addEventListener('submit', follow);
    byId('live-stop').addEventListener('click', () => stopLive('Stopped.'));
    byId('live-dataset').addEventListener('change', () => stopLive('Stopped: another dataset was chosen.'));
    byId('pause').addEventListener('click', togglePause);
    byId('refresh').addEventListener('click', () => refreshAll());
    byId('signout').addEventListener('click', () => signOut());
    if (sessionStorage.getItem(TOKEN_KEY)) start();
  }

  init();
})();
