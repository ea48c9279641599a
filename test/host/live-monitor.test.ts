import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initStore, openStore } from '../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { createImage } from '../../src/qemu/img.ts'
import { liveJob } from '../helpers/live.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'

const MiB = 1024 * 1024

// A QMP monitor serves one client at a time; on a Proxmox node pvestatd and qm poll it. While
// the disks are copied the backup must not hold it (issue: "the running VM's QMP socket is held
// for the whole backup").
describe('host/live: the QMP monitor is free while the disks are copied', () => {
  let dir: string
  let vm: TestVm
  let storage: DirectoryStorage
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-monitor-'))
    const disk = join(dir, 'd.qcow2')
    await createImage(disk, { format: 'qcow2', size: 16 * MiB })
    vm = await startVm({ dir, disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }] })
    await initStore(join(dir, 'store'), {})
    storage = await openStore(join(dir, 'store'))
  })
  after(async () => {
    await vm.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('lets another client connect and query within 1 s during the copy', async () => {
    let waited = -1
    let status = ''
    const res = await liveJob(storage, {
      type: 'qemu',
      vmid: 500,
      config: 'x\n',
      qmp: vm.qmpPath,
      onInstant: async () => {
        const t0 = Date.now()
        const other = await QmpClient.connect(vm.qmpPath, { timeoutMs: 1000 })
        try {
          status = JSON.stringify(await other.executeRaw('query-status'))
          waited = Date.now() - t0
        } finally {
          await other.close()
        }
      },
    })
    assert.equal(res.status, 'ok', res.error?.message)
    assert.ok(waited >= 0 && waited < 1000, `the monitor answered after ${waited} ms`)
    assert.match(status, /"status":"prelaunch"|"running":false/)
  })
})
