// The SDK against a real Wrenn named by WRENN_URL and WRENN_API_KEY
// (test/sdks starts one). Without them these tests fail, never skip.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, APIError, CommandExitError, TimeoutError, verifyWebhook, WebhookVerificationError } from '../dist/index.js';

const TEMPLATE = process.env.WRENN_TEMPLATE || 'minimal';
let c;

before(() => {
  assert.ok(process.env.WRENN_URL && process.env.WRENN_API_KEY, 'WRENN_URL and WRENN_API_KEY must name a running Wrenn (test/sdks starts one)');
  c = new Client();
});

async function withCapsule(fn, params = {}) {
  const cap = await c.capsules.create({ template: TEMPLATE, timeout_sec: 600, ...params });
  try {
    await fn(cap);
  } finally {
    await cap.delete();
  }
}

const text = (chunks) => Buffer.concat(chunks).toString();

test('quick start', async () => {
  const cap = await c.capsules.create({ template: TEMPLATE });
  try {
    assert.match(cap.id, /^cl-/);
    assert.equal(cap.status, 'running');
    const r = await cap.exec('echo', ['hi']);
    assert.deepEqual([r.stdout, r.stderr, r.exitCode], ['hi\n', '', 0]);
  } finally {
    await cap.delete();
  }
  await assert.rejects(c.capsules.get(cap.id), (e) => e instanceof APIError && e.code === 'not_found' && e.status === 404 && !!e.requestId);
});

test('create fields, list, get, timeout, public', () => withCapsule(async (cap) => {
  assert.deepEqual([cap.info.vcpus, cap.info.memory_mb, cap.info.timeout_sec], [1, 256, 120]);
  assert.equal((await cap.exec('sh', ['-c', 'echo $GREETING'])).stdout, 'hello\n');
  assert.ok((await c.capsules.list({ status: 'running' })).some((x) => x.id === cap.id));
  assert.equal((await c.capsules.listPage({ limit: 1 })).capsules.length, 1);
  assert.equal((await cap.setTimeout(300)).timeout_sec, 300);
  assert.equal((await cap.setPublic(true)).public, true);
}, { vcpus: 1, memory_mb: 256, timeout_sec: 120, env: { GREETING: 'hello' } }));

test('network policy on create and live', () => withCapsule(async (cap) => {
  const pol = { allow_out: ['203.0.113.0/24', '*.example.com'], deny_out: ['0.0.0.0/0'], egress_mbps: 50 };
  assert.deepEqual(cap.info.network, pol);
  assert.deepEqual((await c.capsules.get(cap.id)).info.network, pol);
  await assert.rejects(cap.setNetwork({ deny_out: ['203.0.113.0/99'] }),
    (e) => e instanceof APIError && e.code === 'invalid_argument' && e.message.includes('network.deny_out[0]'));
  assert.deepEqual((await c.capsules.get(cap.id)).info.network, pol);
  assert.deepEqual((await cap.setNetwork({ deny_out: ['198.51.100.7'] })).network, { deny_out: ['198.51.100.7'] });
  const off = await cap.setNetwork({ allow_internet: false });
  assert.equal(off.allow_internet, false);
  assert.equal(off.network, undefined);
}, { network: { allow_out: ['203.0.113.0/24', '*.example.com'], deny_out: ['0.0.0.0/0'], egress_mbps: 50 } }));

test('exec options, exit codes, errors, timeout', () => withCapsule(async (cap) => {
  const r = await cap.exec('sh', ['-c', 'pwd; echo $A; cat'], { cwd: '/tmp', env: { A: 'b' }, stdin: 'in\n' });
  assert.deepEqual(r.stdout.split('\n'), ['/tmp', 'b', 'in', '']);
  assert.equal((await cap.exec('sh', ['-c', 'exit 3'])).exitCode, 3);
  await assert.rejects(cap.exec('sh', ['-c', 'exit 4'], { check: true }), (e) => e instanceof CommandExitError && e.exitCode === 4);
  await assert.rejects(cap.exec(''), (e) => e instanceof APIError && e.code === 'invalid_argument' && !!e.message && !!e.requestId);
  const slow = await new Client({ timeoutMs: 1000 }).capsules.get(cap.id);
  await assert.rejects(slow.exec('sleep', ['5']), TimeoutError);
}));

test('exec stream', () => withCapsule(async (cap) => {
  const out = [], err = [];
  const st = await cap.execStream('sh', ['-c', "echo 1; echo 2; echo e >&2; printf '\\377'; exit 5"], {
    onStdout: (d) => out.push(d), onStderr: (d) => err.push(d),
  });
  assert.equal(st.exitCode, 5);
  assert.ok(st.pid > 0);
  assert.deepEqual(Buffer.concat(out), Buffer.from([...Buffer.from('1\n2\n'), 0xff]));
  assert.equal(text(err), 'e\n');
}));

test('processes', () => withCapsule(async (cap) => {
  const p = await cap.processes.start('sh', ['-c', 'cat; echo end'], { tag: 'reader', openStdin: true });
  assert.ok(p.pid > 0);
  assert.ok((await cap.processes.list()).some((q) => q.pid === p.pid));
  const out = [];
  const st = await cap.processes.attach(p.pid, { onStdout: (d) => out.push(d), stdin: 'abc\n', closeStdin: true });
  assert.equal(st.exitCode, 0);
  assert.equal(text(out), 'abc\nend\n');
  const p2 = await cap.processes.start('sleep', ['300']);
  await cap.processes.kill(p2.pid, 'SIGTERM');
}));

test('files', (t) => withCapsule(async (cap) => {
  assert.equal((await cap.files.write('/tmp/d/a.txt', 'hello')).path, '/tmp/d/a.txt');
  assert.equal(await cap.files.readText('/tmp/d/a.txt'), 'hello');
  const data = randomBytes(5 << 20);
  async function* chunks() { for (let i = 0; i < data.length; i += 1 << 20) yield data.subarray(i, i + (1 << 20)); }
  await cap.files.write('/tmp/d/big.bin', chunks());
  assert.ok(Buffer.from(await cap.files.read('/tmp/d/big.bin')).equals(data));
  const dir = mkdtempSync(join(tmpdir(), 'wrenn-ts-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'up.bin'), data);
  await cap.files.upload(join(dir, 'up.bin'), '/tmp/d/up.bin');
  const sum = (await cap.exec('sha256sum', ['/tmp/d/up.bin'])).stdout.split(' ')[0];
  assert.equal(sum, createHash('sha256').update(data).digest('hex'));
  assert.equal(await cap.files.download('/tmp/d/up.bin', join(dir, 'down.bin')), data.length);
  assert.ok(readFileSync(join(dir, 'down.bin')).equals(data));
  assert.equal((await cap.files.mkdir('/tmp/d/sub')).created, true);
  assert.deepEqual((await cap.files.list('/tmp/d')).map((e) => e.name).sort(), ['a.txt', 'big.bin', 'sub', 'up.bin']);
  await cap.files.remove('/tmp/d');
  await assert.rejects(cap.files.read('/tmp/d/a.txt'), (e) => e instanceof APIError && e.code === 'not_found');
}));

test('pty', () => withCapsule(async (cap) => {
  const t = await cap.pty({ cols: 100, rows: 30, cmd: '/bin/sh' });
  t.send('echo $((6*7)); exit\n');
  const seen = [];
  for (let d = await t.recv(); d !== null; d = await t.recv()) seen.push(d);
  assert.match(text(seen), /42/);
  assert.equal(t.exitCode, 0);
}));

test('pause and resume', () => withCapsule(async (cap) => {
  await cap.exec('sh', ['-c', 'echo kept > /root/m']);
  const p = await cap.pause();
  assert.equal(p.status, 'paused');
  await assert.rejects(cap.exec('true'), (e) => e instanceof APIError && e.status === 409);
  assert.equal((await cap.resume({ timeoutSec: 300 })).status, 'running');
  assert.equal((await cap.exec('cat', ['/root/m'])).stdout, 'kept\n');
}));

test('templates, me, builds, bad key', async () => {
  assert.ok((await c.templates.list()).some((t) => t.name === TEMPLATE));
  const id = (await c.templates.list()).find((t) => t.name === TEMPLATE).id;
  assert.equal((await c.templates.get(id)).name, TEMPLATE);
  const me = await c.me();
  assert.equal(me.auth, 'api_key');
  assert.ok(Array.isArray(await c.builds.list()));
  await assert.rejects(c.builds.create('Bad Name!', { run: ['true'] }), (e) => e instanceof APIError && e.code === 'invalid_argument');
  const bad = new Client({ apiKey: 'wrn_nope' });
  await assert.rejects(bad.capsules.list(), (e) => e instanceof APIError && e.code === 'unauthenticated');
  const cap = await c.capsules.create({ template: TEMPLATE });
  try {
    await assert.rejects((await bad.capsules.get(cap.id).catch(() => new (cap.constructor)(bad, cap.info))).execStream('true'),
      (e) => e instanceof APIError && e.status === 401);
  } finally {
    await cap.delete();
  }
});

test('events and webhooks', async () => {
  // A local receiver (the test's wrenn up runs with --webhook-allow-private).
  const { createServer } = await import('node:http');
  const got = [];
  const srv = createServer((req, res) => {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      got.push({ sig: req.headers['wrenn-signature'], id: req.headers['wrenn-event-id'], body: Buffer.concat(parts).toString() });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  let hook;
  const waitFor = async (pred, what) => {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (pred()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`timed out waiting for ${what}; got ${got.map((g) => JSON.parse(g.body).type)}`);
  };
  try {
    hook = await c.webhooks.create(`http://127.0.0.1:${srv.address().port}/hook`, { eventTypes: ['capsule.created', 'capsule.destroyed'] });
    assert.ok(hook.secret && hook.enabled);
    assert.equal((await c.webhooks.get(hook.id)).secret, undefined);
    assert.ok((await c.webhooks.list()).some((w) => w.id === hook.id));
    await assert.rejects(c.webhooks.create('ftp://example.com/x'), (e) => e instanceof APIError && e.status === 400);

    const cap = await c.capsules.create({ template: TEMPLATE });
    await cap.delete();
    const typesFor = (id) => got.map((g) => JSON.parse(g.body)).filter((e) => e.subject === id).map((e) => e.type);
    await waitFor(() => typesFor(cap.id).join() === 'capsule.created,capsule.destroyed', "the capsule's deliveries");
    for (const g of got) {
      verifyWebhook(hook.secret, g.sig, g.body);
      assert.equal(g.id, JSON.parse(g.body).id);
      assert.throws(() => verifyWebhook('wrong-secret', g.sig, g.body), WebhookVerificationError);
    }

    const secret = await c.webhooks.rotateSecret(hook.id);
    assert.ok(secret && secret !== hook.secret);
    const n = got.length;
    assert.equal((await c.webhooks.test(hook.id)).event_type, 'webhook.test');
    await waitFor(() => got.length > n, 'the test delivery');
    verifyWebhook(secret, got[n].sig, got[n].body);
    assert.throws(() => verifyWebhook(hook.secret, got[n].sig, got[n].body), WebhookVerificationError);
    let delivered = false;
    for (let i = 0; i < 600 && !delivered; i++) { // 30 s
      delivered = (await c.webhooks.deliveries(hook.id)).some((d) => d.status === 'delivered' && d.event_type === 'webhook.test');
      if (!delivered) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await c.webhooks.update(hook.id, { enabled: false })).enabled, false);

    const events = await c.events.list({ subject: cap.id });
    assert.equal(events[0].type, 'capsule.created');
    assert.equal(events.at(-1).type, 'capsule.destroyed');
    const page = await c.events.listPage({ subject: cap.id, limit: 1 });
    assert.equal(page.events.length, 1);
    assert.ok(page.next_cursor);
    // The stream replays what follows Last-Event-ID, then goes live.
    for await (const e of c.events.stream({ subject: cap.id, lastEventId: events[0].id })) {
      assert.equal(e.id, events[1].id);
      assert.equal(e.type, events[1].type);
      break;
    }
  } finally {
    if (hook) await c.webhooks.delete(hook.id);
    srv.close();
  }
  await assert.rejects(c.webhooks.get(hook.id), (e) => e instanceof APIError && e.status === 404);
});

test('volumes', async () => {
  const v = await c.volumes.create('ts-vol', 32);
  assert.match(v.id, /^vol-/);
  assert.equal(v.location, 'store');
  try {
    await assert.rejects(c.volumes.create('ts/vol'), (e) => e instanceof APIError && e.code === 'invalid_argument');
    await withCapsule(async (cap) => {
      assert.equal((await cap.exec('sh', ['-c', 'echo kept > /vol/note'])).exitCode, 0);
      await assert.rejects(c.capsules.create({ template: TEMPLATE, volume_mounts: [{ name: 'ts-vol', path: '/vol' }] }),
        (e) => e instanceof APIError && e.code === 'conflict' && e.status === 409);
      const got = await c.volumes.get('ts-vol');
      assert.equal(got.location, 'host');
      assert.equal(got.mounts[0].capsule_id, cap.id);
    }, { volume_mounts: [{ name: 'ts-vol', path: '/vol' }] });
    await withCapsule(async (cap) => {
      assert.equal((await cap.exec('cat', ['/v/note'])).stdout, 'kept\n');
    }, { volume_mounts: [{ name: 'ts-vol', path: '/v', read_only: true }] });
    await c.volumes.write('ts-vol', '/a/b.txt', 'hi');
    assert.equal(Buffer.from(await c.volumes.read('ts-vol', '/a/b.txt')).toString(), 'hi');
    assert.deepEqual((await c.volumes.listFiles('ts-vol')).map((e) => e.name).sort(), ['a', 'note']);
    await assert.rejects(c.volumes.write('ts-vol', '/big', new Uint8Array(33 << 20)),
      (e) => e instanceof APIError && e.code === 'volume_full' && e.status === 507);
    await c.volumes.remove('ts-vol', '/a');
    assert.ok((await c.volumes.list()).some((x) => x.name === 'ts-vol'));
  } finally {
    await c.volumes.delete('ts-vol');
  }
  await assert.rejects(c.volumes.get('ts-vol'), (e) => e instanceof APIError && e.status === 404);
});
