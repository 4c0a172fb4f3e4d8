// Benchmark driver for test/sdks (BenchmarkSDKs): times SDK calls in-process
// and prints one JSON object; same modes as sdk/python/bench/bench.py.
import { performance } from 'node:perf_hooks';
import { Client } from '../dist/index.js';

const c = new Client();
const [mode, ...a] = process.argv.slice(2);
let res;
if (mode === 'create-exec') {
  const warm = await c.capsules.create({ template: a[1] }); // untimed: connection and JIT warm
  await warm.exec('true');
  await warm.delete();
  const out = [];
  for (let i = 0; i < Number(a[0]); i++) {
    const t0 = performance.now();
    const cap = await c.capsules.create({ template: a[1] });
    const r = await cap.exec('true');
    out.push((performance.now() - t0) / 1000);
    if (r.exitCode !== 0) throw new Error('exec failed');
    await cap.delete();
  }
  res = { seconds: out };
} else if (mode === 'upload') {
  const cap = await c.capsules.get(a[0]);
  const t0 = performance.now();
  await cap.files.upload(a[1], a[2]);
  res = { seconds: (performance.now() - t0) / 1000 };
} else if (mode === 'download') {
  const cap = await c.capsules.get(a[0]);
  const t0 = performance.now();
  const n = await cap.files.download(a[1], a[2]);
  res = { seconds: (performance.now() - t0) / 1000, bytes: n };
} else {
  throw new Error(`unknown mode ${mode}`);
}
console.log(JSON.stringify(res));
