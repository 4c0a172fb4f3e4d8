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
const upLog = process.env.WRENN_UP_LOG || ''; // wrenn up's log: the log mailer's links
const githubName = process.env.GITHUB_NAME || '';
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

// Every PTY WebSocket goes through playwright, so a step can drop it (the
// terminal must then re-attach to the same shell).
let dropPTY = null;
await page.routeWebSocket(/\/pty\b/, (ws) => {
  const server = ws.connectToServer();
  dropPTY = () => {
    server.close({ code: 4001, reason: 'dropped by the test' });
    ws.close({ code: 4001, reason: 'dropped by the test' });
  };
});

/** The last link of the log mailer for an address and page, from wrenn up's log. */
async function mailedLink(email, pagePath) {
  for (let i = 0; i < 50; i++) {
    const lines = readFileSync(upLog, 'utf8').split('\n').filter((l) => l.includes(email) && l.includes(pagePath));
    const m = lines.length && /"?link"?[=:]"?([^"\s]+)/.exec(lines[lines.length - 1]);
    if (m) return m[1];
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no ${pagePath} link mailed to ${email} in ${upLog}`);
}
const json = async (r) => {
  if (!r.ok) throw new Error(`${r.url}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.json();
};
const adminH = { 'X-API-Key': key, 'Content-Type': 'application/json' };

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
const mainNav = (name) => page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });

await step('sign-in page', async () => {
  const res = await page.goto(url + '/');
  const csp = res.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'")) throw new Error(`no strict CSP on the app: ${csp}`);
  await page.getByRole('heading', { name: 'Sign in to Wrenn' }).waitFor();
  await page.getByRole('link', { name: 'Sign up with GitHub' }).waitFor();
  await page.getByRole('tab', { name: 'Sign up' }).waitFor();
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

const termRow = (text) => page.waitForFunction((t) => [...document.querySelectorAll('.xterm-rows > div')].some((r) => r.textContent.trim() === t), text);
await step('terminal: a dropped WebSocket re-attaches to the same shell', async () => {
  await page.keyboard.type('export WRENN_MARK=same-$((6*7))-shell; echo marked-$((1+1))\n');
  await termRow('marked-2');
  if (!dropPTY) throw new Error('the PTY WebSocket was not routed');
  dropPTY();
  await page.getByTestId('term-reattached').waitFor();
  await page.getByTestId('term-state').filter({ hasText: 'open' }).waitFor();
  await page.getByTestId('terminal').click();
  await page.keyboard.type('echo $WRENN_MARK\n');
  await termRow('same-42-shell');
  // Leaving the tab and coming back re-attaches too.
  await page.getByRole('tab', { name: 'Files' }).click();
  await page.getByRole('tab', { name: 'Terminal' }).click();
  await page.getByTestId('term-reattached').waitFor();
  await page.getByTestId('terminal').click();
  await page.keyboard.type('echo again-$WRENN_MARK\n');
  await termRow('again-same-42-shell');
});

await step('ports: a listening port with a working proxy link', async () => {
  await page.keyboard.type('echo proxied-ok > /tmp/hi.txt; busybox httpd -p 8080 -h /tmp\n');
  await page.getByRole('tab', { name: 'Ports' }).click();
  const row = page.locator('tr[data-port="8080"]');
  await row.waitFor({ timeout: 20000 });
  const href = await row.getByRole('link').getAttribute('href');
  const u = new URL(href);
  u.pathname += 'hi.txt';
  const r = await fetch(u);
  const body = (await r.text()).trim();
  if (r.status !== 200 || body !== 'proxied-ok') throw new Error(`proxy link ${u.origin}${u.pathname}: ${r.status} ${body.slice(0, 200)}`);
  await check('capsule-ports');
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
  await mainNav('Capsules').click();
  await page.locator(`tr[data-id="${capsuleID}"]`).waitFor();
  await check('capsules');
});

await step('templates, API keys, audit log pages', async () => {
  await mainNav('Templates').click();
  await page.getByRole('cell', { name: 'minimal', exact: true }).waitFor();
  await check('templates');
  await mainNav('API keys').click();
  await page.getByLabel('Name').fill('from-the-dashboard');
  await page.getByRole('button', { name: 'Create key' }).click();
  const k = await page.getByTestId('new-key').textContent();
  if (!/^wrn_/.test(k)) throw new Error(`created key not shown: ${k}`);
  await check('keys');
  await mainNav('Audit log').click();
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
  await mainNav('Capsules').click();
  await mainNav('Audit log').click();
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
  await mainNav('Team').click();
  await page.getByRole('heading', { name: /^Team/ }).waitFor();
  await page.getByRole('cell', { name: 'owner' }).first().waitFor();
  await check('team');
  await mainNav('Usage').click();
  await page.locator('[data-testid=chart] canvas, .empty').first().waitFor();
  await check('usage');
});

await step('admin: grant and revoke admin on a second user; self-demotion warning; last-admin refusal', async () => {
  const email = `second-${Date.now()}@example.com`;
  const r = await fetch(url + '/v1/auth/signup', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password: 'a-long-enough-password-1', name: 'Second User' }) });
  if (!r.ok) throw new Error(`signup of a second user: ${r.status} ${await r.text()}`);
  await mainNav('Admin').click();
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

await step('audit log: filters', async () => {
  await mainNav('Audit log').click();
  await page.locator('select[name=resource_type]').selectOption('api_key');
  await page.locator('input[name=action]').fill('delete');
  await page.getByRole('button', { name: 'Filter' }).click();
  const rows = page.locator('table.list tbody tr');
  await rows.first().waitFor();
  const texts = await rows.evaluateAll((trs) => trs.map((tr) => tr.children[2].textContent + ' ' + tr.children[3].textContent));
  if (texts.some((t) => !t.startsWith('delete api_key'))) throw new Error(`filtered rows that do not match: ${texts.slice(0, 3)}`);
  await check('audit-filtered');
});

await step('template build from a recipe with its log; delete the template', async () => {
  await mainNav('Builds').click();
  await page.getByLabel('Template name').fill('dash-built');
  await page.getByLabel('Recipe (Wrennfile)').fill('FROM minimal\nENV WHO=dashboard\nRUN echo built-by-the-$WHO > /built\n');
  await page.getByRole('button', { name: 'Build', exact: true }).click();
  await page.waitForURL(/\/templates\/builds\/bld-/);
  await page.getByTestId('build-status').filter({ hasText: /succeeded|failed|cancelled/ }).waitFor({ timeout: 180000 });
  const st = await page.getByTestId('build-status').textContent();
  if (st !== 'succeeded') throw new Error(`build ${st}: ${await page.locator('dl.summary').textContent()}`);
  if (!(await page.getByTestId('build-log').textContent()).trim()) throw new Error('the build log is empty');
  await check('build');
  await mainNav('Templates').click();
  await page.getByRole('button', { name: 'Delete template dash-built' }).click();
  await page.getByRole('dialog', { name: 'Delete template' }).getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('cell', { name: 'dash-built', exact: true }).waitFor({ state: 'detached' });
  await mainNav('Builds').click();
  await page.locator('tr[data-build]').first().waitFor();
  await check('builds');
});

let second = null;
await step('team: invite, accept (API), change the role, remove', async () => {
  const email = `member-${Date.now()}@example.com`;
  const password = 'a-long-enough-password-2';
  second = await json(await fetch(url + '/v1/auth/signup', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password, name: 'Team Mate' }) }));
  await mainNav('Team').click();
  await page.getByLabel('Email').fill(email);
  await page.getByRole('button', { name: 'Invite', exact: true }).click();
  const link = await page.getByTestId('invite-link').textContent();
  const tok = new URLSearchParams(new URL(link).hash.slice(1)).get('token');
  await page.locator(`tr[data-invite="${email}"]`).waitFor();
  await check('team-invite');
  await json(await fetch(url + '/v1/invites/accept', { method: 'POST', headers: { Authorization: `Bearer ${second.token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ token: tok }) }));
  await mainNav('Capsules').click();
  await mainNav('Team').click();
  const row = page.locator(`tr[data-member="${email}"]`);
  await row.waitFor();
  await row.getByLabel(`Role of ${email}`).selectOption('admin');
  await page.waitForFunction((e) => document.querySelector(`tr[data-member="${e}"] select`)?.value === 'admin', email);
  const m = await json(await fetch(url + `/v1/teams/${second.team.id}/members`, { headers: { Authorization: `Bearer ${second.token}` } }));
  if (!m.members.length) throw new Error('members of the second user\'s own team are empty');
  await check('team');
  await row.getByRole('button', { name: 'Remove' }).click();
  await page.getByRole('dialog', { name: 'Remove member' }).getByRole('button', { name: 'Remove' }).click();
  await row.waitFor({ state: 'detached' });
});

await step('admin: BYOC toggle, host token, templates, builds, capsules, admin audit log', async () => {
  await mainNav('Admin').click();
  await page.getByRole('link', { name: 'Teams' }).click();
  const t = page.locator('tr', { has: page.getByText(second.team.id, { exact: true }) });
  await t.getByRole('button', { name: 'Enable BYOC' }).click();
  await page.getByRole('dialog', { name: 'Turn BYOC on' }).getByRole('button', { name: 'Confirm' }).click();
  await t.getByRole('button', { name: 'Disable BYOC' }).waitFor();
  await check('admin-teams');
  await page.getByRole('link', { name: 'Hosts' }).click();
  await page.getByRole('button', { name: 'New registration token' }).click();
  await page.getByTestId('host-token').waitFor();
  await check('admin-hosts');
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Templates' }).click();
  await page.locator('tr[data-template="minimal"]').waitFor();
  await check('admin-templates');
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Builds' }).click();
  await page.getByRole('cell', { name: 'dash-built' }).first().waitFor();
  await check('admin-builds');
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Capsules' }).click();
  await page.locator(`tr[data-admin-capsule="${capsuleID}"]`).waitFor();
  await check('admin-capsules');
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('cell', { name: 'set_byoc' }).first().waitFor();
  await check('admin-audit');
});

await step('delete the capsule (confirmed)', async () => {
  await mainNav('Capsules').click();
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

await step('sign up with email; the verification link; password reset', async () => {
  await page.getByRole('tab', { name: 'Sign up' }).click();
  const email = `signup-${Date.now()}@example.com`;
  await page.getByLabel('Name').fill('Sign Up');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel(/^Password/).fill('first-password-123');
  await check('signup');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('heading', { name: 'Capsules' }).waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.goto(await mailedLink(email, '/verify-email'));
  await page.getByRole('status').filter({ hasText: 'Your email address is verified.' }).waitFor();
  if (page.url().includes('token=')) throw new Error('the token stayed in the address bar');
  await check('verify-email');
  await page.goto(url + '/');
  await page.getByRole('tab', { name: 'Email and password' }).click();
  await page.getByRole('button', { name: 'Forgot your password?' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByRole('button', { name: 'Send reset link' }).click();
  await page.getByRole('status').filter({ hasText: /reset link is on its way/ }).waitFor();
  await check('forgot-password');
  await page.goto(await mailedLink(email, '/reset-password'));
  await page.getByLabel(/^New password/).fill('second-password-456');
  await page.getByLabel('Repeat it').fill('second-password-456');
  await check('reset-password');
  await page.getByRole('button', { name: 'Set password' }).click();
  await page.getByRole('status').filter({ hasText: 'Your password is changed.' }).waitFor();
  await page.getByRole('link', { name: 'Sign in', exact: true }).click();
  await page.getByRole('tab', { name: 'Email and password' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill('second-password-456');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Capsules' }).waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();
});

await step('GitHub sign-up (fake GitHub) with the name dialog; then GitHub sign-in without it', async () => {
  await page.getByRole('link', { name: 'Sign up with GitHub' }).click();
  const dlg = page.getByRole('dialog', { name: 'Welcome to Wrenn' });
  await dlg.waitFor();
  const name = dlg.getByLabel('Display name');
  if ((await name.inputValue()) !== githubName) throw new Error(`the dialog shows ${await name.inputValue()}, not GitHub's name ${githubName}`);
  await check('github-name-dialog');
  await name.fill('Octo D.');
  await dlg.getByRole('button', { name: 'Save name' }).click();
  await dlg.waitFor({ state: 'hidden' });
  await page.locator('.who').filter({ hasText: 'Octo D.' }).waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.getByRole('heading', { name: 'Capsules' }).waitFor();
  await page.locator('.who').filter({ hasText: 'Octo D.' }).waitFor();
  if (await page.getByRole('dialog', { name: 'Welcome to Wrenn' }).isVisible()) throw new Error('the name dialog showed on a sign-in');
  await page.getByRole('button', { name: 'Sign out' }).click();
});

await step('no CSP violations or page errors', async () => {
  if (problems.length) throw new Error(problems.join('\n'));
});

console.log(`axe (all impacts): ${JSON.stringify(axeReport)}`);
await browser.close();
console.log(`PASS; screenshots in ${shots}`);
