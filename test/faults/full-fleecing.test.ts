/**
 * Full disks (issue 9, item 6), live VMs: the fleecing dir. QEMU 7.2's backup job fails the
 * GUEST's write when its overlay cannot grow (its copy-before-write filter is always
 * `on-cbw-error: break-guest-write`), so every overlay reserves its worst case before the
 * instant (src/host/live/fleece.ts). A fleecing dir without that room refuses the backup with
 * one line naming it and leaves the VM as it was; with room, the overlay holds its worst case
 * from the instant on, so a fleecing dir filled by others meanwhile cannot fail a guest write.
 *
 * The fleecing dir is on a real 64 MiB ext4 served by fuse2fs (test/helpers/small-fs.ts); the
 * VM is a real, paused QEMU whose guest writes go through HMP qemu-io on the disk's
 * BlockBackend, so they pass the copy-before-write filter as a guest's would.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initStore, openStore } from '../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { overlayWorstCase } from '../../src/host/live/fleece.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { createImage } from '../../src/qemu/img.ts'
import { runCliInProcess } from '../helpers/cli.ts'
import { liveBackup, restoreMatches } from '../helpers/live.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'
import { smallFs } from '../helpers/small-fs.ts'
import type { SmallFs } from '../helpers/small-fs.ts'

const MiB = 1024 * 1024
const DISK_SIZE = 32 * MiB

describe('faults: a full fleecing dir', () => {
  let dir: string
  let fs: SmallFs
  let fleece: string
  let storePath: string
  let storage: DirectoryStorage
  let vm: TestVm
  let conf: string

  /** Our objects in the VM: fleecing nodes and jobs, exports. */
  const ourObjects = async (): Promise<string[]> => {
    await using qmp = await QmpClient.connect(vm.qmpPath)
    const nodes = await qmp.execute('query-named-block-nodes', { flat: true })
    const jobs = await qmp.execute('query-block-jobs')
    const exports = await qmp.execute('query-block-exports')
    return [
      ...nodes.map((n) => n['node-name'] ?? '').filter((n) => n.startsWith('gb-')),
      ...jobs.map((j) => j.device),
      ...exports.map((x) => x.id),
    ]
  }

  /** What is in the fleecing dir besides the test's filler. */
  const leftovers = async (): Promise<string[]> =>
    (await readdir(fleece)).filter((n) => n !== 'filler' && n !== 'lost+found')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-full-fleece-'))
    fs = await smallFs(dir)
    fleece = fs.mnt
    await mkdir(join(dir, 'vm'))
    const disk = join(dir, 'disk.qcow2')
    await createImage(disk, { format: 'qcow2', size: DISK_SIZE })
    conf = join(dir, 'guest.conf')
    await writeFile(conf, 'name: fleece\n')
    storePath = join(dir, 'store')
    await initStore(storePath, {}, 'fleece')
    storage = await openStore(storePath)
    vm = await startVm({
      disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }],
      dir: join(dir, 'vm'),
    })
    await vm.guestWrite('scsi0', 'write -P 0x11 0 24M')
  })

  after(async () => {
    await vm.stop()
    await fs.unmount()
    await rm(dir, { recursive: true, force: true })
  })

  it('refuses before the instant with one line naming the fleecing dir when the overlay cannot be reserved', async () => {
    const need = overlayWorstCase(DISK_SIZE)
    await fs.leaveFree(need - 4 * MiB)
    const r = await runCliInProcess([
      ...['backup', '--store', storePath, '--vmid', '500', '--config', conf],
      ...['--qmp', vm.qmpPath, '--fleecing-dir', fleece],
    ])
    assert.equal(r.code, 1, r.stderr)
    const lines = r.stderr.trim().split('\n')
    assert.equal(lines.length, 1, r.stderr)
    assert.match(
      lines[0] ?? '',
      new RegExp(
        `^guestbackup: no space left in the fleecing dir ${fleece} \\(reserving ${need} bytes for drive-scsi0's overlay\\) \\(task log: \\S+\\)$`,
      ),
    )
    // Nothing of the backup is left: in the VM, in the fleecing dir, in the store's list.
    assert.deepEqual(await ourObjects(), [])
    assert.deepEqual(await leftovers(), [])
    assert.deepEqual(await storage.listVolumes({ vmid: 500 }), [])
    // The guest still writes.
    await vm.guestWrite('scsi0', 'write -P 0x22 0 1M')
  })

  // fuse2fs refuses every write for which it has too few free blocks, even into blocks a file
  // already holds, so "the fleecing dir fills up after the reservation" cannot be staged here
  // (on ext4, xfs and tmpfs, writes into fallocated blocks need no free space). What is
  // checked: the worst case is held by the overlay from the instant on, and the guest's writes
  // and the backup go through.
  it('reserves the worst case for the overlay at the instant; the guest writes and the backup succeed', async () => {
    await fs.unfill()
    const need = overlayWorstCase(DISK_SIZE)
    const free = await fs.freeBytes()
    const { res, refs } = await liveBackup({
      storage,
      vmid: 500,
      qmp: vm.qmpPath,
      devices: ['drive-scsi0'],
      refDir: dir,
      tag: 'full',
      fleeceDir: fleece,
      during: async () => {
        const [sub] = await leftovers()
        const overlay = join(fleece, sub ?? '', 'drive-scsi0.qcow2')
        assert.ok((await stat(overlay)).blocks * 512 >= need, 'the overlay holds its worst case')
        assert.ok(free - (await fs.freeBytes()) >= need)
        await vm.guestWrite('scsi0', 'write -P 0x33 0 16M')
      },
    })
    assert.equal(res.status, 'ok')
    await restoreMatches(storage, res.volid ?? '', join(dir, 'restored'), refs)
    await vm.guestIo('scsi0', 'read -P 0x33 0 16M')
    assert.deepEqual(await ourObjects(), [])
    assert.deepEqual(await leftovers(), [])
    assert.ok((await fs.freeBytes()) >= free - 64 * 1024, 'the reservation is given back')
  })
})
