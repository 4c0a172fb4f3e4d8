// Browser test of the dashboard against a running Wrenn (started by
// test/dashboard): Debian's chromium driven by playwright-core.
//   WRENN_URL=http://127.0.0.1:9725 WRENN_KEY=wrn_… SHOTS=/tmp/shots node e2e/dashboard.mjs
// Exits non-zero with a message on the first failed step.
import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const require = createRequire(import.meta.url);
const url = process.env.WRENN_URL;
const key = process.env.WRENN_KEY;
const shots = process.env.SHOTS || join(tmpdir(), 'wrenn-dashboard-shots');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!url || !key) {
  console.error('WRENN_URL and WRENN_KEY are required');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: browserPath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  // playwright gives every launch a fresh temporary profile (--user-data-dir).
});
const ctx = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 800 } });
const page = await ctx.newPage();
const problems = [];
page.on('console', (m) => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.setDefaultTimeout(30000);

const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const axeReport = {};
async function check(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  // axe runs through the DevTools protocol, which the page's CSP does not govern.
  await page.evaluate(axeSource);
  const res = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  axeReport[name] = res.violations.map((v) => `${v.impact} ${v.id}`);
  if (bad.length) throw new Error(`axe on ${name}: ${bad.map((v) => `${v.impact} ${v.id}: ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`).join('; ')}`);
}
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    await page.screenshot({ path: join(shots, `FAILED-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
    console.error(`FAIL ${name}: ${e.stack || e}`);
    await browser.close();
    process.exit(1);
  }
  console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}
const status = () => page.getByTestId('status');

await step('sign-in page', async () => {
  const res = await page.goto(url + '/');
  const csp = res.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'")) throw new Error(`no strict CSP on the app: ${csp}`);
  await page.getByRole('heading', { name: 'Sign in to Wrenn' }).waitFor();
  await check('signin');
});

await step('a wrong key is refused with a message', async () => {
  await page.getByLabel('API key').fill('wrn_notakey');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').waitFor();
});

await step('sign in with the admin key', async () => {
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Capsules' }).waitFor();
  await page.getByText(/No capsules|cl-/).first().waitFor();
  await check('capsules-empty');
});

let capsuleID = '';
await step('create a capsule from the dialog (template minimal)', async () => {
  await page.getByRole('button', { name: 'New capsule' }).click();
  const dlg = page.getByRole('dialog', { name: 'New capsule' });
  await dlg.getByLabel('Template').selectOption('minimal');
  await page.screenshot({ path: join(shots, 'create-dialog.png') });
  await dlg.getByRole('button', { name: 'Create' }).click();
  await page.waitForURL(/\/capsules\/cl-/);
  capsuleID = page.url().split('/').pop();
  await status().filter({ hasText: 'running' }).waitFor({ timeout: 90000 });
});

await step('terminal: echo hello', async () => {
  await page.getByTestId('term-state').filter({ hasText: 'open' }).waitFor();
  await page.getByTestId('terminal').click();
  await page.keyboard.type('echo hello\n');
  await page.waitForFunction(() => [...document.querySelectorAll('.xterm-rows > div')].some((r) => r.textContent.trim() === 'hello'));
  await check('capsule-terminal');
});

const payload = randomBytes(300 * 1024);
await step('files: upload by drag-and-drop, download byte-identical', async () => {
  await page.getByRole('tab', { name: 'Files' }).click();
  await page.getByLabel('Folder', { exact: true }).fill('/tmp');
  await page.getByRole('button', { name: 'Go' }).click();
  await page.getByText(/is empty|Name/).first().waitFor();
  const dt = await page.evaluateHandle((bytes) => {
    const d = new DataTransfer();
    d.items.add(new File([new Uint8Array(bytes)], 'dropped.bin', { type: 'application/octet-stream' }));
    return d;
  }, [...payload]);
  await page.dispatchEvent('[data-testid=dropzone]', 'dragover', { dataTransfer: dt });
  await page.dispatchEvent('[data-testid=dropzone]', 'drop', { dataTransfer: dt });
  await page.locator('tr[data-name="dropped.bin"]').waitFor();
  const [dl] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download dropped.bin' }).click()]);
  const got = readFileSync(await dl.path());
  if (!got.equals(payload)) throw new Error(`downloaded ${got.length} bytes differ from the ${payload.length} uploaded`);
  await page.getByRole('button', { name: 'New folder' }).waitFor();
  await page.getByLabel('New folder name').fill('made-by-dashboard');
  await page.getByRole('button', { name: 'New folder' }).click();
  await page.locator('tr[data-name="made-by-dashboard"]').waitFor();
  await check('capsule-files');
});

await step('metrics: the chart draws', async () => {
  await page.getByRole('tab', { name: 'Metrics' }).click();
  await page.locator('[data-testid=chart] canvas').first().waitFor({ timeout: 90000 });
  const drawn = await page.evaluate(() => {
    const c = document.querySelector('[data-testid=chart] canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  if (drawn < 100) throw new Error(`the chart canvas is blank (${drawn} painted pixels)`);
  await check('capsule-metrics');
});

await step('processes: start, follow output, kill', async () => {
  await page.getByRole('tab', { name: 'Processes' }).click();
  await page.getByLabel('Command').fill('i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done');
  await page.getByRole('button', { name: 'Start in background' }).click();
  await page.getByTestId('proc-output').filter({ hasText: 'tick 3' }).waitFor();
  const pid = (await page.getByText(/^Output of \d+$/).textContent()).split(' ').pop();
  await page.locator(`tr[data-pid="${pid}"]`).waitFor();
  await check('capsule-processes');
  await page.getByRole('button', { name: `Kill ${pid}` }).click();
  await page.getByRole('dialog', { name: 'Kill process' }).getByRole('button', { name: 'Kill' }).click();
  await page.locator(`tr[data-pid="${pid}"]`).waitFor({ state: 'detached' });
  await page.getByTestId('proc-state').filter({ hasText: /exited|disconnected/ }).waitFor();
});

await step('pause and resume', async () => {
  await page.getByRole('button', { name: 'Pause', exact: true }).click();
  await status().filter({ hasText: 'paused' }).waitFor({ timeout: 90000 });
  await check('capsule-paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await status().filter({ hasText: 'running' }).waitFor({ timeout: 90000 });
});

await step('capsule list shows the capsule', async () => {
  await page.getByRole('link', { name: 'Capsules', exact: true }).click();
  await page.locator(`tr[data-id="${capsuleID}"]`).waitFor();
  await check('capsules');
});

await step('templates, API keys, audit log pages', async () => {
  await page.getByRole('link', { name: 'Templates' }).click();
  await page.getByRole('cell', { name: 'minimal', exact: true }).waitFor();
  await check('templates');
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.getByLabel('Name').fill('from-the-dashboard');
  await page.getByRole('button', { name: 'Create key' }).click();
  const k = await page.getByTestId('new-key').textContent();
  if (!/^wrn_/.test(k)) throw new Error(`created key not shown: ${k}`);
  await check('keys');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('cell', { name: /capsule/ }).first().waitFor();
  await check('audit');
});

await step('audit log: infinite scroll past two pages', async () => {
  // 60 keys created and revoked through the API: 120 more entries (pages are 50).
  const h = { 'X-API-Key': key, 'Content-Type': 'application/json' };
  for (let i = 0; i < 60; i++) {
    const r = await fetch(url + '/v1/api-keys', { method: 'POST', headers: h, body: JSON.stringify({ name: `scroll-${i}` }) });
    if (!r.ok) throw new Error(`create key: ${r.status} ${await r.text()}`);
    const k = await r.json();
    const d = await fetch(url + `/v1/api-keys/${k.id}`, { method: 'DELETE', headers: h });
    if (!d.ok) throw new Error(`delete key: ${d.status}`);
  }
  await page.getByRole('link', { name: 'Capsules', exact: true }).click();
  await page.getByRole('link', { name: 'Audit log' }).click();
  const rows = page.locator('table.list tbody tr');
  await rows.first().waitFor();
  const first = await rows.count();
  if (first > 50) throw new Error(`the first page has ${first} rows (limit 50)`);
  for (let i = 0; i < 20 && (await rows.count()) <= 100; i++) {
    await page.locator('.sentinel').scrollIntoViewIfNeeded();
    await page.mouse.wheel(0, 5000);
    await page.waitForTimeout(300);
  }
  const n = await rows.count();
  if (n <= 100) throw new Error(`only ${n} audit rows after scrolling (want > 100: three pages)`);
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.textContent));
  if (new Set(ids).size < n * 0.5) throw new Error('pages repeat the same entries');
  console.log(`     audit rows after scrolling: ${n} (first page ${first})`);
});

await step('team and usage pages', async () => {
  await page.getByRole('link', { name: 'Team' }).click();
  await page.getByRole('heading', { name: /^Team/ }).waitFor();
  await page.getByRole('cell', { name: 'owner' }).first().waitFor();
  await check('team');
  await page.getByRole('link', { name: 'Usage' }).click();
  await page.locator('[data-testid=chart] canvas, .empty').first().waitFor();
  await check('usage');
});

await step('admin: grant and revoke admin on a second user; self-demotion warning; last-admin refusal', async () => {
  const email = `second-${Date.now()}@example.com`;
  const r = await fetch(url + '/v1/auth/signup', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password: 'a-long-enough-password-1', name: 'Second User' }) });
  if (!r.ok) throw new Error(`signup of a second user: ${r.status} ${await r.text()}`);
  await page.getByRole('link', { name: 'Admin' }).click();
  const row = page.locator(`tr[data-email="${email}"]`);
  await row.waitFor();
  await row.getByRole('button', { name: 'Grant admin' }).click();
  await page.getByRole('dialog', { name: 'Grant platform admin' }).getByRole('button', { name: 'Confirm' }).click();
  await row.getByRole('cell', { name: 'yes', exact: true }).waitFor();
  await row.getByRole('button', { name: 'Revoke admin' }).click();
  await page.getByRole('dialog', { name: 'Revoke platform admin' }).getByRole('button', { name: 'Confirm' }).click();
  await row.getByRole('button', { name: 'Grant admin' }).waitFor();
  const self = page.locator('tr', { hasText: '(you)' });
  await self.getByRole('button', { name: 'Revoke admin' }).click();
  const dlg = page.getByRole('dialog', { name: 'Revoke platform admin' });
  await dlg.getByText(/Warning: you are removing your own platform admin rights/).waitFor();
  await page.screenshot({ path: join(shots, 'admin-self-demotion.png') });
  await dlg.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('alert').filter({ hasText: /Refused: .*at least one active platform admin/ }).waitFor();
  await self.getByRole('cell', { name: 'yes', exact: true }).waitFor();
  await check('admin-users');
  await page.getByRole('link', { name: 'Hosts' }).click();
  await page.getByRole('cell', { name: 'online' }).first().waitFor();
  await check('admin-hosts');
  await page.getByRole('link', { name: 'Teams' }).click();
  await page.getByRole('columnheader', { name: 'BYOC' }).waitFor();
  await check('admin-teams');
});

await step('delete the capsule (confirmed)', async () => {
  await page.getByRole('link', { name: 'Capsules', exact: true }).click();
  await page.getByRole('checkbox', { name: `Select ${capsuleID}` }).check();
  await page.getByRole('button', { name: /Delete selected/ }).click();
  await page.getByRole('dialog', { name: 'Delete capsules' }).getByRole('button', { name: 'Delete' }).click();
  await page.locator(`tr[data-id="${capsuleID}"]`).waitFor({ state: 'detached', timeout: 60000 });
});

await step('sign out clears the session; a reload asks to sign in again', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Wrenn' }).waitFor();
  await page.goto(url + '/capsules');
  await page.getByRole('heading', { name: 'Sign in to Wrenn' }).waitFor();
});

await step('a revoked key signs the session out with a notice', async () => {
  const h = { 'X-API-Key': key, 'Content-Type': 'application/json' };
  const k = await (await fetch(url + '/v1/api-keys', { method: 'POST', headers: h, body: JSON.stringify({ name: 'short-lived' }) })).json();
  await page.getByLabel('API key').fill(k.key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Capsules' }).waitFor();
  const d = await fetch(url + `/v1/api-keys/${k.id}`, { method: 'DELETE', headers: h });
  if (!d.ok) throw new Error(`revoke: ${d.status}`);
  await page.getByRole('heading', { name: 'Sign in to Wrenn' }).waitFor({ timeout: 15000 });
  await page.getByRole('status').filter({ hasText: /Signed out/ }).waitFor();
  await check('signin-expired');
});

await step('no CSP violations or page errors', async () => {
  if (problems.length) throw new Error(problems.join('\n'));
});

console.log(`axe (all impacts): ${JSON.stringify(axeReport)}`);
await browser.close();
console.log(`PASS; screenshots in ${shots}`);
