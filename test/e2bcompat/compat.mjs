// Drives an envd on localhost:49983 with E2B's JavaScript SDK in debug mode
// and prints one JSON line per check. The Go test next to this file starts
// envd, runs this script and asserts on its output.
import { Sandbox } from 'e2b'

const results = {}
const sbx = await Sandbox.create({ debug: true })

const echo = await sbx.commands.run('echo hello from $0; echo err >&2; exit 0', { envs: { X: '1' } })
results.echo = { exitCode: echo.exitCode, stdout: echo.stdout, stderr: echo.stderr }

try {
  await sbx.commands.run('exit 7')
  results.exit = { error: 'no error' }
} catch (e) {
  results.exit = { exitCode: e.exitCode }
}

const env = await sbx.commands.run('echo $WRENN_COMPAT', { envs: { WRENN_COMPAT: 'yes' }, cwd: '/tmp' })
results.env = env.stdout.trim()
const pwd = await sbx.commands.run('pwd', { cwd: '/tmp' })
results.cwd = pwd.stdout.trim()

const dir = `/tmp/wrenn-e2b-${process.pid}`
await sbx.files.makeDir(dir)
await sbx.files.write(`${dir}/a.txt`, 'content A')
results.read = await sbx.files.read(`${dir}/a.txt`)
results.list = (await sbx.files.list(dir)).map((e) => e.name)
results.exists = await sbx.files.exists(`${dir}/a.txt`)
await sbx.files.rename(`${dir}/a.txt`, `${dir}/b.txt`)
results.renamed = await sbx.files.read(`${dir}/b.txt`)
await sbx.files.remove(dir)
results.existsAfterRemove = await sbx.files.exists(dir)

const bg = await sbx.commands.run('sleep 30', { background: true })
const procs = await sbx.commands.list()
results.bgListed = procs.some((p) => p.pid === bg.pid)
results.killed = await sbx.commands.kill(bg.pid)

const out = []
const h = await sbx.commands.run('for i in 1 2 3; do echo line$i; done', {
  onStdout: (d) => out.push(d),
})
results.streamed = out.join('').split('\n').filter(Boolean)
results.streamExit = h.exitCode

console.log(JSON.stringify(results))
