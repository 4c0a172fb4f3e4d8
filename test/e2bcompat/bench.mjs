// Benchmarks Wrenn's E2B-compatible routes against Wrenn's own API in the
// same run and prints one JSON object of figures (milliseconds, MiB/s).
// The Go benchmark next to this file starts `wrenn up` with the base
// template and sets E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, WRENN_URL,
// WRENN_KEY, WRENN_HOME, BENCH_ROUNDS and BENCH_MIB.
import fs from 'node:fs'
import path from 'node:path'
import { Readable } from 'node:stream'
import { Sandbox } from 'e2b'

const { WRENN_URL, WRENN_KEY, WRENN_HOME } = process.env
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5)
const MIB = Number(process.env.BENCH_MIB || 1024)
const TEMPLATE = 'base'
const wh = { 'X-API-Key': WRENN_KEY, 'Content-Type': 'application/json' }

const median = (a) => {
  const s = [...a].sort((x, y) => x - y)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
async function wrenn(method, p, body) {
  const res = await fetch(`${WRENN_URL}${p}`, { method, headers: wh, body: body && JSON.stringify(body) })
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${await res.text()}`)
  return res.status === 204 ? null : res.json()
}
const wrennExec = (id, cmd, args, user) => wrenn('POST', `/v1/capsules/${id}/exec`, { cmd, args, user })

// wrenn up builds the base template after it is up (the store lists it
// from the start): wait until a capsule of it can be created.
for (let i = 0; ; i++) {
  const res = await fetch(`${WRENN_URL}/v1/capsules`, { method: 'POST', headers: wh, body: JSON.stringify({ template: TEMPLATE }) })
  const body = await res.json()
  if (body.id) await wrenn('DELETE', `/v1/capsules/${body.id}`).catch(() => {})
  if (res.status === 201) break
  if (i > 180) throw new Error(`no ${TEMPLATE} template after 15 minutes: ${JSON.stringify(body)}`)
  await new Promise((r) => setTimeout(r, 5000))
}

const out = {}

// 1. Create → first exec: E2B SDK vs raw HTTP to Wrenn's API, alternated.
const e2bCreate = []
const rawCreate = []
for (let i = 0; i < ROUNDS; i++) {
  let t = performance.now()
  const sbx = await Sandbox.create(TEMPLATE)
  await sbx.commands.run('true')
  e2bCreate.push(performance.now() - t)
  await sbx.kill()

  t = performance.now()
  const c = await wrenn('POST', '/v1/capsules', { template: TEMPLATE })
  await wrennExec(c.id, '/bin/bash', ['-l', '-c', 'true'])
  rawCreate.push(performance.now() - t)
  await wrenn('DELETE', `/v1/capsules/${c.id}`)
}
out.createFirstExecE2BMs = median(e2bCreate)
out.createFirstExecWrennMs = median(rawCreate)

// 2. Exec round trip on one sandbox: E2B envd route vs Wrenn's exec route.
const sbx = await Sandbox.create(TEMPLATE, { timeoutMs: 1_800_000 })
const e2bExec = []
const rawExec = []
for (let i = 0; i < ROUNDS * 6; i++) {
  let t = performance.now()
  await sbx.commands.run('true')
  e2bExec.push(performance.now() - t)
  t = performance.now()
  await wrennExec(sbx.sandboxId, '/bin/bash', ['-l', '-c', 'true'])
  rawExec.push(performance.now() - t)
}
out.execE2BMs = median(e2bExec)
out.execWrennMs = median(rawExec)

// 3. Large upload and download: the E2B envd route vs the capsule's envd
// directly (its address and the agent's envd token, read from the agent's
// state under WRENN_HOME), the same raw requests on both.
const trie = await wrennExec(sbx.sandboxId, '/bin/cat', ['/proc/net/fib_trie'])
const ips = [...trie.stdout.matchAll(/\|-- (\d+\.\d+\.\d+\.\d+)\n\s+\/32 host LOCAL/g)].map((m) => m[1]).filter((ip) => !ip.startsWith('127.'))
// The agent's capsule record, <state dir>/capsules/<id>.json, found by a
// walk that skips what it cannot read (LXCFS's mount changes under it).
function findRecord(dir, name) {
  let entries = []
  try { entries = fs.readdirSync(dir, { withFileTypes: true }) } catch { return undefined }
  for (const e of entries) {
    const p = path.join(dir, e.name)
    if (e.isFile() && e.name === name && path.basename(dir) === 'capsules') return p
    if (e.isDirectory() && e.name !== 'lxcfs' && e.name !== 'rootfs') {
      const found = findRecord(p, name)
      if (found) return found
    }
  }
  return undefined
}
const rec = findRecord(WRENN_HOME, `${sbx.sandboxId}.json`)
if (!ips.length || !rec) throw new Error(`capsule address ${ips} or state ${rec} not found`)
const envdToken = JSON.parse(fs.readFileSync(rec)).access_token
const routes = {
  e2b: { base: `${WRENN_URL}/e2b/envd`, headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'X-Access-Token': sbx.envdAccessToken } },
  direct: { base: `http://${ips[0]}:49983`, headers: { 'X-Access-Token': envdToken } },
}
const chunk = Buffer.alloc(1 << 20, 7)
const body = () => Readable.toWeb(Readable.from((function* () { for (let i = 0; i < MIB; i++) yield chunk })()))
async function upload(r, file) {
  const t = performance.now()
  const res = await fetch(`${r.base}/files?path=${encodeURIComponent(file)}&username=root`, {
    method: 'POST', headers: { ...r.headers, 'Content-Type': 'application/octet-stream' }, body: body(), duplex: 'half',
  })
  if (!res.ok) throw new Error(`upload: ${res.status} ${await res.text()}`)
  await res.arrayBuffer()
  return MIB / ((performance.now() - t) / 1000)
}
async function download(r, file) {
  const t = performance.now()
  const res = await fetch(`${r.base}/files?path=${encodeURIComponent(file)}&username=root`, { headers: r.headers })
  if (!res.ok) throw new Error(`download: ${res.status} ${await res.text()}`)
  let n = 0
  for await (const b of res.body) n += b.length
  if (n !== MIB << 20) throw new Error(`download: ${n} bytes, want ${MIB << 20}`)
  return MIB / ((performance.now() - t) / 1000)
}
const up = { e2b: [], direct: [] }
const down = { e2b: [], direct: [] }
for (let i = 0; i < 3; i++) {
  for (const k of ['direct', 'e2b']) {
    up[k].push(await upload(routes[k], `/root/big-${k}.bin`))
    down[k].push(await download(routes[k], `/root/big-${k}.bin`))
    await wrennExec(sbx.sandboxId, '/bin/rm', ['-f', `/root/big-${k}.bin`], 'root')
  }
}
out.uploadE2BMiBs = median(up.e2b)
out.uploadDirectMiBs = median(up.direct)
out.downloadE2BMiBs = median(down.e2b)
out.downloadDirectMiBs = median(down.direct)
await sbx.kill()
console.log(JSON.stringify(out))
