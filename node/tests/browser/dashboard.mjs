// Drives the node's dashboard in a real Chromium with playwright-core, against nodes that
// node/tests/browser.rs started and filled. Exits non-zero, saying what failed, on any broken
// expectation. Environment:
//   FOGMESH_URL          the node's API, http://127.0.0.1:PORT
//   FOGMESH_ADMIN_TOKEN  its admin token
//   FOGMESH_APP_TOKEN    the token of an app holding read:hospital/flu only
//   FOGMESH_EXPECT       JSON: what the test wrote (datasets and counts, peers, apps, flows, query)
//   FOGMESH_CHROMIUM     the Chromium executable
//   FOGMESH_SCREENSHOTS  optional: a directory to save screenshots into
import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import {
  signInAsApp,
  ADMIN, BASE, SHOTS, WAIT, allow, drive, env, problems, queryDirect, rowsOf, runQuery, shot, signIn,
  signOut, statusOf, step, takeViolations, violations, waitPanel,
} from './lib.mjs';

const APP = env('FOGMESH_APP_TOKEN');
const EXPECT = JSON.parse(env('FOGMESH_EXPECT'));
const REFRESH_MS = 5_000;

async function datasetRecords(page, id) {
  const rows = (await rowsOf(page, 'datasets')) || [];
  const row = rows.find((r) => r.dataset === id);
  return row ? Number(row.records) : null;
}

async function waitRecords(page, id, want) {
  const deadline = Date.now() + WAIT;
  while (Date.now() < deadline) {
    if ((await datasetRecords(page, id)) === want) return;
    await page.waitForTimeout(200);
  }
  assert.fail(`datasets panel: ${id} shows ${await datasetRecords(page, id)} records, wanted ${want}`);
}

async function publish(...records) {
  const res = await fetch(`${BASE}/v1/datasets/${EXPECT.live.dataset}/records`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ records }),
  });
  assert.equal(res.status, 200, `publishing: ${await res.text()}`);
}

/** Horizontal overflow of the page at `width` x `height`: none wanted. */
async function fits(page, width, height) {
  await page.setViewportSize({ width, height });
  await page.waitForTimeout(150);
  const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= inner, `at ${width}x${height} the page is ${scroll} px wide, more than ${inner}`);
  step(`no horizontal overflow at ${width}x${height}`);
}

// ---- the steps ----

async function openPage(page) {
  const res = await page.goto(`${BASE}/`);
  assert.equal(res.status(), 200);
  const page2 = await fetch(`${BASE}/dashboard`);
  assert.equal(page2.status, 200, '/dashboard serves the page too');
  assert.equal(await page2.text(), await res.text(), '/ and /dashboard serve the same page');
  const h = res.headers();
  assert.match(h['content-security-policy'], /^default-src 'self';/);
  assert.doesNotMatch(h['content-security-policy'], /unsafe/);
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.equal(h['cache-control'], 'no-cache');
  assert.ok(await page.locator('#signin').isVisible(), 'the sign-in form shows first');
  assert.ok(await page.locator('#panels').isHidden(), 'no panel shows before signing in');
}

async function wrongToken(page) {
  allow(401);
  await page.fill('#token', 'fm_not-a-token');
  await page.click('#signin-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('signin-error').textContent !== '');
  assert.match(await page.textContent('#signin-error'), /401/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
  allow();
}

async function adminPanels(page) {
  for (const id of ['node', 'health', 'peers', 'members', 'datasets', 'apps', 'grants', 'flows', 'audit']) {
    await waitPanel(page, id, 'ok');
  }
  const node = await page.textContent('#panel-node .body');
  assert.ok(node.includes(EXPECT.peer_id), `node panel shows its peer id: ${node}`);
  for (const [id, records] of Object.entries(EXPECT.datasets)) {
    assert.equal(await datasetRecords(page, id), records, `datasets panel: ${id}`);
  }
  const peers = await rowsOf(page, 'peers');
  const peer = peers.find((p) => p['peer id'] === EXPECT.peer.id);
  assert.ok(peer, `peers panel lists ${EXPECT.peer.id}: ${JSON.stringify(peers)}`);
  assert.deepEqual([peer.organization, peer.role, peer.state], [EXPECT.peer.org, 'member', 'up'], 'its role from the roster');
  const flu = (await rowsOf(page, 'datasets')).find((d) => d.dataset === EXPECT.live.dataset);
  assert.deepEqual([flu.sealed, flu.readable, flu.readers, flu.priority, flu.retention, flu['catch-up']],
    ['yes', 'yes', EXPECT.peer.org, 'normal', 'keep all', 'none under way'], JSON.stringify(flu));
  assert.match(flu.size, /^\d+(\.\d)? (B|KiB|MiB)$/, `the dataset's size in the store: ${JSON.stringify(flu)}`);
  const members = (await rowsOf(page, 'members')).map((m) => [m.organization, m.state]);
  assert.deepEqual(members, EXPECT.members.map((o) => [o, 'active']));
  const apps = (await rowsOf(page, 'apps')).map((a) => a.app);
  for (const a of EXPECT.apps) assert.ok(apps.includes(a), `apps panel: ${a} in ${apps}`);
  const grants = await rowsOf(page, 'grants');
  assert.ok(grants.some((g) => g.grantee === EXPECT.grantee && g.state === 'active'), JSON.stringify(grants));
  const flows = (await rowsOf(page, 'flows')).map((f) => f.flow);
  assert.deepEqual(flows, EXPECT.flows);
  const audit = await rowsOf(page, 'audit');
  assert.ok(audit.some((a) => a.action === 'app-add'), `audit panel: ${JSON.stringify(audit.slice(0, 3))}`);
  const health = Object.fromEntries((await rowsOf(page, 'health')).map((r) => [r.figure, r.value]));
  assert.equal(health['members on the roster'], String(EXPECT.members.length), JSON.stringify(health));
  assert.equal(health['members connected'], '1');
  // A labelled family with no sample yet is 0, not "not exposed".
  assert.equal(health['envelopes rejected (no write authority)'], '0');
  assert.equal(health['forks proven (equivocation)'], '0');
  assert.equal(await page.getAttribute('#whoami', 'data-token'), 'admin');
}

async function refreshing(page) {
  const { dataset, records } = EXPECT.live;
  await publish({ name: 'live/added', data: { cases: -1 } });
  await waitRecords(page, dataset, records + 1);
  step('auto-refresh showed a record written after sign-in');
  await page.click('#pause');
  assert.equal(await page.textContent('#pause'), 'Resume');
  // A refresh already under way when pausing may still finish: wait for it.
  await page.waitForSelector('#panels[aria-busy="false"]', { timeout: WAIT });
  const before = await page.textContent('#updated');
  await publish({ name: 'live/added', data: { cases: -2 } });
  await page.waitForTimeout(REFRESH_MS + 2_000);
  assert.equal(await page.textContent('#updated'), before, 'paused: no refresh');
  assert.equal(await datasetRecords(page, dataset), records + 1, 'paused: the old count stays');
  await page.click('#refresh');
  await waitRecords(page, dataset, records + 2);
  await page.click('#pause');
  assert.equal(await page.textContent('#pause'), 'Pause');
  step('pause held the figures; refresh now and resume work');
}

async function queries(page) {
  const q = EXPECT.query;
  const summary = await runQuery(page, { datasets: [q.dataset], where: [q.where], order_by: 'name' });
  assert.equal(summary, `${q.rows} rows`);
  const rows = await rowsOf(page, 'rows');
  assert.equal(rows.length, q.rows);
  assert.ok(rows.every((r) => r.dataset === q.dataset && r.name.startsWith('d')), JSON.stringify(rows[0]));
  const agg = await runQuery(page, { datasets: [q.dataset], group_by: ['segment:0'], aggregates: ['count'] });
  assert.match(agg, /groups$/);
  const groups = Object.fromEntries((await rowsOf(page, 'groups')).map((g) => [g['segment:0'], g.count]));
  assert.equal(groups[q.group], String(q.group_count), JSON.stringify(groups));
  // One dimension, no time bucket: a bar per group.
  assert.equal(await page.locator('#panel-query svg[data-chart="bars"]').count(), 1, 'a bar chart');
  assert.equal(await page.locator('#panel-query svg rect[data-bar]').count(), Object.keys(groups).length);
  // Data is text, never markup: the marker record's HTML shows as written and does not run.
  await runQuery(page, { datasets: [q.dataset], name_prefix: 'x' });
  const cell = await page.textContent('table[data-table="rows"] tbody');
  assert.ok(cell.includes(q.marker), `the marker shows as text: ${cell}`);
  assert.equal(await page.locator('#panel-query img').count(), 0, 'no element made from data');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  allow(400);
  const refused = await runQuery(page, { datasets: [q.dataset], nonsense: 1 });
  assert.match(refused, /400/);
  allow();
  await page.fill('#query-text', '{not json');
  await page.click('#query-form button[type=submit]');
  assert.match(await statusOf(page, 'query').textContent(), /not JSON/);
}

async function charts(page) {
  const c = EXPECT.chart;
  await page.click('#query-example');
  const query = JSON.parse(await page.inputValue('#query-text'));
  assert.deepEqual(query.datasets, [c.dataset], `the example asks the flu cases: ${JSON.stringify(query)}`);
  assert.deepEqual(query.group_by, ['segment:0', 'bucket:1d']);
  const direct = await queryDirect(query);
  assert.equal(direct.status, 200, JSON.stringify(direct.body));
  const groups = direct.body.groups;
  const measure = query.aggregates[0];
  const districts = [...new Set(groups.map((g) => g['segment:0']))].sort();
  assert.equal(districts.length, c.districts, JSON.stringify(groups));
  assert.equal(groups.length, c.districts * c.days, 'a group per district and day');
  await page.click('#query-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#panel-query > .status').dataset.state !== 'loading');
  assert.equal(await statusOf(page, 'query').textContent(), `${groups.length} groups`);
  const svg = page.locator('#panel-query svg[data-chart="lines"]');
  assert.equal(await svg.count(), 1, 'a line chart for a bucket and a district');
  const series = await svg.locator('g[data-series]').evaluateAll((gs) => gs.map((g) => [
    g.getAttribute('data-series'), g.querySelectorAll('circle[data-point]').length]));
  assert.deepEqual(series.map(([name]) => name), districts, 'one series per district');
  for (const [name, points] of series) {
    const want = groups.filter((g) => g['segment:0'] === name && typeof g[measure] === 'number').length;
    assert.equal(points, want, `${name}: a point per day`);
  }
  assert.equal(await svg.locator('circle[data-point]').count(), groups.length, 'a point per group');
  const legend = await page.locator('#panel-query .legend li').allTextContents();
  assert.deepEqual(legend, districts, 'the legend names the districts');
  const ticks = await svg.locator('text.tick').allTextContents();
  const day0 = new Date(Math.min(...groups.map((g) => g['bucket:1d']))).toISOString().slice(0, 10);
  assert.ok(ticks.includes(day0), `the x axis shows dates: ${ticks}`);
  assert.equal((await rowsOf(page, 'groups')).length, groups.length, 'the table stays');
  await shot(page, 'dashboard-chart', '#panel-query > h2', '#panel-query .chart-box');
}

async function liveView(page) {
  const { dataset } = EXPECT.live;
  const options = await page.locator('#live-dataset option').evaluateAll((os) => os.map((o) => o.value));
  for (const id of Object.keys(EXPECT.datasets)) assert.ok(options.includes(id), `the live view offers ${id}: ${options}`);
  await page.selectOption('#live-dataset', dataset);
  await page.click('#live-follow');
  await waitPanel(page, 'live', 'following');
  assert.equal(await page.locator('#panel-live .changes li').count(), 0, 'nothing before a change');
  await publish({ name: 'live/streamed', data: { cases: 7 } });
  await page.waitForSelector('#panel-live .changes li[data-name="live/streamed"]', { timeout: WAIT });
  const item = await page.textContent('#panel-live .changes li');
  assert.ok(item.includes('live/streamed') && item.includes('"cases":7'), item);
  await publish({ name: 'live/streamed-2', data: { cases: 8 } });
  await page.waitForSelector('#panel-live .changes li[data-name="live/streamed-2"]', { timeout: WAIT });
  const names = await page.locator('#panel-live .changes li').evaluateAll((ls) => ls.map((l) => l.dataset.name));
  assert.deepEqual(names, ['live/streamed-2', 'live/streamed'], 'newest first');
  assert.match(await statusOf(page, 'live').textContent(), /2 changes/);
  await shot(page, 'dashboard-live', '#panel-live');
  // The page keeps the newest 200 and counts them all.
  const burst = Array.from({ length: 210 }, (_, i) => ({ name: `live/burst-${i}`, data: { cases: 0 } }));
  await publish(...burst);
  await page.waitForSelector('#panel-live .changes li[data-name="live/burst-209"]', { timeout: WAIT });
  await page.waitForFunction(() => /212 changes/.test(document.querySelector('#panel-live > .status').textContent),
    null, { timeout: WAIT });
  assert.equal(await page.locator('#panel-live .changes li').count(), 200, 'the newest 200 are kept');
  assert.equal(await page.getAttribute('#panel-live .changes li:first-child', 'data-name'), 'live/burst-209');
  assert.equal(await page.getAttribute('#panel-live .changes li:last-child', 'data-name'), 'live/burst-10');
  await page.click('#live-stop');
  await waitPanel(page, 'live', 'stopped');
  await publish({ name: 'live/after-stop', data: { cases: 9 } });
  await page.waitForTimeout(1_000);
  assert.equal(await page.locator('#panel-live li[data-name="live/after-stop"]').count(), 0, 'stopped: nothing more');
  step('the live view showed records written after it started, newest first, and stopped');
  // Following again, then signing out, ends the stream with the session.
  await page.click('#live-follow');
  await waitPanel(page, 'live', 'following');
}

async function layouts(page) {
  await fits(page, 1366, 768);
  await fits(page, 768, 1024);
  if (SHOTS) {
    await page.locator('#panel-query').scrollIntoViewIfNeeded();
    await page.evaluate(() => document.getElementById('panel-query').scrollIntoView());
    const path = join(SHOTS, 'dashboard-tablet.png');
    await page.screenshot({ path, clip: { x: 0, y: 0, width: 768, height: 860 } });
    step(`screenshot ${path}`);
  }
  await page.setViewportSize({ width: 1200, height: 860 });
  await page.evaluate(() => window.scrollTo(0, 0));
}

async function cspHolds(page) {
  const ran = await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.__inline = 1';
    document.body.append(s);
    return window.__inline;
  });
  assert.equal(ran, undefined, 'an inline script is blocked');
  const deadline = Date.now() + WAIT;
  while (violations.length === 0 && Date.now() < deadline) await page.waitForTimeout(50);
  const seen = takeViolations();
  assert.ok(seen.some((v) => v.startsWith('script-src')), JSON.stringify(seen));
  // Chrome reports the blocked script on the console too: that one error was wanted.
  const i = problems.findIndex((p) => p.includes('Content Security Policy'));
  if (i >= 0) problems.splice(i, 1);
}

async function appToken(page) {
  await signInAsApp(page, APP);
  const visible = (await rowsOf(page, 'datasets')).map((d) => d.dataset);
  assert.deepEqual(visible, EXPECT.app_datasets, 'the app sees only what it may read');
  const options = await page.locator('#live-dataset option').evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(options, EXPECT.app_datasets, 'the live view offers only what the app may read');
  // The chart's query over a dataset the app holds no right on: refused, nothing drawn.
  const chartQuery = { datasets: [EXPECT.chart.dataset], group_by: ['segment:0', 'bucket:1d'], aggregates: ['count'] };
  const direct = await queryDirect(chartQuery, APP);
  assert.ok([403, 404].includes(direct.status), `the node refuses the app: ${direct.status}`);
  allow(403, 404);
  const refused = await runQuery(page, chartQuery);
  assert.ok(refused.includes(String(direct.status)), `the query panel says ${direct.status}: ${refused}`);
  assert.equal(await page.locator('#panel-query svg, #panel-query table').count(), 0, 'no chart, no table');
  const shown = await page.textContent('#panels');
  assert.ok(!shown.includes('district-'), 'no district of the dataset the app may not read shows');
  assert.equal(await page.getAttribute('#whoami', 'data-token'), 'app');
  await shot(page, 'dashboard-app-token', '#panel-apps', '#panel-grants', '#panel-flows');
}

drive(async (page) => {
  step('open the page');
  await openPage(page);
  await shot(page, 'dashboard-signin', '#signin');
  step('a wrong token is refused');
  await wrongToken(page);
  step('sign in with the admin token');
  await signIn(page, ADMIN);
  await adminPanels(page);
  await shot(page, 'dashboard-overview');
  await shot(page, 'dashboard-mesh', '#panel-peers');
  await shot(page, 'dashboard-datasets', '#panel-datasets');
  step('a reload keeps the session (sessionStorage)');
  await page.reload();
  await waitPanel(page, 'datasets', 'ok');
  await refreshing(page);
  step('queries');
  await queries(page);
  step('the chart of flu cases per district per day');
  await charts(page);
  step('laptop and tablet layouts');
  await layouts(page);
  step('the live view of a dataset');
  await liveView(page);
  step('the Content-Security-Policy is enforced');
  await cspHolds(page);
  step('sign out');
  await signOut(page);
  step('sign in with an app token');
  await appToken(page);
  await signOut(page);
  await page.reload();
  assert.ok(await page.locator('#signin').isVisible(), 'still signed out after a reload');
});
