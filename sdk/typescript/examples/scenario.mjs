// The four-client scenario (docs/SDK.md) with the TypeScript SDK:
// create -> exec -> stream -> files round trip -> pause -> resume -> delete.
// Needs WRENN_URL and WRENN_API_KEY; prints "scenario ok".
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Client, APIError } from '../dist/index.js';

const c = new Client(); // WRENN_URL, WRENN_API_KEY

const cap = await c.capsules.create({ template: 'minimal' });
assert.equal((await cap.exec('echo', ['hello'])).stdout, 'hello\n');

const lines = [];
const st = await cap.execStream('sh', ['-c', 'for i in 1 2 3; do echo line $i; sleep 0.1; done'], { onStdout: (d) => lines.push(d) });
assert.equal(st.exitCode, 0);
assert.equal(Buffer.concat(lines).toString(), 'line 1\nline 2\nline 3\n');

const data = randomBytes(1 << 20);
await cap.files.write('/root/data.bin', data);
assert.ok(Buffer.from(await cap.files.read('/root/data.bin')).equals(data));

assert.equal((await cap.pause()).status, 'paused');
assert.equal((await cap.resume()).status, 'running');
assert.ok(Buffer.from(await cap.files.read('/root/data.bin')).equals(data));

await cap.delete();
await assert.rejects(c.capsules.get(cap.id), (e) => e instanceof APIError && e.code === 'not_found');
console.log('scenario ok');
