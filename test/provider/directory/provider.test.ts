import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { BitmapMode, ProviderLogLevel, Region, VmVolume } from '../../../src/api/provider.ts'
import { BITMAP_RECORD } from '../../../src/provider/directory/bitmap-record.ts'
import { openStore, initStore } from '../../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../../src/provider/directory/storage.ts'
import { BackupError } from '../../../src/errors.ts'
import { compareImages, convertImage } from '../../../src/qemu/img.ts'
import { assertNoExportLeft } from '../../helpers/fuse-export.ts'

const MiB = 1024 * 1024
const SIZE = 4 * MiB

/** A disk in memory as the `file-handle` mechanism hands it over, with its dirty regions. */
const memoryVolume = (
  data: Buffer,
  bitmapMode: BitmapMode,
  regions: readonly Region[] = [[0, data.length]],
  failAt?: number,
): VmVolume => {
  const queue = [...regions]
  return {
    size: data.length,
    bitmapMode,
    fileHandle: {
      read: async (position, length, _signal, into) => {
        await Promise.resolve()
        if (failAt !== undefined && position + length > failAt) {
          throw new BackupError('IO', 'the source disk failed')
        }
        const out = into?.subarray(0, length) ?? Buffer.alloc(length)
        data.copy(out, 0, position, position + length)
        return out
      },
    },
    nextDirtyRegion: async () => {
      await Promise.resolve()
      return queue.shift()
    },
  }
}

interface Logged {
  level: ProviderLogLevel
  message: string
}

describe('provider/directory/provider: Proxmox call order', () => {
  let dir: string
  let store: string
  let storage: DirectoryStorage
  let clock = Date.UTC(2026, 0, 1) / 1000
  const signal = new AbortController().signal
  const disk = Buffer.alloc(SIZE)
  disk.fill(1, 0, MiB)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-provider-'))
    store = join(dir, 'store')
    await initStore(store, { 'vm-backup-mode': 'incremental', 'incremental-sample': 0 }, 'st')
    storage = await openStore(store)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const readRecord = async (vmid: number): Promise<unknown> =>
    JSON.parse(await readFile(join(store, String(vmid), BITMAP_RECORD), 'utf8')) as unknown
  const listed = async (vmid: number): Promise<string[]> =>
    (await storage.listVolumes({ vmid })).map((v) => v.volid)

  /** One VM task up to backupVm's return; the caller ends it with backupCleanup. */
  const startVm = async (
    vmid: number,
    volume: (answer: string | undefined) => VmVolume,
  ): Promise<{
    p: ReturnType<DirectoryStorage['newBackupProvider']>
    volid: string
    logs: Logged[]
    answer: string | undefined
    error?: unknown
  }> => {
    const logs: Logged[] = []
    const p = storage.newBackupProvider((level, message) => logs.push({ level, message }))
    await p.jobInit(clock)
    const { archiveName } = await p.backupInit(vmid, 'qemu', (clock += 3600))
    const q = await p.backupVmQueryIncremental(vmid, { 'drive-scsi0': { size: SIZE } })
    const answer = q?.['drive-scsi0']
    try {
      await p.backupVm(vmid, 'name: t\n', { 'drive-scsi0': volume(answer) }, { signal })
    } catch (error) {
      return { p, volid: `st:backup/${archiveName}`, logs, answer, error }
    }
    return { p, volid: `st:backup/${archiveName}`, logs, answer }
  }
  const endTask = async (
    p: ReturnType<DirectoryStorage['newBackupProvider']>,
    vmid: number,
    success: boolean,
  ): Promise<unknown> => {
    const r = await p.backupCleanup(vmid, 'qemu', success, success ? {} : { error: 'failed' })
    const log = join(dir, 'task.log')
    await writeFile(log, 'INFO: task\n')
    await p.backupHandleLogFile(vmid, log)
    await p.jobCleanup()
    return r
  }

  it('lists the VM backup when backupVm returns, before backupCleanup', async () => {
    const t = await startVm(100, () => memoryVolume(disk, 'none'))
    assert.equal(t.error, undefined)
    assert.deepEqual(await listed(100), [t.volid])
    // What vzdump does next: notes and protection by volume id, then prune.
    const volname = t.volid.slice('st:'.length)
    await storage.updateVolumeAttribute(volname, 'notes', 'nightly')
    await storage.updateVolumeAttribute(volname, 'protected', true)
    const r = (await endTask(t.p, 100, true)) as { stats: { archiveSize: number } }
    assert.ok(r.stats.archiveSize > 0 && r.stats.archiveSize < SIZE, String(r.stats.archiveSize))
    assert.equal(await storage.getVolumeAttribute(volname, 'notes'), 'nightly')
  })

  it('lists the container backup when backupContainer returns', async () => {
    const root = join(dir, 'ct-root')
    await mkdir(join(root, 'etc'), { recursive: true })
    await writeFile(join(root, 'etc', 'hostname'), 'ct\n')
    const p = storage.newBackupProvider(() => undefined)
    await p.jobInit(clock)
    const { archiveName } = await p.backupInit(200, 'lxc', (clock += 3600))
    const info = { directory: root, sources: ['.'], backupUserId: 0, signal }
    await p.backupContainerPrepare(200, info)
    await p.backupContainer(200, 'arch: amd64\n', [], info)
    assert.deepEqual(await listed(200), [`st:backup/${archiveName}`])
    await endTask(p, 200, true)
  })

  it('an unprivileged container: written in place, listed with its manifest, taken back by backupCleanup', async () => {
    const root = join(dir, 'ct-root-u')
    await mkdir(join(root, 'etc'), { recursive: true })
    await writeFile(join(root, 'etc', 'hostname'), 'ct\n')
    const p = storage.newBackupProvider(() => undefined)
    await p.jobInit(clock)
    const { archiveName } = await p.backupInit(201, 'lxc', (clock += 3600))
    const info = { directory: root, sources: ['.'], backupUserId: 100000, signal }
    await p.backupContainerPrepare(201, info)
    const bdir = join(store, archiveName)
    assert.equal((await lstat(bdir)).uid, 100000)
    assert.deepEqual(await listed(201), [], 'no manifest yet: not listed')
    await p.backupContainer(201, 'arch: amd64\n', [], info)
    assert.deepEqual(await listed(201), [`st:backup/${archiveName}`])
    await endTask(p, 201, true)
    assert.equal((await lstat(bdir)).uid, 0)
    assert.equal((await lstat(join(bdir, 'archive.tar.zst'))).mode & 0o7777, 0o600)

    // A killed in-place run leaves a final-named dir without manifest: the next backupInit removes it.
    const q = storage.newBackupProvider(() => undefined)
    await q.jobInit(clock)
    const killed = await q.backupInit(201, 'lxc', (clock += 3600))
    await q.backupContainerPrepare(201, info)
    await q.suspend()
    const r = storage.newBackupProvider(() => undefined)
    await r.backupInit(201, 'lxc', (clock += 3600))
    await assert.rejects(lstat(join(store, killed.archiveName)), { code: 'ENOENT' })
    await lstat(bdir)
    await r.backupCleanup(201, 'lxc', false, {})
    await r.jobCleanup()
  })

  it('never lists a backup whose data failed; backupCleanup(false) removes the partial dir', async () => {
    const t = await startVm(101, () => memoryVolume(disk, 'none', undefined, 2 * MiB))
    assert.ok(t.error instanceof BackupError, String(t.error))
    assert.deepEqual(await listed(101), [])
    assert.ok((await readdir(join(store, '101'))).some((n) => n.startsWith('.partial-')))
    await endTask(t.p, 101, false)
    assert.ok(!(await readdir(join(store, '101'))).some((n) => n.startsWith('.partial-')))
    assert.deepEqual(await listed(101), [])
  })

  it('removes a committed backup when the task fails afterwards (prune failed)', async () => {
    const t = await startVm(102, () => memoryVolume(disk, 'none'))
    const volname = t.volid.slice('st:'.length)
    await storage.updateVolumeAttribute(volname, 'protected', true)
    await storage.updateVolumeAttribute(volname, 'notes', 'n')
    await endTask(t.p, 102, false)
    assert.deepEqual(await listed(102), [])
    const left = await readdir(join(store, '102'))
    // Only the failed run's log, the lock and the bitmap record remain.
    assert.deepEqual(
      left.filter((n) => !['.lock', BITMAP_RECORD].includes(n)),
      [`${volname.split('/')[2] ?? ''}.failed`],
    )
    assert.deepEqual(await storage.listFailed({ vmid: 102 }).then((f) => f.length), 1)
  })

  it('a: answers use on the bitmap record of the newest backup and builds on it', async () => {
    const full = await startVm(110, (a) => {
      assert.equal(a, 'new')
      return memoryVolume(disk, 'new')
    })
    await endTask(full.p, 110, true)
    const changed = Buffer.from(disk)
    changed.fill(9, 3 * MiB, 3 * MiB + 4096)
    const inc = await startVm(110, (a) => {
      assert.equal(a, 'use')
      return memoryVolume(changed, 'reuse', [[3 * MiB, 4096]])
    })
    assert.equal(inc.error, undefined)
    await endTask(inc.p, 110, true)
    const vols = await storage.listVolumes({ vmid: 110 })
    assert.equal(vols[0]?.volid, inc.volid)
    assert.equal(vols[0].parent, full.volid)
  })

  it('b: after backupVm returned and backupCleanup(false), the next query says new and names the discarded backup', async () => {
    const full = await startVm(120, () => memoryVolume(disk, 'new'))
    await endTask(full.p, 120, true)
    const failed = await startVm(120, (a) => {
      assert.equal(a, 'use')
      return memoryVolume(disk, 'reuse', [])
    })
    assert.equal(failed.error, undefined)
    await endTask(failed.p, 120, false)
    assert.deepEqual(await listed(120), [full.volid])
    const discarded = failed.volid.slice('st:'.length)
    assert.deepEqual(await readRecord(120), { version: 1, devices: {}, removed: discarded })
    const next = await startVm(120, (a) => {
      assert.equal(a, 'new')
      return memoryVolume(disk, 'new')
    })
    assert.ok(
      next.logs.some((l) => l.message.includes('full backup') && l.message.includes(discarded)),
      JSON.stringify(next.logs),
    )
    await endTask(next.p, 120, true)
  })

  it('b: a prune of the newest backup drops its record too', async () => {
    const full = await startVm(121, () => memoryVolume(disk, 'new'))
    await endTask(full.p, 121, true)
    const inc = await startVm(121, () => memoryVolume(disk, 'reuse', []))
    await endTask(inc.p, 121, true)
    await storage.freeImage(inc.volid.slice('st:'.length))
    assert.deepEqual(await readRecord(121), {
      version: 1,
      devices: {},
      removed: inc.volid.slice(3),
    })
    const next = await startVm(121, (a) => {
      assert.equal(a, 'new')
      return memoryVolume(disk, 'new')
    })
    await endTask(next.p, 121, true)
  })

  it('c: a garbled, forged or planted record means new, without touching anything outside', async () => {
    const full = await startVm(130, () => memoryVolume(disk, 'new'))
    await endTask(full.p, 130, true)
    const volname = full.volid.slice('st:'.length)
    const record = join(store, '130', BITMAP_RECORD)
    const outside = join(dir, 'outside.json')
    const good = JSON.stringify({
      version: 1,
      devices: { 'drive-scsi0': { volname, size: SIZE } },
    })
    await writeFile(outside, good)
    const before = await lstat(outside)
    const cases: (() => Promise<void>)[] = [
      () => writeFile(record, '{"version":1,"devices":{"drive-scsi0":'),
      () => writeFile(record, JSON.stringify({ version: 2, devices: {} })),
      () =>
        writeFile(
          record,
          JSON.stringify({
            version: 1,
            devices: { 'drive-scsi0': { volname: '../../etc/passwd', size: SIZE } },
          }),
        ),
      () =>
        writeFile(
          record,
          JSON.stringify({ version: 1, devices: { 'drive-scsi0': { volname, size: SIZE + 1 } } }),
        ),
      () => writeFile(record, JSON.stringify({ ...JSON.parse(good), extra: 1 })),
      () => writeFile(record, ' '.repeat(128 * 1024)),
      async () => {
        // A link to a valid record outside the store is not followed.
        await symlink(outside, record)
      },
    ]
    for (const plant of cases) {
      await rm(record, { force: true })
      await plant()
      const t = await startVm(130, (a) => {
        assert.equal(a, 'new', String(plant))
        return memoryVolume(disk, 'new')
      })
      assert.equal(t.error, undefined)
      assert.ok(t.logs.some((l) => l.message.includes('full backup')))
      await endTask(t.p, 130, false)
    }
    assert.equal(await readFile(outside, 'utf8'), good)
    assert.equal((await lstat(outside)).mtimeMs, before.mtimeMs)
  })

  it('restores a disk of a 2-level chain from a regular file, and leaves nothing running', async () => {
    const full = await startVm(140, () => memoryVolume(disk, 'new'))
    await endTask(full.p, 140, true)
    const changed = Buffer.from(disk)
    changed.fill(5, MiB - 4096, MiB + 8192)
    const inc = await startVm(140, (a) => {
      assert.equal(a, 'use')
      return memoryVolume(changed, 'reuse', [[MiB - 4096, 12288]])
    })
    await endTask(inc.p, 140, true)
    const volname = inc.volid.slice('st:'.length)
    assert.equal((await storage.volumeSizeInfo(volname)).parent, full.volid)
    const expected = join(dir, 'expected.raw')
    await writeFile(expected, changed)

    const r = storage.newBackupProvider(() => undefined)
    assert.deepEqual(await r.restoreVmInit(volname, { signal }), {
      'drive-scsi0': { size: SIZE },
    })
    const { qemuImgPath } = await r.restoreVmVolumeInit(volname, 'drive-scsi0', { signal })
    try {
      // What qemu-server checks first: a regular file of the disk's size.
      const st = await lstat(qemuImgPath)
      assert.ok(st.isFile(), qemuImgPath)
      assert.equal(st.size, SIZE)
      const out = join(dir, 'restored.raw')
      await convertImage(qemuImgPath, out, { sourceFormat: 'raw', targetFormat: 'raw' })
      assert.ok(await compareImages(out, 'raw', expected, 'raw'))
    } finally {
      await r.restoreVmVolumeCleanup(volname, 'drive-scsi0')
      await r.restoreVmCleanup(volname)
    }
    await assertNoExportLeft()
    // restoreVmCleanup alone (a volume cleanup that never ran) stops the export too.
    await r.restoreVmVolumeInit(volname, 'drive-scsi0', { signal })
    await r.restoreVmCleanup(volname)
    await assertNoExportLeft()
  })
})
