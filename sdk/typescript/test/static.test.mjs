// Checks that need no server: the package's contents (npm pack --dry-run),
// the generated types are fresh, and errors carry what they should.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import * as sdk from '../dist/index.js';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');

test('npm pack --dry-run ships the built entry point and types, not sources or tests', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: pkgDir, encoding: 'utf8' });
  const [info] = JSON.parse(out);
  const files = info.files.map((f) => f.path).sort();
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
  assert.equal(info.name, '@wrenn/sdk');
  for (const want of [pkg.main.replace('./', ''), pkg.types.replace('./', ''), 'dist/openapi.d.ts', 'package.json', 'README.md']) {
    assert.ok(files.includes(want), `pack lacks ${want}: ${files}`);
  }
  assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('node_modules/')), `pack ships ${files}`);
  assert.deepEqual(Object.keys(pkg.dependencies), ['ws']);
});

test('src/openapi.ts is what openapi-typescript generates from openapi.yaml', () => {
  execFileSync('npm', ['run', '--silent', 'gen-check'], { cwd: pkgDir, stdio: 'pipe' });
});

test('APIError carries code, message, requestId; network errors are other types', () => {
  const e = new sdk.APIError(404, 'not_found', 'no capsule', 'req-1');
  assert.ok(e instanceof sdk.WrennError);
  assert.deepEqual([e.status, e.code, e.message, e.requestId], [404, 'not_found', 'no capsule', 'req-1']);
  assert.ok(!(new sdk.ConnectionError('u', new Error('x')) instanceof sdk.APIError));
  assert.ok(!(new sdk.TimeoutError('u') instanceof sdk.APIError));
});

test('a refused connection is a ConnectionError', async () => {
  const c = new sdk.Client({ url: 'http://127.0.0.1:9', apiKey: 'x' });
  await assert.rejects(c.me(), sdk.ConnectionError);
  await assert.rejects(c.capsules.get('cl-x').then((cap) => cap.execStream('true')), sdk.ConnectionError);
});

test('templates.build sends multipart fields then the file; buildLogs yields NDJSON records across chunks', async () => {
  const seen = [];
  const fetchImpl = async (url, init) => {
    seen.push({ url, init });
    if (init.method === 'POST') {
      const form = init.body;
      assert.ok(form instanceof FormData);
      assert.deepEqual([...form.keys()], ['name', 'recipe', 'registry_auth', 'context']);
      return new Response(JSON.stringify({ id: 'bld-1', status: 'pending' }), { status: 201 });
    }
    const enc = new TextEncoder();
    const body = new ReadableStream({
      start(ctl) {
        ctl.enqueue(enc.encode('{"seq":1,"step":0,"stream":"system","data":"step 0/1"}\n{"seq":2,"st'));
        ctl.enqueue(enc.encode('ep":1,"stream":"stdout","data":"hi\\n"}\n'));
        ctl.close();
      },
    });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'application/x-ndjson' } });
  };
  const c = new sdk.Client({ url: 'http://wrenn.test', apiKey: 'k', fetch: fetchImpl });
  const b = await c.templates.build('app', { recipe: 'FROM base\n', context: new Uint8Array([1, 2]), registryAuth: { username: 'u', password: 'p' } });
  assert.equal(b.id, 'bld-1');
  const recs = [];
  for await (const r of c.templates.buildLogs('bld-1', { follow: true })) recs.push(r);
  assert.deepEqual(recs.map((r) => [r.seq, r.stream, r.data]), [[1, 'system', 'step 0/1'], [2, 'stdout', 'hi\n']]);
  assert.ok(seen[1].url.endsWith('/v1/templates/builds/bld-1/logs?follow=1'), seen[1].url);
});

test('verifyWebhook accepts the signer\'s format and refuses tampering', async () => {
  const { createHmac } = await import('node:crypto');
  const body = '{"id":"7","type":"capsule.created"}';
  const t = 1700000000;
  const sig = createHmac('sha256', 'whsec_x').update(`${t}.${body}`).digest('hex');
  const header = `t=${t},v1=${sig}`;
  sdk.verifyWebhook('whsec_x', header, body, 300, t + 10);
  sdk.verifyWebhook('whsec_x', `t=${t},v1=${'0'.repeat(64)},v1=${sig}`, Buffer.from(body), 300, t);
  for (const [secret, hdr, b, now] of [
    ['whsec_y', header, body, t],
    ['whsec_x', header, body + ' ', t],
    ['whsec_x', header, body, t + 301],
    ['whsec_x', 'garbage', body, t],
    ['whsec_x', `t=${t}`, body, t],
    ['whsec_x', undefined, body, t],
  ]) {
    assert.throws(() => sdk.verifyWebhook(secret, hdr, b, 300, now), sdk.WebhookVerificationError);
  }
});
