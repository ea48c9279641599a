/**
 * Full disks (issue 9, item 6): a store, a restore target or a temp dir that fills up fails the
 * command with one line naming that place, the earlier backups stay listed and restore
 * identical, nothing partial is listed or left, and the next backup succeeds as soon as space
 * returns, with no manual step.
 *
 * Everything full lives on a real 64 MiB ext4 served by fuse2fs (test/helpers/small-fs.ts): the
 * ENOSPC comes from the kernel through qemu-nbd (an NBD error reply), tar's output pipe,
 * mksquashfs, qemu-img convert and tar's extraction.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '../../src/io/spawn.ts'
import { backupArgs, cli, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'
import { writeRandom } from '../helpers/random-data.ts'
import { smallFs } from '../helpers/small-fs.ts'
import type { SmallFs } from '../helpers/small-fs.ts'

const MiB = 1024 * 1024

interface Row {
  volid: string
  vmid: number
}

/** A regular expression matching `s` literally. */
const lit = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

describe('faults: full disks', () => {
  let dir: string
  let fs: SmallFs
  let store: string
  let conf: string
  let disk: string
  let rootfs: string
  /** The backups made before each fault, with what they must restore. */
  let vmBackup: { volid: string; ref: string }
  let ctBackup: { volid: string; tree: string }

  const list = async (vmid: number): Promise<string[]> =>
    (JSON.parse((await runCliInProcessOk(['list', '--store', store, '--json'])).stdout) as Row[])
      .filter((r) => r.vmid === vmid)
      .map((r) => r.volid)

  /** The guest dir holds backups, failed runs' logs and files, but no partial backup. */
  const assertNoPartial = async (vmid: number): Promise<void> => {
    const names = await readdir(join(store, String(vmid)))
    assert.deepEqual(
      names.filter((n) => n.startsWith('.partial-')),
      [],
      names.join(' '),
    )
  }

  const restoreVm = async (volid: string, ref: string): Promise<void> => {
    const target = join(dir, 'restored-vm')
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    const raw = join(target, 'drive-scsi0.raw')
    await run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', raw, ref])
    await rm(target, { recursive: true, force: true })
  }

  const restoreCt = async (volid: string, tree: string): Promise<void> => {
    const target = join(dir, 'restored-ct')
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    await run('diff', ['-r', '--no-dereference', join(target, 'rootfs'), tree])
    await rm(target, { recursive: true, force: true })
  }

  const backupVm = (): string[] => backupArgs(store, 100, conf, '--disk', `scsi0=${disk}`)
  const backupCt = (): string[] => backupArgs(store, 200, conf, '--rootfs', rootfs)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-full-'))
    fs = await smallFs(dir)
    store = join(fs.mnt, 'store')
    await runCliInProcessOk(['init', store, '--id', 'full'])
    conf = join(dir, 'guest.conf')
    await writeFile(conf, 'name: full\n')

    disk = join(dir, 'disk.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M'])
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 8M', disk])
    const ref = join(dir, 'ref.raw')
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, ref])
    const vm = JSON.parse((await runCliInProcessOk([...backupVm(), '--json'])).stdout) as Row
    vmBackup = { volid: vm.volid, ref }

    rootfs = join(dir, 'rootfs')
    await mkdir(join(rootfs, 'etc'), { recursive: true })
    await writeFile(join(rootfs, 'etc', 'hostname'), 'full\n')
    await writeFile(join(rootfs, 'data'), randomBytes(6 * MiB))
    const tree = join(dir, 'tree')
    await run('cp', ['-a', rootfs, tree])
    const ct = JSON.parse((await runCliInProcessOk([...backupCt(), '--json'])).stdout) as Row
    ctBackup = { volid: ct.volid, tree }
  })

  after(async () => {
    await fs.unmount()
    await rm(dir, { recursive: true, force: true })
  })

  it('a VM backup into a store that fills up mid-copy fails with one line naming the store', async () => {
    // 32 MiB to copy, 6 MiB free: qemu-nbd's writes fail with ENOSPC in the middle of the copy.
    await writeRandom(disk, 'qcow2', 8 * MiB, 24 * MiB)
    await sleep(1100) // backup times have a resolution of one second
    await fs.leaveFree(6 * MiB)
    const r = await cli(backupVm())
    assert.equal(r.code, 1, r.stderr)
    const lines = r.stderr.trim().split('\n')
    assert.equal(lines.length, 1, r.stderr)
    assert.match(
      lines[0] ?? '',
      new RegExp(
        `^guestbackup: no space left in the store ${lit(store)} \\(writing 100/qemu-\\S+Z/drive-scsi0\\.qcow2\\) \\(task log: \\S+\\.failed/backup\\.log\\)$`,
      ),
    )
    assert.deepEqual(await list(100), [vmBackup.volid])
    await assertNoPartial(100)
    await restoreVm(vmBackup.volid, vmBackup.ref)
    // The earlier backup is proven intact against its digests (verify writes only its small
    // record: it fits).
    await fs.unfill()
    const v = await runCliInProcessOk(['verify', '--store', store, vmBackup.volid, '--json'])
    assert.deepEqual(
      (JSON.parse(v.stdout) as { state: string }[]).map((x) => x.state),
      ['ok'],
    )

    // The space returns: the next backup succeeds, no manual step.
    await fs.unfill()
    await sleep(1100)
    const ok = JSON.parse((await runCliInProcessOk([...backupVm(), '--json'])).stdout) as Row
    assert.deepEqual(await list(100), [ok.volid, vmBackup.volid])
    const now = join(dir, 'now.raw')
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, now])
    await restoreVm(ok.volid, now)
    await runCliInProcessOk(['remove', '--store', store, ok.volid])
  })

  it('a container backup into a full store fails with one line naming the store (tar, tar.zst, squashfs)', async () => {
    await writeFile(join(rootfs, 'more'), randomBytes(12 * MiB))
    for (const [mode, file, compress] of [
      ['tar', 'archive.tar', 'none'],
      ['tar', 'archive.tar.zst', 'zstd'],
      ['squashfs', 'archive.sqfs', 'none'],
    ] as const) {
      await runCliInProcessOk([
        'init',
        store,
        '--lxc-backup-mode',
        mode,
        '--lxc-compress',
        compress,
      ])
      await sleep(1100)
      await fs.leaveFree(4 * MiB)
      const r = await cli(backupCt())
      assert.equal(r.code, 1, r.stderr)
      const lines = r.stderr.trim().split('\n')
      assert.equal(lines.length, 1, r.stderr)
      assert.match(
        lines[0] ?? '',
        new RegExp(
          `^guestbackup: no space left in the store ${lit(store)} \\(writing 200/lxc-\\S+Z/${lit(file)}\\) \\(task log: \\S+\\)$`,
        ),
        mode,
      )
      assert.deepEqual(await list(200), [ctBackup.volid], mode)
      await assertNoPartial(200)
    }
    await restoreCt(ctBackup.volid, ctBackup.tree)

    await fs.unfill()
    await runCliInProcessOk(['init', store, '--lxc-backup-mode', 'tar'])
    await sleep(1100)
    const ok = JSON.parse((await runCliInProcessOk([...backupCt(), '--json'])).stdout) as Row
    assert.deepEqual(await list(200), [ok.volid, ctBackup.volid])
    await runCliInProcessOk(['remove', '--store', store, ok.volid])
    await rm(join(rootfs, 'more'))
  })

  it('a restore into a full target fails with one line naming it and leaves nothing', async () => {
    for (const [volid, target, file] of [
      [vmBackup.volid, join(fs.mnt, 'restore-vm'), 'drive-scsi0.raw'],
      [ctBackup.volid, join(fs.mnt, 'restore-ct'), 'rootfs/'],
    ] as const) {
      await fs.leaveFree(2 * MiB)
      const r = await runCliInProcess(['restore', '--store', store, volid, '--target', target])
      assert.equal(r.code, 1, r.stderr)
      assert.equal(
        r.stderr.trim(),
        `guestbackup: no space left on the restore target ${target} (writing ${file})`,
      )
      // The target did not exist: it is gone again.
      await assert.rejects(stat(target), { code: 'ENOENT' })
    }
    await fs.unfill()
    await restoreVm(vmBackup.volid, vmBackup.ref)
    await restoreCt(ctBackup.volid, ctBackup.tree)
  })

  it('a full temp dir fails the backup with one line naming it, before the store is touched', async () => {
    const tmp = join(fs.mnt, 'tmp')
    await mkdir(tmp)
    await fs.leaveFree(0)
    const before = await readdir(join(store, '100'))
    const saved = process.env['TMPDIR']
    process.env['TMPDIR'] = tmp
    let r
    try {
      r = await runCliInProcess(backupVm())
    } finally {
      if (saved === undefined) delete process.env['TMPDIR']
      else process.env['TMPDIR'] = saved
    }
    assert.equal(r.code, 1, r.stderr)
    // Full before the job's temp dir was made, or once it was, when its log was written.
    assert.match(
      r.stderr.trim(),
      new RegExp(
        `^guestbackup: no space left in the temp dir ${lit(tmp)}(/\\S+ \\(writing job\\.log\\))?$`,
      ),
    )
    assert.deepEqual(await readdir(join(store, '100')), before)
    await fs.unfill()
    assert.deepEqual(await list(100), [vmBackup.volid])
  })
})
