import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BIN, backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

const PROCESS_EVENTS = ['SIGINT', 'SIGTERM', 'SIGXFSZ', 'SIGHUP', 'exit', 'uncaughtException']
const listenerCounts = (): number[] => PROCESS_EVENTS.map((e) => process.listenerCount(e))

describe('cli: run() in-process', () => {
  it('prints help and the version on stdout and returns 0', async () => {
    const help = await runCliInProcess(['--help'])
    assert.equal(help.code, 0)
    assert.match(help.stdout, /^Usage: guestbackup \[options\] \[command\]/)
    assert.match(help.stdout, /\n {2}backup \[options\] /)
    assert.equal(help.stderr, '')
    const sub = await runCliInProcess(['list', '--help'])
    assert.equal(sub.code, 0)
    assert.match(sub.stdout, /^Usage: guestbackup list \[options\]/)
    const version = await runCliInProcess(['--version'])
    assert.deepEqual(version, { code: 0, stdout: '0.1.0\n', stderr: '' })
  })

  it('returns 2 with one line on stderr for an unknown option or command', async () => {
    assert.deepEqual(await runCliInProcess(['list', '--store', 'S', '--bogus']), {
      code: 2,
      stdout: '',
      stderr: "error: unknown option '--bogus' (see --help)\n",
    })
    const r = await runCliInProcess(['frobnicate'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /^error: unknown command 'frobnicate' \(see --help\)\n$/)
    // Without a command, commander prints the help on stderr: a usage error too.
    const none = await runCliInProcess([])
    assert.equal(none.code, 2)
    assert.match(none.stderr, /^Usage: guestbackup/)
  })

  it('returns 130 when its signal is already aborted', async () => {
    const ac = new AbortController()
    ac.abort()
    const r = await runCliInProcess(['bitmaps', '--disk', '/nonexistent.qcow2'], {
      signal: ac.signal,
    })
    assert.equal(r.code, 130)
    assert.match(r.stderr, /^guestbackup: /)
  })
})

describe('cli: in-process runs keep nothing of each other', () => {
  let dir: string
  let root: string
  let store: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-run-'))
    root = join(dir, 'root')
    store = join(root, 'store')
    await mkdir(root)
    await writeFile(join(root, 'file.txt'), 'data\n')
    await writeFile(join(dir, 'ct.conf'), 'hostname: t\n')
    await runCliInProcessOk(['init', store])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('logs each run on its own stderr, in its own format', async () => {
    // The store inside the container root is excluded with a warning: one log line per run.
    const args = backupArgs(store, 100, join(dir, 'ct.conf'), '--rootfs', root)
    const json = await runCliInProcessOk(['--log-json', ...args])
    const human = await runCliInProcessOk(['--no-progress', ...args])
    const line = JSON.parse(json.stderr.trim().split('\n')[0] ?? '') as { msg?: string }
    assert.match(line.msg ?? '', /the store .* is inside the container root: excluded/)
    assert.match(human.stderr, /^warn: the store .* is inside the container root: excluded\n$/)
    const list = await runCliInProcessOk(['list', '--store', store])
    assert.equal(list.stderr, '')
    assert.equal(list.stdout.trim().split('\n').length, 2)
  })

  it('leaves no process listener behind, after a prune took and released guest locks', async () => {
    const counts = listenerCounts()
    await runCliInProcessOk(['prune', '--store', store, '--keep', 'keep-last=1'])
    await runCliInProcess(['list', '--bogus'])
    assert.deepEqual(listenerCounts(), counts)
    const list = await runCliInProcessOk(['list', '--store', store, '--json'])
    assert.equal((JSON.parse(list.stdout) as unknown[]).length, 1)
  })
})

describe('cli: bin/guestbackup', () => {
  it('exits quietly when the reader of stdout goes away (EPIPE)', async () => {
    const child = spawn(BIN, ['--help'], { stdio: ['ignore', 'pipe', 'pipe'] })
    // Closed before node even started: the first write of the help fails with EPIPE.
    child.stdout.destroy()
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    const [code] = (await once(child, 'close')) as [number | null]
    assert.equal(stderr, '')
    assert.equal(code, 0)
  })
})
