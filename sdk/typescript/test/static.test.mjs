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
