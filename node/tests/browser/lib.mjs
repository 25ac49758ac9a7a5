// What the browser scripts (dashboard.mjs, demo.mjs) share: the environment, the page's console
// errors and CSP violations, screenshots, and reading and driving the dashboard's panels.
import { strict as assert } from 'node:assert';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
export const BASE = env('FOGMESH_URL');
export const ADMIN = env('FOGMESH_ADMIN_TOKEN');
export const SHOTS = process.env.FOGMESH_SCREENSHOTS || '';
export const WAIT = 20_000;

export const step = (what) => console.log(`- ${what}`);

// ---- what the page reports: console errors, page errors, CSP violations ----

export const problems = [];
let allowedStatuses = new Set();

/** The HTTP statuses whose console errors are expected from now on (none: no argument). */
export function allow(...statuses) {
  allowedStatuses = new Set(statuses);
}

export function watch(page) {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const status = /status of (\d{3})/.exec(msg.text());
    if (status && allowedStatuses.has(Number(status[1]))) return;
    problems.push(`console error: ${msg.text()} (${msg.location().url})`);
  });
}

export const violations = [];

/** Runs in the page before its own script: every securitypolicyviolation is reported. */
const reportViolations = () => {
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__reportCsp(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
  });
};

export function takeViolations() {
  return violations.splice(0, violations.length);
}

/** Saves a screenshot of the area the `targets` cover, or of the top of the page. */
export async function shot(page, name, ...targets) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  let clip = { x: 0, y: 0, width: 1200, height: 540 };
  if (targets.length > 0) {
    // Page coordinates, as a full-page clip takes them (boundingBox() is relative to the viewport).
    const boxes = await Promise.all(targets.map((t) => page.locator(t).evaluate((e) => {
      const r = e.getBoundingClientRect();
      return { x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height };
    })));
    const x = Math.min(...boxes.map((b) => b.x));
    const y = Math.min(...boxes.map((b) => b.y));
    const right = Math.max(...boxes.map((b) => b.x + b.width));
    const bottom = Math.max(...boxes.map((b) => b.y + b.height));
    clip = { x, y, width: right - x, height: bottom - y };
  }
  await page.screenshot({ path, clip, fullPage: true });
  step(`screenshot ${path}`);
}

// ---- reading the page ----

export const statusOf = (page, id) => page.locator(`#panel-${id} > .status`);

export async function waitPanel(page, id, state) {
  await page.waitForFunction(([pid, want]) => {
    const s = document.querySelector(`#panel-${pid} > .status`);
    return s && s.dataset.state === want;
  }, [id, state], { timeout: WAIT }).catch(async () => {
    const got = await statusOf(page, id).getAttribute('data-state');
    const text = await statusOf(page, id).textContent();
    throw new Error(`panel ${id}: state ${got} (${text}), wanted ${state}`);
  });
}

/** A table's rows as objects keyed by its headings. */
export async function rowsOf(page, name) {
  return page.$$eval(`table[data-table="${name}"]`, (tables) => {
    if (tables.length === 0) return null;
    const heads = [...tables[0].querySelectorAll('thead th')].map((th) => th.textContent);
    return [...tables[0].querySelectorAll('tbody tr')].map((tr) => Object.fromEntries(
      [...tr.cells].map((td, i) => [heads[i], td.textContent])));
  });
}

/** A view query asked of the node directly (not through the page). */
export async function queryDirect(query, token = ADMIN) {
  const res = await fetch(`${BASE}/v1/query`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(query),
  });
  return { status: res.status, body: await res.json() };
}

// ---- driving the page ----

export async function signIn(page, token) {
  await page.fill('#token', token);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#panels', { state: 'visible', timeout: WAIT });
  assert.ok(!page.url().includes(token), 'the token is not in the URL');
  assert.equal(await page.inputValue('#token'), '', 'the token is cleared from the form');
  const stored = await page.evaluate(() => [sessionStorage.getItem('fogmesh.token'), localStorage.length]);
  assert.deepEqual(stored, [token, 0], 'the token is in sessionStorage only');
}

/** Signs in with an app's `token`: each admin-only panel says it is not shown (403), the others
 * load. */
export async function signInAsApp(page, token) {
  allow(403);
  await signIn(page, token);
  for (const id of ['apps', 'grants', 'flows', 'audit', 'health']) {
    await waitPanel(page, id, 'forbidden');
    assert.match(await statusOf(page, id).textContent(), /^Not shown to this token \(403\): ./);
  }
  for (const id of ['node', 'peers', 'members', 'datasets']) await waitPanel(page, id, 'ok');
}

export async function runQuery(page, query) {
  await page.fill('#query-text', JSON.stringify(query));
  await page.click('#query-form button[type=submit]');
  await page.waitForFunction(() => {
    const s = document.querySelector('#panel-query > .status');
    return s.dataset.state !== 'loading';
  }, null, { timeout: WAIT });
  return statusOf(page, 'query').textContent();
}

export async function signOut(page) {
  await page.click('#signout');
  await page.waitForSelector('#signin', { state: 'visible' });
  const left = await page.evaluate(() => [sessionStorage.getItem('fogmesh.token'), sessionStorage.length]);
  assert.deepEqual(left, [null, 0], 'signing out forgets the token');
  assert.equal(await page.locator('#panels table').count(), 0, 'no figure stays on the page');
  assert.equal(await page.locator('#panels svg, #panel-live li, #live-dataset option').count(), 0,
    'no chart, change or dataset name stays');
  assert.equal(await page.isDisabled('#live-stop'), true, 'no stream followed');
}

// ---- running a script ----

/**
 * Launches the Chromium of FOGMESH_CHROMIUM, opens a page that reports its errors and CSP
 * violations, runs `steps(page)`, then checks that none was reported. Exits non-zero, saying
 * what failed, on any broken expectation.
 */
export async function drive(steps) {
  try {
    const browser = await chromium.launch({
      executablePath: env('FOGMESH_CHROMIUM'),
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    try {
      const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
      await context.exposeBinding('__reportCsp', (_source, v) => violations.push(v));
      await context.addInitScript(reportViolations);
      const page = await context.newPage();
      watch(page);
      await steps(page);
      assert.deepEqual(takeViolations(), [], 'no CSP violation');
      assert.deepEqual(problems, [], 'no console or page error');
      step('all good');
    } finally {
      await browser.close();
    }
  } catch (e) {
    console.error(e.stack || String(e));
    if (problems.length) console.error(`page problems:\n${problems.join('\n')}`);
    process.exit(1);
  }
}
