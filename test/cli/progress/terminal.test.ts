/**
 * Progress as an operator sees it: on a terminal (a tmux pane of 120 × 30 running
 * bin/guestbackup, read with `tmux capture-pane -p`), without one (stderr collected), and with
 * --quiet and --no-progress. A bandwidth limit makes each operation last a few seconds.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '../../../src/io/spawn.ts'
import { BIN, backupArgs, runCliInProcess, runCliInProcessOk } from '../../helpers/cli.ts'

const MiB = 1024 * 1024
/** A status line mid-run: percentage, bytes of the total, a rate, elapsed time and an ETA. */
const RUNNING =
  /: \d{1,2}% [\d.]+ \S+ of [\d.]+ MiB.*, [\d.]+ \S+\/s, \d+:\d\d elapsed, ETA \d+:\d\d$/
const EXITED = /^guestbackup exited (\d+)$/m

/** What a tmux pane showed while `args` ran in it, snapshot by snapshot, and the exit code. */
const inTerminal = async (
  sock: string,
  args: readonly string[],
): Promise<{ seen: string[]; last: string; code: number }> => {
  const quoted = [BIN, ...args].map((a) => `'${a}'`).join(' ')
  const name = `gb${Date.now()}`
  await run('tmux', [
    '-S',
    sock,
    'new-session',
    '-d',
    '-x',
    '120',
    '-y',
    '30',
    '-s',
    name,
    `${quoted}; echo "guestbackup exited $?"; sleep 600`,
  ])
  const seen: string[] = []
  try {
    for (;;) {
      const { stdout } = await run('tmux', ['-S', sock, 'capture-pane', '-p', '-t', name])
      seen.push(stdout)
      const m = EXITED.exec(stdout)
      if (m !== null) return { seen, last: stdout, code: Number(m[1]) }
      await sleep(150)
    }
  } finally {
    await run('tmux', ['-S', sock, 'kill-session', '-t', name])
  }
}

/** Every row of the pane that holds a log line starts with it: none is glued onto progress. */
const assertLogLinesApart = (pane: string): void => {
  const rows = pane.split('\n')
  const logs = rows.filter((r) => /\b(info|warn): /.test(r))
  assert.ok(logs.length >= 3, `-v logged: ${pane}`)
  for (const r of logs) assert.match(r, /^(info|warn): /, `a log line glued onto another: ${pane}`)
}

describe('cli progress: on a terminal and without one', () => {
  let dir: string
  let store: string
  let sock: string
  let vmVolume: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-progress-'))
    store = join(dir, 'store')
    sock = join(dir, 'tmux.sock')
    // 64 MiB: 48 MiB of data, then 16 MiB of hole.
    await run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'disk.raw'), String(64 * MiB)])
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 48M', join(dir, 'disk.raw')])
    await mkdir(join(dir, 'root', 'data'), { recursive: true })
    await writeFile(join(dir, 'root', 'data', 'big'), Buffer.alloc(48 * MiB, 0x61))
    await writeFile(join(dir, 'vm.conf'), 'memory: 512\n')
    await writeFile(join(dir, 'ct.conf'), 'hostname: t\n')
    await runCliInProcessOk(['init', store, '--vm-compress', 'none'])
  })
  after(async () => {
    await run('tmux', ['-S', sock, 'kill-server']).catch(() => undefined)
    await rm(dir, { recursive: true, force: true })
  })

  it('shows a VM backup as one status line with rate and ETA; -v log lines stay apart', async () => {
    const vm = [
      ...backupArgs(store, 100, join(dir, 'vm.conf')),
      '--disk',
      `scsi0=${join(dir, 'disk.raw')}`,
    ]
    const r = await inTerminal(sock, ['-v', ...vm, '--bwlimit', '16M'])
    assert.equal(r.code, 0, r.last)
    const running = r.seen.flatMap((p) => p.split('\n')).filter((l) => l.startsWith('100 backup: '))
    assert.ok(
      running.some((l) => RUNNING.test(l)),
      `no status line with rate and ETA in: ${running.join('\n')}`,
    )
    // The hole is skipped, not copied: 16 MiB skipped at the end.
    assert.match(
      r.last,
      /^100 backup: 100% 64\.0 MiB of 64\.0 MiB \(16\.0 MiB skipped\), .*done in/m,
    )
    assertLogLinesApart(r.last)
    vmVolume = /^(\S+:backup\/100\/qemu-\S+) /m.exec(r.last)?.[1] ?? ''
    assert.notEqual(vmVolume, '', r.last)
  })

  it('shows a container backup as the bytes of its tree read, with rate and ETA', async () => {
    const ct = backupArgs(store, 200, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root'))
    const r = await inTerminal(sock, ['-v', ...ct, '--bwlimit', '16M'])
    assert.equal(r.code, 0, r.last)
    const running = r.seen.flatMap((p) => p.split('\n')).filter((l) => l.startsWith('200 backup: '))
    assert.ok(
      running.some((l) => RUNNING.test(l)),
      `no status line with rate and ETA in: ${running.join('\n')}`,
    )
    assert.match(r.last, /^200 backup: 100% 48\.\d MiB of 48\.\d MiB, .*done in/m)
    assertLogLinesApart(r.last)
  })

  it('shows a restore with rate and ETA', async () => {
    const target = join(dir, 'restored')
    const r = await inTerminal(sock, [
      '-v',
      'restore',
      vmVolume,
      '--store',
      store,
      '--target',
      target,
      '--bwlimit',
      '16M',
    ])
    assert.equal(r.code, 0, r.last)
    const running = r.seen.flatMap((p) => p.split('\n')).filter((l) => l.startsWith('restore '))
    assert.ok(
      running.some((l) => RUNNING.test(l)),
      `no status line with rate and ETA in: ${running.join('\n')}`,
    )
    assert.match(r.last, /^restore backup\/100\/qemu-\S+: 100% 64\.0 MiB of 64\.0 MiB, .*done in/m)
    assertLogLinesApart(r.last)
  })

  it("writes vzdump's INFO lines on stderr without a terminal", async () => {
    const vm = [
      ...backupArgs(store, 101, join(dir, 'vm.conf')),
      '--disk',
      `scsi0=${join(dir, 'disk.raw')}`,
    ]
    const r = await runCliInProcessOk(vm)
    assert.match(
      r.stderr,
      /^INFO: 100% \(64\.0 MiB of 64\.0 MiB\) in \d+s, read: [\d.]+ \S+\/s, write: [\d.]+ \S+\/s$/m,
    )
    assert.match(r.stderr, /^INFO: backup is sparse: 16\.00 MiB \(25%\) total zero data$/m)
    assert.match(
      r.stderr,
      /^INFO: transferred 64\.00 MiB in (\d+ seconds \([\d.]+ \S+\/s\)|<1 seconds)$/m,
    )
    const none = await runCliInProcessOk([...vm.slice(0, 1), '--no-progress', ...vm.slice(1)])
    assert.doesNotMatch(none.stderr, /INFO:/)
  })

  it('--quiet prints nothing but errors, even with -v', async () => {
    const vm = [
      ...backupArgs(store, 102, join(dir, 'vm.conf')),
      '--disk',
      `scsi0=${join(dir, 'disk.raw')}`,
    ]
    const ok = await runCliInProcessOk(['-v', '--quiet', ...vm])
    assert.equal(ok.stderr, '')
    assert.match(ok.stdout, /^\S+:backup\/102\/qemu-/)
    const bad = await runCliInProcess([
      '-q',
      ...backupArgs(store, 102, join(dir, 'vm.conf')),
      '--disk',
      `scsi0=${join(dir, 'missing.raw')}`,
    ])
    assert.equal(bad.code, 2)
    assert.match(bad.stderr, /^guestbackup: .*missing\.raw.*\n$/)
  })
})
