// Drives the dashboard in a real Chromium with playwright-core against the agency's node of a
// running `fogmesh demo --serve`, which node/tests/browser.rs started. Exits non-zero, saying what
// failed, on any broken expectation. Environment:
//   FOGMESH_URL          the agency's API, http://127.0.0.1:PORT
//   FOGMESH_ADMIN_TOKEN  its admin token
//   FOGMESH_APP_TOKEN    the token of an app with no rights
//   FOGMESH_EXPECT       JSON: the roster (org, role, state), the datasets the admin sees, the
//                        example query and the node's own answer to it (groups, districts)
//   FOGMESH_CHROMIUM     the Chromium executable
//   FOGMESH_SCREENSHOTS  optional: a directory to save demo-mesh.png and demo-chart.png into
import { strict as assert } from 'node:assert';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  signInAsApp,
  ADMIN, SHOTS, WAIT, allow, drive, env, queryDirect, rowsOf, runQuery, shot, signIn, signOut, statusOf,
  step, waitPanel,
} from './lib.mjs';

const APP = env('FOGMESH_APP_TOKEN');
const EXPECT = JSON.parse(env('FOGMESH_EXPECT'));

/** Waits until `check()` holds (the panels refresh every 5 s); fails with `what()` otherwise. */
async function until(page, check, what) {
  const deadline = Date.now() + WAIT;
  while (Date.now() < deadline) {
    if (await check()) return;
    await page.waitForTimeout(250);
  }
  assert.fail(await what());
}

async function members(page) {
  for (const id of ['node', 'health', 'peers', 'members', 'datasets', 'apps', 'grants', 'flows', 'audit']) {
    await waitPanel(page, id, 'ok');
  }
  const node = await page.textContent('#panel-node .body');
  assert.ok(node.includes(EXPECT.peer_id), `node panel shows the agency's peer id: ${node}`);
  const want = EXPECT.members.map((m) => [m.org, m.role, m.state]).sort();
  const shown = async () => ((await rowsOf(page, 'members')) || [])
    .map((m) => [m.organization, m.role, m.state]).sort();
  await until(page, async () => JSON.stringify(await shown()) === JSON.stringify(want),
    async () => `members panel: ${JSON.stringify(await shown())}, wanted ${JSON.stringify(want)}`);
  // Every other active member is a peer of the agency's node, with its role from the roster.
  const others = EXPECT.members.filter((m) => m.state === 'active' && m.org !== 'agency');
  const peers = async () => ((await rowsOf(page, 'peers')) || []).map((p) => [p.organization, p.role]);
  await until(page, async () => {
    const ps = await peers();
    return others.every((m) => ps.some(([org, role]) => org === m.org && role === m.role));
  }, async () => `peers panel: ${JSON.stringify(await peers())}, wanted ${JSON.stringify(others)}`);
  const mesh = await page.textContent('#panel-peers .body');
  for (const m of EXPECT.members.filter((x) => x.state === 'active')) {
    assert.ok(mesh.includes(m.org), `the mesh panel names ${m.org}`);
  }
  const datasets = ((await rowsOf(page, 'datasets')) || []).map((d) => d.dataset).sort();
  assert.deepEqual(datasets, [...EXPECT.datasets].sort(), 'the datasets panel lists what the agency sees');
  step(`members: ${want.map((m) => m.join(' ')).join(', ')}`);
  // The roster's organization, role and state columns (peer ids and addresses would triple the size).
  if (SHOTS) {
    const clip = await page.evaluate(() => {
      const h = document.querySelector('#panel-members > h2').getBoundingClientRect();
      const t = document.querySelector('table[data-table="members"]').getBoundingClientRect();
      const state = document.querySelector('table[data-table="members"] thead th:nth-child(3)').getBoundingClientRect();
      return { x: t.x + window.scrollX - 12, y: h.y + window.scrollY - 12, width: state.right - t.x + 14,
        height: t.bottom - h.y + 24 };
    });
    const path = join(SHOTS, 'demo-mesh.png');
    mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path, clip, fullPage: true });
    step(`screenshot ${path}`);
  }
}

async function chart(page) {
  await page.click('#query-example');
  const query = JSON.parse(await page.inputValue('#query-text'));
  assert.deepEqual(query, EXPECT.example, 'the example asks the flow\'s daily flu counts');
  const direct = await queryDirect(query);
  assert.equal(direct.status, 200, JSON.stringify(direct.body));
  const { groups } = direct.body;
  assert.deepEqual(groups, EXPECT.groups, 'the node answers as it did to the test');
  const measure = query.aggregates[0];
  await page.click('#query-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#panel-query > .status').dataset.state !== 'loading',
    null, { timeout: WAIT });
  assert.equal(await statusOf(page, 'query').textContent(), `${groups.length} groups`);
  const svg = page.locator('#panel-query svg[data-chart="lines"]');
  assert.equal(await svg.count(), 1, 'a line chart');
  const series = await svg.locator('g[data-series]').evaluateAll((gs) => gs.map((g) => [
    g.getAttribute('data-series'), g.querySelectorAll('circle[data-point]').length]));
  assert.deepEqual(series.map(([name]) => name), EXPECT.districts, 'one series per district');
  for (const [name, points] of series) {
    const want = groups.filter((g) => g['segment:0'] === name && typeof g[measure] === 'number').length;
    assert.equal(points, want, `${name}: a point per day`);
  }
  assert.equal(await svg.locator('circle[data-point]').count(), groups.length, 'a point per group');
  const legend = await page.locator('#panel-query .legend li').allTextContents();
  assert.deepEqual(legend, EXPECT.districts, 'the legend names the districts');
  const table = (await rowsOf(page, 'groups')).map((g) => [g['segment:0'], Number(g[measure])]);
  assert.deepEqual(table, groups.map((g) => [g['segment:0'], g[measure]]), 'the table has the counts');
  step(`a line per district (${EXPECT.districts.join(', ')}), ${groups.length} points`);
  await shot(page, 'demo-chart', '#panel-query > h2', '#panel-query .chart-box');
}

async function nobody(page) {
  await signInAsApp(page, APP);
  assert.equal(await page.getAttribute('#whoami', 'data-token'), 'app');
  // Only what a grant to all the agency's apps (`agency/*`) shows every app of it.
  const visible = ((await rowsOf(page, 'datasets')) || []).map((d) => d.dataset);
  assert.deepEqual(visible, EXPECT.app_datasets, 'the datasets panel shows only what the grants give');
  const options = await page.locator('#live-dataset option').evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(options, EXPECT.app_datasets, 'the live view offers only what the grants give');
  // Nothing of the demo's data anywhere on the page: no other dataset, no district, no figure.
  const text = await page.evaluate(() => document.body.innerText);
  for (const word of ['district-', 'sum:count', 'avg:cost', ...EXPECT.hidden]) {
    assert.ok(!text.includes(word), `the page shows ${word} to a token without rights`);
  }
  assert.equal(await page.locator('table[data-table="groups"], table[data-table="rows"], #panels svg').count(),
    0, 'no group, record or chart');
  // A query of each dataset it may not see: refused by the node and the page, nothing drawn.
  allow(403, 404);
  for (const id of EXPECT.hidden) {
    const query = { datasets: [id], group_by: ['segment:0'], aggregates: ['count'] };
    const direct = await queryDirect(query, APP);
    assert.ok([403, 404].includes(direct.status), `the node refuses ${id}: ${direct.status}`);
    const said = await runQuery(page, query);
    assert.ok(said.includes(String(direct.status)), `the query panel says ${direct.status}: ${said}`);
    assert.equal(await page.locator('#panel-query svg, #panel-query table').count(), 0, `${id}: nothing drawn`);
    assert.ok(!(await page.evaluate(() => document.body.innerText)).includes('district-'), `${id}: no district`);
  }
  step(`a token without rights sees ${EXPECT.app_datasets.join(', ') || 'no dataset'} (granted to agency/*), `
    + `403 on the admin panels, and nothing of ${EXPECT.hidden.join(', ')}`);
  // The example: the flow's counts, which the grant to `agency/*` lets this app read too.
  await page.click('#query-example');
  const example = JSON.parse(await page.inputValue('#query-text'));
  const direct = await queryDirect(example, APP);
  if (EXPECT.app_datasets.includes(EXPECT.example.datasets[0])) {
    assert.deepEqual(example, EXPECT.example, 'the example over the granted flu counts');
    assert.equal(direct.status, 200, JSON.stringify(direct.body));
    assert.deepEqual(direct.body.groups, EXPECT.groups, 'the grant shows the app what the admin sees');
  } else {
    assert.ok([403, 404].includes(direct.status), `the example is refused: ${direct.status}`);
    assert.ok((await runQuery(page, example)).includes(String(direct.status)));
    assert.equal(await page.locator('#panel-query svg, #panel-query table').count(), 0, 'nothing drawn');
  }
}

drive(async (page) => {
  step('open the agency\'s dashboard');
  const res = await page.goto(`${env('FOGMESH_URL')}/`);
  assert.equal(res.status(), 200);
  step('sign in with the agency\'s admin token');
  await signIn(page, ADMIN);
  await members(page);
  step('the example chart: flu cases per district per day');
  await chart(page);
  step('sign out');
  await signOut(page);
  step('sign in with a token without rights');
  await nobody(page);
  await signOut(page);
});
