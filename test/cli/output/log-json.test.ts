import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createImage } from '../../../src/qemu/img.ts'
import { run } from '../../../src/io/spawn.ts'
import { run as runCli } from '../../../src/cli/run.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../../helpers/cli.ts'

interface Line {
  level: string
  time: string
  msg: string
  vmid?: number
  volid?: string
  mode?: string
  stored?: number
  bytes?: number
  merges?: number
  code?: string
  device?: string
  volname?: string
}

/** Every stderr line, each parsed as JSON (the assertion names the line that is not). */
const lines = (stderr: string): Line[] =>
  stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Line
      } catch {
        assert.fail(`a stderr line that is not JSON: ${l}`)
      }
    })

const PROXMOX_LEVELS = new Set(['info', 'warn', 'err', 'debug'])

describe('cli --log-json: every stderr line is JSON, with structured fields', () => {
  let dir: string
  let store: string
  const vols: string[] = []
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-logjson-'))
    store = join(dir, 'store')
    await writeFile(join(dir, 'vm.conf'), 'name: lj\n')
    await createImage(join(dir, 'disk.qcow2'), { format: 'qcow2', size: 8 * 1024 * 1024 })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x01 0 1M', join(dir, 'disk.qcow2')])
    const init = ['init', store, '--vm-compress', 'none', '--vm-backup-mode', 'incremental']
    await runCliInProcessOk(init)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it("backup -v: Proxmox's level words, ISO times, vmid and volid as fields", async () => {
    for (let i = 0; i < 2; i++) {
      const args = backupArgs(store, 100, join(dir, 'vm.conf'))
      args.push('--disk', `scsi0=${join(dir, 'disk.qcow2')}`)
      const r = await runCliInProcessOk(['--log-json', '-v', ...args, '--json'])
      const all = lines(r.stderr)
      assert.ok(all.length > 3)
      for (const l of all) {
        assert.ok(PROXMOX_LEVELS.has(l.level), `level ${l.level}`)
        assert.match(l.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
      }
      const volid = (JSON.parse(r.stdout) as { volid: string }).volid
      vols.push(volid)
      assert.ok(all.some((l) => l.vmid === 100 && l.volid === volid))
      const done = all.find((l) => l.msg === 'backup of 100 done')
      assert.equal(done?.volid, volid)
      assert.equal(done.mode, i === 0 ? 'full' : 'incremental')
      assert.equal(typeof done.stored, 'number')
      if (i === 0) {
        const full = all.find((l) => l.msg.startsWith('drive-scsi0: full backup ('))
        assert.equal(full?.device, 'drive-scsi0', "the provider's line carries its device")
      }
    }
  })

  it('draws no progress: no INFO lines without a terminal, no status line on one', async () => {
    const args = [...backupArgs(store, 110, join(dir, 'vm.conf'))]
    args.push('--disk', `scsi0=${join(dir, 'disk.qcow2')}`)
    // Without --log-json the same run writes vzdump's INFO lines (test/cli/progress).
    assert.match((await runCliInProcessOk(args)).stderr, /^INFO: transferred /m)
    const plain = await runCliInProcessOk(['--log-json', ...args])
    assert.ok(lines(plain.stderr).every((l) => !l.msg.startsWith('INFO:')))
    assert.doesNotMatch(plain.stderr, /INFO: /)
    // A terminal: the status line would be drawn with \r and erase sequences.
    let text = ''
    const tty = { isTTY: true, columns: 100, write: (t: string) => (text += t) }
    const out = { write: () => true }
    const code = await runCli(['--log-json', '-v', ...args], {
      stdout: out,
      stderr: tty,
      signal: new AbortController().signal,
    })
    assert.equal(code, 0, text)
    assert.ok(!text.includes('\r') && !text.includes('\u001b'), 'no terminal control')
    assert.doesNotMatch(text, /110 backup: /)
    assert.ok(lines(text).length > 3, 'the -v lines are there, each JSON')
  })

  it('remove -v: the volid and the bytes freed as fields', async () => {
    const r = await runCliInProcessOk([
      'remove',
      '--store',
      store,
      vols[0] ?? '',
      '-v',
      '--log-json',
    ])
    const removed = lines(r.stderr).find((l) => l.msg === `removed ${vols[0] ?? ''}`)
    assert.equal(removed?.level, 'info')
    assert.ok(typeof removed.bytes === 'number' && removed.bytes > 0)
    assert.equal(removed.merges, 1, 'the removed full backup was merged into the incremental')
  })

  it("verify -v: the store's lines carry the volume", async () => {
    const r = await runCliInProcessOk(['verify', '--store', store, '-v', '--log-json'])
    const volname = vols[1]?.slice(vols[1].indexOf(':') + 1)
    const line = lines(r.stderr).find((l) => l.msg === `verifying ${volname ?? ''}`)
    assert.equal(line?.volname, volname)
  })

  it('the final error is a JSON line too: level err, its code, nothing on stdout', async () => {
    const r = await runCliInProcess([
      '--log-json',
      'restore',
      '--store',
      store,
      'backup/100/qemu-2020-01-01T00:00:00Z',
      '--target',
      join(dir, 't'),
      '--output-format',
      'json',
    ])
    assert.equal(r.code, 1)
    assert.equal(r.stdout, '')
    const [last, ...more] = lines(r.stderr).reverse()
    assert.equal(more.length, 0)
    assert.equal(last?.level, 'err')
    assert.equal(last.code, 'NOT_FOUND')
    assert.match(last.msg, /does not exist/)
  })

  it('a usage error is a JSON line, wherever --log-json stands', async () => {
    for (const argv of [
      ['--log-json', 'list'],
      ['list', '--log-json'],
      ['list', '--no-such-option', '--log-json'],
    ]) {
      const r = await runCliInProcess(argv)
      assert.equal(r.code, 2)
      const [l] = lines(r.stderr)
      assert.equal(l?.level, 'err', argv.join(' '))
      assert.equal(l.code, 'USAGE')
    }
  })

  it('without --log-json the error line stays text', async () => {
    const r = await runCliInProcess(['list', '--store', join(dir, 'nothing')])
    assert.match(r.stderr, /^guestbackup: /)
  })
})
