import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../../src/errors.ts'
import { initStore, openStore } from '../../../src/provider/directory/store.ts'
import { StoreLayout, parseVolname } from '../../../src/provider/directory/layout.ts'
import { DirectoryStorage } from '../../../src/provider/directory/storage.ts'
import { parseStoreOptions } from '../../../src/provider/directory/options.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'

const MiB = 1024 * 1024

describe('provider/directory/storage: the storage-plugin side', () => {
  let dir: string
  let store: string
  const vols: string[] = []
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-storage-'))
    store = join(dir, 'store')
    await initStore(store, { 'max-protected-backups': 1 }, 'st')
    const disk = join(dir, 'd.raw')
    // 1 MiB of random data (incompressible: stores compress VM images by default), 3 of zeroes.
    const data = Buffer.alloc(4 * MiB)
    data.set(randomBytes(MiB), 0)
    await writeFile(disk, data)
    await writeFile(join(dir, 'c'), 'name: s\n')
    for (const vmid of ['100', '100', '101']) {
      const r = await runCliInProcessOk(
        backupArgs(store, vmid, join(dir, 'c'), '--disk', `scsi0=${disk}`, '--json'),
      )
      vols.push((JSON.parse(r.stdout) as { volid: string }).volid.slice('st:'.length))
    }
    await runCliInProcessOk(
      backupArgs(store, 100, join(dir, 'c'), '--rootfs', dir, '--exclude-path', '/store'),
    )
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('lists by guest and type, newest first, with volume ids of the store', async () => {
    const s = await openStore(store)
    const all = await s.listVolumes()
    assert.equal(all.length, 4)
    const vm100 = await s.listVolumes({ vmid: 100, subtype: 'qemu' })
    assert.equal(vm100.length, 2)
    assert.ok((vm100[0]?.ctime ?? 0) >= (vm100[1]?.ctime ?? 0))
    assert.ok(vm100.every((v) => v.volid.startsWith('st:backup/100/qemu-')))
    assert.equal((await s.listVolumes({ vmid: 100, subtype: 'lxc' })).length, 1)
  })

  it('reports size, usage, format and time of a backup', async () => {
    const s = await openStore(store)
    const volname = vols[0] ?? ''
    const info = await s.volumeSizeInfo(volname)
    assert.equal(info.format, 'directory')
    assert.ok(info.size >= 4 * MiB, `size ${info.size}`)
    assert.ok(info.used > MiB && info.used < 4 * MiB, `used ${info.used}`)
    assert.equal(info.ctime, parseVolname(volname).ctime)
    assert.equal(info.parent, undefined)
    assert.deepEqual(s.parseVolname(volname), {
      vtype: 'backup',
      name: volname.slice('backup/'.length),
      vmid: 100,
      subtype: 'qemu',
    })
    assert.equal(s.path(volname).vmid, 100)
  })

  it('honours max-protected-backups per guest and type', async () => {
    const s = await openStore(store)
    await s.updateVolumeAttribute(vols[0] ?? '', 'protected', true)
    await assert.rejects(s.updateVolumeAttribute(vols[1] ?? '', 'protected', true), (e: unknown) =>
      isBackupError(e, 'PROTECTED'),
    )
    // Another guest has its own budget.
    await s.updateVolumeAttribute(vols[2] ?? '', 'protected', true)
    assert.equal(await s.getVolumeAttribute(vols[0] ?? '', 'protected'), true)
    await assert.rejects(s.freeImage(vols[0] ?? ''), (e: unknown) => isBackupError(e, 'PROTECTED'))
    const plan = await s.pruneBackups({ keep: { 'keep-last': 1 }, dryRun: true, vmid: 100 })
    assert.deepEqual(
      plan.filter((p) => p.type === 'qemu').map((p) => p.mark),
      ['keep', 'protected'],
    )
  })

  it('keeps notes, first line in the listing', async () => {
    const s = await openStore(store)
    await s.updateVolumeAttribute(vols[1] ?? '', 'notes', 'line one\nline two')
    assert.equal(await s.getVolumeAttribute(vols[1] ?? '', 'notes'), 'line one\nline two')
    const v = (await s.listVolumes({ vmid: 100 })).find((x) => x.volid === `st:${vols[1] ?? ''}`)
    assert.equal(v?.notes, 'line one')
    await s.updateVolumeAttribute(vols[1] ?? '', 'notes', '')
    assert.equal(await s.getVolumeAttribute(vols[1] ?? '', 'notes'), undefined)
  })

  it('frees a backup and says NOT_FOUND afterwards', async () => {
    const s = await openStore(store)
    await s.freeImage(vols[1] ?? '')
    await assert.rejects(s.volumeSizeInfo(vols[1] ?? ''), (e: unknown) =>
      isBackupError(e, 'NOT_FOUND'),
    )
    await assert.rejects(s.freeImage(vols[1] ?? ''), (e: unknown) => isBackupError(e, 'NOT_FOUND'))
  })

  it('refuses to activate a store whose directory is gone', async () => {
    const gone = new DirectoryStorage(
      new StoreLayout(join(dir, 'nope')),
      parseStoreOptions({ path: join(dir, 'nope') }),
    )
    await assert.rejects(gone.activateStorage(), (e: unknown) => isBackupError(e, 'STORE_INVALID'))
    await (await openStore(store)).activateStorage()
  })
})
