import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { compareImages, createImage, imageInfo } from '../../src/qemu/img.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

const MiB = 1024 * 1024

// restore of one disk of the newest backup: onto an existing file, or as qcow2.
describe('cli: restore --disk, --target-disk, --format qcow2', () => {
  let dir: string
  let store: string
  let n = 0
  const fresh = (): string => join(dir, `restore-${++n}`)
  const disk = (k: number): string => join(dir, `disk${k}.qcow2`)
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-restore-disk-'))
    store = join(dir, 'store')
    for (const [k, p] of [
      [0, 0xab],
      [1, 0x5a],
    ] as const) {
      await createImage(disk(k), { format: 'qcow2', size: 32 * MiB })
      const at = `${k * 8 + 1}M`
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${p} ${at} 3M`, disk(k)])
    }
    await writeFile(join(dir, 'vm.conf'), 'name: t\n')
    await runCliInProcessOk(['init', store])
    await runCliInProcessOk([
      ...backupArgs(store, 100, join(dir, 'vm.conf')),
      ...['--disk', `scsi0=${disk(0)}`, '--disk', `scsi1=${disk(1)}`],
    ])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('restore backup/100/latest --disk scsi0 --target-disk scsi0=FILE writes that disk only', async () => {
    const file = join(dir, 'existing.img')
    // An existing file with other data: every byte of it is overwritten.
    await writeFile(file, Buffer.alloc(32 * MiB, 0xee))
    const target = fresh()
    const r = await runCliInProcessOk([
      ...['restore', '--store', store, 'backup/100/latest', '--target', target],
      ...['--disk', 'scsi0', '--target-disk', `scsi0=${file}`],
    ])
    assert.ok(await compareImages(file, 'raw', disk(0), 'qcow2'))
    assert.deepEqual(r.stdout.trim().split('\n'), [join(target, 'guest.conf'), file])
    assert.deepEqual(await readdir(target), ['guest.conf'])
  })

  it('--format qcow2 gives qcow2 files equal in content', async () => {
    const target = fresh()
    await runCliInProcessOk([
      ...['restore', '--store', store, 'latest', '--vmid', '100', '--target', target],
      ...['--format', 'qcow2'],
    ])
    for (const k of [0, 1]) {
      const out = join(target, `drive-scsi${k}.qcow2`)
      const info = await imageInfo(out, 'qcow2')
      assert.equal(info.format, 'qcow2')
      assert.equal(info['virtual-size'], 32 * MiB)
      assert.ok(await compareImages(out, 'qcow2', disk(k), 'qcow2'), `scsi${k}`)
      // Zeroes are skipped: the image holds about its 3 MiB of data.
      assert.ok((info['actual-size'] ?? 0) < 8 * MiB, `${info['actual-size']} bytes`)
    }
  })

  it('--bwlimit 10000 limits the restore to 10000 KiB/s', async () => {
    const r = await runCliInProcessOk([
      ...['-v', 'restore', '--store', store, 'backup/100/latest', '--target', fresh()],
      ...['--disk', 'scsi1', '--bwlimit', '10000'],
    ])
    assert.match(r.stderr, /bandwidth limit 10240000 bytes\/s/)
  })

  it('refuses --disk-target (renamed), a disk the backup lacks, and qcow2 onto a target disk', async () => {
    const file = join(dir, 'other.img')
    await writeFile(file, Buffer.alloc(32 * MiB))
    for (const [args, why] of [
      [['--disk-target', `scsi0=${file}`], /now spelled --target-disk/],
      [
        ['--disk', 'scsi9'],
        /the backup has no disk drive-scsi9 \(its disks: drive-scsi0, drive-scsi1\)/,
      ],
      [
        ['--disk', 'scsi1', '--target-disk', `scsi0=${file}`],
        /a target disk for drive-scsi0, which --disk does not restore/,
      ],
      [['--format', 'qcow2', '--target-disk', `scsi0=${file}`], /--format qcow2 makes new files/],
    ] as const) {
      const target = fresh()
      const r = await runCliInProcess([
        ...['restore', '--store', store, 'backup/100/latest', '--target', target, ...args],
      ])
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, why)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    }
  })
})
