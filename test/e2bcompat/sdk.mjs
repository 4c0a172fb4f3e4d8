// Drives Wrenn's E2B-compatible API (<url>/e2b and <url>/e2b/envd) with
// the unmodified E2B JavaScript SDK and prints one JSON object of results.
// The Go test next to this file starts `wrenn up` and sets E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY, WRENN_URL and WRENN_KEY.
import { Sandbox } from 'e2b'

const r = {}
const WRENN_URL = process.env.WRENN_URL
const WRENN_KEY = process.env.WRENN_KEY
const tag = `t${process.pid}`

// The minimal template is busybox; E2B's SDK runs commands with
// /bin/bash -l -c, so give it a bash that is busybox's sh (test setup
// through Wrenn's own API).
async function wrennExec(id, cmd, args) {
  const res = await fetch(`${WRENN_URL}/v1/capsules/${id}/exec`, {
    method: 'POST',
    headers: { 'X-API-Key': WRENN_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ cmd, args, user: 'root' }),
  })
  if (!res.ok) throw new Error(`wrenn exec: ${res.status} ${await res.text()}`)
  return res.json()
}

async function errorOf(p) {
  try {
    await p
    return 'no error'
  } catch (e) {
    return `${e.constructor.name}:${e.statusCode ?? ''}`
  }
}

const sbx = await Sandbox.create('minimal', { metadata: { suite: tag, role: 'main' }, envs: { GREETING: 'hi' }, timeoutMs: 300_000 })
r.id = sbx.sandboxId
await wrennExec(sbx.sandboxId, '/bin/sh', ['-c', 'printf "#!/bin/sh\\nexec /bin/sh \\"\\$@\\"\\n" > /bin/bash && chmod 755 /bin/bash'])

// Commands.
const echo = await sbx.commands.run('echo $GREETING; echo err >&2')
r.echo = { exitCode: echo.exitCode, stdout: echo.stdout, stderr: echo.stderr }
r.exit = await sbx.commands.run('exit 7').then(() => 'no error', (e) => e.exitCode)
const out = []
const bg = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.1; done', { background: true, onStdout: (d) => out.push(d) })
const bgRes = await bg.wait()
r.streamed = out.join('').split('\n').filter(Boolean)
r.bgExit = bgRes.exitCode
const cat = await sbx.commands.run('cat', { background: true, stdin: true })
await sbx.commands.sendStdin(cat.pid, 'from stdin\n')
await sbx.commands.closeStdin(cat.pid).catch(async () => { await sbx.commands.kill(cat.pid) })
r.stdin = (await cat.wait().catch((e) => e)).stdout

// Files.
const dir = `/tmp/${tag}`
await sbx.files.makeDir(dir)
await sbx.files.write(`${dir}/a.txt`, 'content A')
r.read = await sbx.files.read(`${dir}/a.txt`)
r.list = (await sbx.files.list(dir)).map((e) => e.name)
await sbx.files.rename(`${dir}/a.txt`, `${dir}/b.txt`)
r.renamed = await sbx.files.read(`${dir}/b.txt`)
const events = []
const watcher = await sbx.files.watchDir(dir, (ev) => events.push(ev.name))
await sbx.files.write(`${dir}/w.txt`, 'watched')
await new Promise((res) => setTimeout(res, 1000))
await watcher.stop()
r.watched = events.includes('w.txt')
await sbx.files.remove(`${dir}/w.txt`)
r.existsAfterRemove = await sbx.files.exists(`${dir}/w.txt`)
const big = new Uint8Array(32 << 20)
for (let i = 0; i < big.length; i += 4096) big[i] = i % 251
await sbx.files.write(`${dir}/big.bin`, big.buffer)
const back = await sbx.files.read(`${dir}/big.bin`, { format: 'bytes' })
r.bigOK = back.length === big.length && back.every((v, i) => v === big[i])

// Signed URLs: the SDK builds them at <origin>/files (it drops
// sandboxUrl's path); Wrenn serves them at <url>/e2b/envd/files with the
// E2b-Sandbox-Id header.
const signed = new URL(await sbx.downloadUrl(`${dir}/b.txt`))
const signedGet = (u, id) => fetch(`${WRENN_URL}/e2b/envd${u.pathname}${u.search}`, { headers: { 'E2b-Sandbox-Id': id } })
let res = await signedGet(signed, sbx.sandboxId)
r.signedRead = res.status === 200 ? await res.text() : `status ${res.status}`
const forged = new URL(signed)
forged.searchParams.set('signature', 'v1_forged')
r.forgedStatus = (await signedGet(forged, sbx.sandboxId)).status

// PTY.
const ptyOut = []
const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => ptyOut.push(new TextDecoder().decode(d)) })
await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo pty-$((6*7))\nexit\n'))
await pty.wait().catch((e) => { if (e.constructor.name !== 'CommandExitError') throw e })
r.pty = ptyOut.join('').includes('pty-42')

// Info, list by metadata, timeout.
const info = await sbx.getInfo()
r.info = { state: info.state, metadata: info.metadata, templateId: info.templateId }
const other = await Sandbox.create('minimal', { metadata: { suite: tag, role: 'other' }, timeoutMs: 120_000 })
const byRole = await Sandbox.list({ query: { metadata: { suite: tag, role: 'main' } } }).nextItems()
r.listByMetadata = byRole.map((s) => s.sandboxId)
const bySuite = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems()
r.listBySuite = bySuite.length
await sbx.setTimeout(600_000)
const after = await sbx.getInfo()
r.timeoutExtended = after.endAt.getTime() - Date.now() > 500_000

// Pause, connect (resumes), the file survives.
await sbx.pause()
r.pausedState = (await Sandbox.getInfo(sbx.sandboxId)).state
// A cold boot (memory: false) is not supported yet: 501, never a restore.
r.rebootConnect = await errorOf(Sandbox.connect(sbx.sandboxId, { onResume: 'reboot' }))
r.stillPaused = (await Sandbox.getInfo(sbx.sandboxId)).state
const again = await Sandbox.connect(sbx.sandboxId)
r.afterResume = await again.files.read(`${dir}/b.txt`)
r.resumedState = (await again.getInfo()).state

// Error cases.
r.unknownId = await errorOf(Sandbox.getInfo('cl-doesnotexist'))
r.badKey = await errorOf(Sandbox.getInfo(sbx.sandboxId, { apiKey: 'wrn_bad' }))
const noTokenRes = await fetch(`${WRENN_URL}/e2b/envd/health`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId } })
r.noToken = { status: noTokenRes.status, body: await noTokenRes.json() }
const wrongToken = await fetch(`${WRENN_URL}/e2b/envd/health`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'X-Access-Token': 'wrong' } })
r.wrongToken = wrongToken.status
// The other sandbox's token does not open this one.
const crossToken = await fetch(`${WRENN_URL}/e2b/envd/health`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'X-Access-Token': other.envdAccessToken } })
r.crossToken = crossToken.status
const noId = await fetch(`${WRENN_URL}/e2b/envd/health`, { headers: { 'X-Access-Token': sbx.envdAccessToken } })
r.noId = noId.status
const fork = await fetch(`${process.env.E2B_API_URL}/sandboxes/${sbx.sandboxId}/fork`, { method: 'POST', headers: { 'X-API-Key': process.env.E2B_API_KEY } })
r.fork = { status: fork.status, body: await fork.json() }
const bad = await fetch(`${process.env.E2B_API_URL}/v2/sandboxes`, { method: 'POST', headers: { 'X-API-Key': process.env.E2B_API_KEY }, body: '{nope' })
r.malformed = bad.status

// Another team (a new user's own team) sees none of it.
const signup = await fetch(`${WRENN_URL}/v1/auth/signup`, {
  method: 'POST', headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ email: `${tag}@example.com`, password: 'a long enough password' }),
})
if (!signup.ok) throw new Error(`signup: ${signup.status} ${await signup.text()}`)
const session = await signup.json()
const keyRes = await fetch(`${WRENN_URL}/v1/api-keys`, {
  method: 'POST', headers: { Authorization: `Bearer ${session.token}`, 'Content-Type': 'application/json' },
  body: JSON.stringify({ name: 'e2b' }),
})
if (!keyRes.ok) throw new Error(`api key: ${keyRes.status} ${await keyRes.text()}`)
const otherKey = (await keyRes.json()).key
r.otherTeam = {
  get: await errorOf(Sandbox.getInfo(sbx.sandboxId, { apiKey: otherKey })),
  connect: await errorOf(Sandbox.connect(sbx.sandboxId, { apiKey: otherKey })),
  kill: await Sandbox.kill(sbx.sandboxId, { apiKey: otherKey }),
  listed: (await Sandbox.list({ apiKey: otherKey }).nextItems()).length,
}

// Kill.
r.killed = await Sandbox.kill(sbx.sandboxId)
r.killedAgain = await Sandbox.kill(sbx.sandboxId)
await Sandbox.kill(other.sandboxId)

console.log(JSON.stringify(r))
