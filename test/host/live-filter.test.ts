import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { initStore, openStore } from '../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { createImage } from '../../src/qemu/img.ts'
import { liveBackup, restoreMatches } from '../helpers/live.ts'

const MiB = 1024 * 1024

/**
 * Proxmox puts a throttle filter above each drive's format node. Bitmaps must go onto the qcow2
 * node under the filter (where they persist), and the backup must still see the guest's data.
 */
describe('host/live: a disk under a throttle filter node', () => {
  let dir: string
  let qemu: ChildProcess
  let storage: DirectoryStorage
  const qmpPath = (): string => join(dir, 'qmp.sock')
  const hmp = async (cmd: string): Promise<void> => {
    const q = await QmpClient.connect(qmpPath())
    try {
      await q.hmp(`qemu-io -d scsi0 "${cmd}"`)
    } finally {
      await q.close()
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-filter-'))
    const disk = join(dir, 'd.qcow2')
    await createImage(disk, { format: 'qcow2', size: 32 * MiB })
    qemu = spawn(
      'qemu-system-x86_64',
      [
        ...['-S', '-nodefaults', '-display', 'none', '-machine', 'q35,accel=kvm:tcg', '-m', '64'],
        ...['-qmp', `unix:${qmpPath()},server=on,wait=off`],
        ...['-object', 'throttle-group,id=tg0,x-bps-total=1000000000'],
        ...['-blockdev', JSON.stringify({ driver: 'file', 'node-name': 'f0', filename: disk })],
        ...['-blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'fmt0', file: 'f0' })],
        '-blockdev',
        JSON.stringify({
          driver: 'throttle',
          'node-name': 'drive-scsi0',
          'throttle-group': 'tg0',
          file: 'fmt0',
        }),
        ...['-device', 'virtio-scsi-pci,id=scsihw0'],
        ...['-device', 'scsi-hd,bus=scsihw0.0,drive=drive-scsi0,id=scsi0'],
      ],
      { stdio: 'ignore' },
    )
    for (let i = 0; i < 200; i++) {
      if ((await stat(qmpPath()).catch(() => undefined))?.isSocket() === true) break
      await sleep(25)
    }
    await initStore(join(dir, 'store'), { 'vm-backup-mode': 'incremental' }, 'f')
    storage = await openStore(join(dir, 'store'))
  })
  after(async () => {
    qemu.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps a persistent bitmap on the qcow2 node and restores every point', async () => {
    const opts = { storage, vmid: 600, qmp: qmpPath(), devices: ['drive-scsi0'], refDir: dir }
    await hmp('write -P 0x61 0 4M')
    const full = await liveBackup({ ...opts, tag: 'full' })
    await hmp('write -P 0x62 16M 1M')
    const inc = await liveBackup({ ...opts, tag: 'inc' })
    const vols = await storage.listVolumes({ vmid: 600 })
    assert.ok(vols.find((v) => v.volid === inc.res.volid)?.parent, 'incremental')
    await restoreMatches(storage, full.res.volid ?? '', join(dir, 'r-full'), full.refs)
    await restoreMatches(storage, inc.res.volid ?? '', join(dir, 'r-inc'), inc.refs)
    const q = await QmpClient.connect(qmpPath())
    try {
      const nodes = (await q.executeRaw('query-named-block-nodes', { flat: true })) as {
        'node-name': string
        'dirty-bitmaps'?: { name: string; persistent: boolean; recording: boolean }[]
      }[]
      const fmt = nodes.find((n) => n['node-name'] === 'fmt0')
      const bms = fmt?.['dirty-bitmaps'] ?? []
      assert.equal(bms.length, 1)
      assert.equal(bms[0]?.persistent, true)
      const top = nodes.find((n) => n['node-name'] === 'drive-scsi0')
      assert.equal(top?.['dirty-bitmaps']?.length ?? 0, 0)
    } finally {
      await q.close()
    }
  })
})
