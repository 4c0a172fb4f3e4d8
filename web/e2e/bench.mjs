// Browser benchmarks of the dashboard (issue 17, Performance), run by
// test/dashboard's BenchmarkDashboard (`make bench`) against a real wrenn up:
//   1. capsule list first render with 1,000 capsules (baseline: 10);
//   2. terminal keystroke → echo, p50/p95, in a real capsule (baseline: the
//      same keystroke over a bare PTY WebSocket, no xterm.js);
//   3. frames per second while scrolling a 100-capsule list that changes on
//      every poll (baseline: the same scroll with an unchanging list).
// The lists of 1. and 3. are served by playwright's request routing in the
// API's exact shape (CapsuleList), so the figures are the browser's work,
// not 1,000 real capsules' creation. Prints one "BENCH name value unit" line
// per figure.
import { chromium } from 'playwright-core';

const url = process.env.WRENN_URL;
const key = process.env.WRENN_KEY;
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!url || !key) {
  console.error('WRENN_URL and WRENN_KEY are required');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: browserPath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
// Timestamps of the PTY socket's last keystroke sent and first output
// received, to split the keystroke → echo time into its parts.
await page.addInitScript(() => {
  window.__ws = {};
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (d) {
    if (this.url.includes('/pty') && typeof d !== 'string') window.__ws.sent = performance.now();
    return send.call(this, d);
  };
  const om = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'onmessage');
  Object.defineProperty(WebSocket.prototype, 'onmessage', {
    get() {
      return om.get.call(this);
    },
    set(fn) {
      const ws = this;
      om.set.call(this, fn && ((ev) => {
        if (ws.url.includes('/pty') && typeof ev.data !== 'string' && !window.__ws.recv) window.__ws.recv = performance.now();
        fn(ev);
      }));
    },
  });
});
page.setDefaultTimeout(60000);
const h = { 'X-API-Key': key, 'Content-Type': 'application/json' };
const report = (name, value, unit) => console.log(`BENCH ${name} ${typeof value === 'number' ? value.toFixed(1) : value} ${unit}`);
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const mainNav = (name) => page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });

// A real capsule: the template of the synthetic rows and the terminal's shell.
const real = await (await fetch(url + '/v1/capsules', { method: 'POST', headers: h, body: JSON.stringify({ template: 'minimal', timeout_sec: 900 }) })).json();
if (!real.id) throw new Error(`create: ${JSON.stringify(real)}`);
for (let i = 0; i < 120; i++) {
  const c = await (await fetch(url + `/v1/capsules/${real.id}`, { headers: h })).json();
  if (c.status === 'running') break;
  await new Promise((r) => setTimeout(r, 500));
}

function synthetic(n, gen) {
  const now = Date.now();
  return Array.from({ length: n }, (_, i) => ({
    ...real,
    id: `cl-bench${String(i).padStart(6, '0')}`,
    status: ['running', 'paused', 'running', 'hibernated'][(i + gen) % 4],
    created_at: new Date(now - i * 60000).toISOString(),
    updated_at: new Date(now - gen * 1000).toISOString(),
    expires_at: new Date(now + 3600000 + gen * 1000).toISOString(),
  }));
}
let listSize = 0;
let changing = false;
let gen = 0;
await page.route(/\/v1\/capsules\?/, (route) => {
  if (!listSize) return route.continue();
  if (changing) gen++;
  const etag = `"bench-${listSize}-${gen}"`;
  if (route.request().headers()['if-none-match'] === etag) return route.fulfill({ status: 304, headers: { ETag: etag } });
  route.fulfill({ status: 200, contentType: 'application/json', headers: { ETag: etag }, body: JSON.stringify({ capsules: synthetic(listSize, gen), next_cursor: '' }) });
});

await page.goto(url + '/');
await page.getByLabel('API key').fill(key);
await page.getByRole('button', { name: 'Sign in' }).click();
await page.getByRole('heading', { name: 'Capsules' }).waitFor();

// 1. First render of the list: from the click on "Capsules" to the last row in the DOM.
async function firstRender(n) {
  listSize = n;
  const times = [];
  for (let i = 0; i < 5; i++) {
    await mainNav('Templates').click();
    await page.getByRole('heading', { name: 'Templates' }).waitFor();
    const t = await page.evaluate(async (n) => {
      const t0 = performance.now();
      document.querySelector('nav[aria-label=Main] a[href="/capsules"]').click();
      for (;;) {
        await new Promise((r) => requestAnimationFrame(r));
        if (document.querySelectorAll('tr[data-id]').length >= n) {
          // the frame that shows them has been produced
          await new Promise((r) => requestAnimationFrame(r));
          return performance.now() - t0;
        }
      }
    }, n);
    times.push(t);
  }
  return pct(times, 50);
}
const render10 = await firstRender(10);
const render1000 = await firstRender(1000);
report('list_first_render_10', render10, 'ms');
report('list_first_render_1000', render1000, 'ms');

// 3. Scrolling at 100 rows, changing on every poll (every 3 s) vs unchanging.
async function scrollFPS(change) {
  listSize = 100;
  changing = change;
  await mainNav('Templates').click();
  await mainNav('Capsules').click();
  await page.locator('tr[data-id]').nth(99).waitFor();
  return page.evaluate(async () => {
    const frames = [];
    let last = performance.now();
    const end = last + 10000;
    let dir = 1;
    while (performance.now() < end) {
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      frames.push(now - last);
      last = now;
      window.scrollBy(0, 40 * dir);
      if (window.scrollY + window.innerHeight >= document.body.scrollHeight - 2) dir = -1;
      if (window.scrollY <= 0) dir = 1;
    }
    const total = frames.reduce((a, b) => a + b, 0);
    const sorted = [...frames].sort((a, b) => a - b);
    return { fps: (frames.length * 1000) / total, worst: sorted[sorted.length - 1], p99: sorted[Math.floor(sorted.length * 0.99)] };
  });
}
const still = await scrollFPS(false);
const live = await scrollFPS(true);
report('scroll_fps_100_static', still.fps, 'fps');
report('scroll_fps_100_live', live.fps, 'fps');
report('scroll_frame_p99_100_live', live.p99, 'ms');
report('scroll_frame_worst_100_live', live.worst, 'ms');
listSize = 0;
changing = false;

// 2. Keystroke → echo in the terminal of the real capsule: keydown in the
// page to the frame where the character is on screen.
await page.goto(url + '/'); // fresh app (the route above stays for lists only)
await page.getByLabel('API key').fill(key);
await page.getByRole('button', { name: 'Sign in' }).click();
await page.getByRole('heading', { name: 'Capsules' }).waitFor();
await page.evaluate((id) => {
  history.pushState(null, '', `/capsules/${id}`);
  dispatchEvent(new PopStateEvent('popstate'));
}, real.id);
await page.getByTestId('term-state').filter({ hasText: 'open' }).waitFor();
await page.getByTestId('terminal').click();
await page.keyboard.type('clear\n');
await page.waitForTimeout(500);
const termTimes = [];
const parts = [];
for (let i = 0; i < 60; i++) {
  await page.evaluate(() => {
    const rows = document.querySelector('.xterm-rows');
    const before = rows.textContent;
    window.__ws = {};
    window.__echo = new Promise((resolve) => {
      let t0 = 0;
      document.addEventListener('keydown', () => (t0 = performance.now()), { capture: true, once: true });
      const mo = new MutationObserver(() => {
        if (t0 && rows.textContent !== before) {
          mo.disconnect();
          const shown = performance.now();
          const w = window.__ws;
          // xterm.js's DOM renderer updates the rows in a requestAnimationFrame
          // callback, so the frame painted right after it shows the echo
          // (total); nextFrame waits for the following frame too (an upper bound).
          requestAnimationFrame(() => resolve({ total: shown - t0, nextFrame: performance.now() - t0, toSend: (w.sent ?? NaN) - t0, net: (w.recv ?? NaN) - (w.sent ?? NaN), toDOM: shown - (w.recv ?? NaN) }));
        }
      });
      mo.observe(rows, { subtree: true, childList: true, characterData: true });
    });
  });
  await page.keyboard.press(String.fromCharCode(97 + (i % 26)));
  const r = await page.evaluate(() => window.__echo);
  termTimes.push(r.total);
  parts.push(r);
  if (i % 20 === 19) await page.keyboard.press('Control+U');
  await page.waitForTimeout(30);
}
report('terminal_echo_p50', pct(termTimes, 50), 'ms');
report('terminal_echo_p95', pct(termTimes, 95), 'ms');
report('terminal_echo_next_frame_p50', pct(parts.map((p) => p.nextFrame), 50), 'ms');
report('terminal_echo_keydown_to_send_p50', pct(parts.map((p) => p.toSend), 50), 'ms');
report('terminal_echo_send_to_output_p50', pct(parts.map((p) => p.net), 50), 'ms');
report('terminal_echo_output_to_dom_p50', pct(parts.map((p) => p.toDOM), 50), 'ms');

// Baseline: the same keystroke over a bare PTY WebSocket from the page (no xterm.js).
const bare = await page.evaluate(
  async ({ id, key }) => {
    const u = new URL(`/v1/capsules/${id}/pty`, location.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.searchParams.set('token', key);
    const ws = new WebSocket(u);
    ws.binaryType = 'arraybuffer';
    await new Promise((r, j) => {
      ws.onmessage = (e) => typeof e.data === 'string' && r();
      ws.onerror = j;
    });
    await new Promise((r) => setTimeout(r, 500));
    const out = [];
    for (let i = 0; i < 60; i++) {
      const ch = 97 + (i % 26);
      const t = await new Promise((resolve) => {
        const t0 = performance.now();
        ws.onmessage = (e) => {
          if (typeof e.data !== 'string' && new Uint8Array(e.data).includes(ch)) resolve(performance.now() - t0);
        };
        ws.send(new Uint8Array([ch]));
      });
      out.push(t);
      if (i % 20 === 19) ws.send(new Uint8Array([21])); // ^U
      await new Promise((r) => setTimeout(r, 30));
    }
    ws.close();
    return out;
  },
  { id: real.id, key },
);
report('terminal_echo_bare_ws_p50', pct(bare, 50), 'ms');
await fetch(url + `/v1/capsules/${real.id}`, { method: 'DELETE', headers: h });
await browser.close();
