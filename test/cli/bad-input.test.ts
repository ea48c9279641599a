import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { backupArgs, cli, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'
import type { CliResult } from '../helpers/cli.ts'
import { writeRandom } from '../helpers/random-data.ts'

const oneLine = (r: CliResult): void => {
  const lines = r.stderr.trim().split('\n')
  assert.ok(lines.length >= 1 && lines.length <= 3, `stderr: ${r.stderr}`)
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
}

// Bad input gets one clear line, a non-zero exit, nothing partial in list, nothing older
// touched. The CLI runs in-process (run()), except where a process is the point.
describe('cli: bad input', () => {
  let dir: string
  let store: string
  let good: string
  let before1: string
  const conf = (): string => join(dir, 'vm.conf')
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-bad-'))
    store = join(dir, 'store')
    await runCliInProcessOk(['init', store])
    await writeFile(conf(), 'name: t\n')
    good = join(dir, 'good.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', good, '64M'])
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 0 8M', good])
    await runCliInProcessOk(backupArgs(store, 100, conf(), '--disk', `scsi0=${good}`))
    before1 = (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  const unchanged = async (): Promise<void> => {
    assert.equal((await runCliInProcessOk(['list', '--store', store, '--json'])).stdout, before1)
    const entries = await readdir(join(store, '100'))
    assert.deepEqual(
      entries.filter((e) => e.startsWith('.partial')),
      [],
    )
  }

  const usage: [string, string[], RegExp][] = [
    ['an unknown option', ['list', '--store', 'X', '--bogus'], /unknown option/],
    ['an unknown command', ['frobnicate'], /unknown command/],
    // commander's suggestion joins the error's line: one line, whatever it adds.
    [
      'a misspelt option',
      ['prune', '--store', 'X', '--keep-lats', '3'],
      /^error: unknown option '--keep-lats' \(Did you mean --keep-last\?\) \(see --help\)\n$/,
    ],
    ['a bad vmid', ['list', '--store', 'X', '--vmid', '12a'], /guest id/],
    ['a bad disk spec', backupArgs('X', 1, 'c', '--disk', 'oops'), /NAME=PATH/],
    ['a bad choice', ['init', 'X', '--vm-backup-mode', 'sometimes'], /Allowed choices/],
    ['a bad prune spec', ['init', 'X', '--prune-backups', 'keep-lots=3'], /keep-lots|prune/],
    [
      "another store's volume id",
      ['remove', '--store', 'X', 'elsewhere:backup/100/qemu-2026-01-01T00:00:00Z'],
      /belongs to store 'elsewhere', not to/,
    ],
    [
      'a disk format guestbackup does not read',
      backupArgs('X', 1, 'c', '--disk', 'scsi0=/x,format=iso'),
      /unknown disk format 'iso'/,
    ],
  ]
  for (const [what, args, re] of usage) {
    it(`exits 2 on ${what}`, async () => {
      const r = await runCliInProcess(args.map((a) => (a === 'X' ? store : a)))
      assert.equal(r.code, 2)
      assert.match(r.stderr, re)
    })
  }

  it('refuses a store that was not initialised (exit 2)', async () => {
    await mkdir(join(dir, 'empty'))
    const r = await runCliInProcess(['list', '--store', join(dir, 'empty')])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /not a guestbackup store.*init/)
    oneLine(r)
  })

  it('refuses a missing config file', async () => {
    const r = await runCliInProcess(
      backupArgs(store, 100, join(dir, 'nope'), '--disk', `scsi0=${good}`),
    )
    assert.equal(r.code, 2)
    assert.match(r.stderr, /cannot read guest config/)
    oneLine(r)
    await unchanged()
  })

  it('refuses a missing disk', async () => {
    const r = await runCliInProcess(
      backupArgs(store, 100, conf(), '--disk', `scsi0=${join(dir, 'missing.qcow2')}`),
    )
    assert.equal(r.code, 2)
    assert.match(r.stderr, /cannot access/)
    oneLine(r)
    await unchanged()
  })

  it('refuses a .qcow2 disk that is not an image', async () => {
    const fake = join(dir, 'fake.qcow2')
    await writeFile(fake, 'just text\n')
    const r = await runCliInProcess(backupArgs(store, 100, conf(), '--disk', `scsi0=${fake}`))
    assert.equal(r.code, 2)
    assert.match(r.stderr, /not a qcow2 image/)
    oneLine(r)
    await unchanged()
  })

  it('refuses a raw disk whose size is no multiple of 512 bytes', async () => {
    const r = await runCliInProcess(backupArgs(store, 100, conf(), '--disk', `scsi0=${conf()}`))
    assert.equal(r.code, 2)
    assert.match(r.stderr, /not a disk image/)
    oneLine(r)
    await unchanged()
  })

  it('refuses a directory as disk', async () => {
    const r = await runCliInProcess(backupArgs(store, 100, conf(), '--disk', `scsi0=${dir}`))
    assert.equal(r.code, 2)
    assert.match(r.stderr, /not a file or block device/)
    await unchanged()
  })

  it('refuses both --disk and --rootfs', async () => {
    const r = await runCliInProcess(
      backupArgs(store, 100, conf(), '--disk', `scsi0=${good}`, '--rootfs', dir),
    )
    assert.equal(r.code, 2)
    oneLine(r)
  })

  for (const bad of [
    'backup/../100/qemu-2026-01-01T00:00:00Z',
    '/etc/passwd',
    'backup/100/qemu-2026-01-01T00:00:00Z;ls',
    '../../x',
  ]) {
    it(`refuses the volume name ${JSON.stringify(bad)}`, async () => {
      const r = await runCliInProcess([
        'restore',
        '--store',
        store,
        bad,
        '--target',
        join(dir, 'never'),
      ])
      assert.equal(r.code, 2)
      assert.match(r.stderr, /invalid volume name/)
      oneLine(r)
    })
  }

  it('says when a volume does not exist (exit 1)', async () => {
    const r = await runCliInProcess([
      'show-config',
      '--store',
      store,
      'backup/100/qemu-2001-01-01T00:00:00Z',
    ])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /does not exist/)
    oneLine(r)
  })

  it('refuses to restore into a non-empty target', async () => {
    const vol = (JSON.parse(before1) as { volid: string }[])[0]?.volid ?? ''
    const target = join(dir, 'busy')
    await mkdir(target)
    await writeFile(join(target, 'keep.txt'), 'precious')
    const r = await runCliInProcess(['restore', '--store', store, vol, '--target', target])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /not empty/)
    assert.deepEqual(await readdir(target), ['keep.txt'])
  })

  it('fails cleanly when the store runs out of space', async () => {
    const big = join(dir, 'big.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', big, '256M'])
    await writeRandom(big, 'qcow2', 0, 64 * 1024 * 1024)
    // RLIMIT_FSIZE makes every write past 16 MiB fail with EFBIG, as a full file system would.
    // A resource limit applies to a process: this one runs bin/guestbackup under prlimit.
    const r = await cli(backupArgs(store, 100, conf(), '--disk', `scsi0=${big}`), [
      'prlimit',
      `--fsize=${16 * 1024 * 1024}`,
      '--',
    ])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /guestbackup: /)
    await unchanged()
  })
})
