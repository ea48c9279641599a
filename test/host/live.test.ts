import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { GuestResult } from '../../src/host/runner.ts'
import { initStore, openStore } from '../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { run } from '../../src/io/spawn.ts'
import { createImage, imageInfo } from '../../src/qemu/img.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'
import { liveBackup, liveJob, restoreMatches } from '../helpers/live.ts'

const MiB = 1024 * 1024

/**
 * Issue 3, done-when: a real (paused, no guest OS) QEMU through several backups with guest
 * writes between them — data, zeroes over old data, discard, the tail of the disk — a VM
 * restart between two incrementals and a disk resize forcing a full. Every restore point must be
 * identical to a copy of the export taken at that backup's instant, and a write made during a
 * backup must be absent from it and present in the next.
 */
describe('host/live: incremental backups of a running VM', () => {
  let dir: string
  let storage: DirectoryStorage
  let vm: TestVm
  const disk = (): string => join(dir, 'disk.qcow2')
  const disk2 = (): string => join(dir, 'disk2.qcow2')
  const points: { volid: string; refs: Record<string, string>; parent: boolean }[] = []

  const startTheVm = async (): Promise<void> => {
    vm = await startVm({
      disks: [
        { path: disk(), format: 'qcow2', id: 'scsi0' },
        { path: disk2(), format: 'qcow2', id: 'virtio1' },
      ],
      dir: join(dir, 'vm'),
    })
  }

  /** One backup; at the instant, copy each export as the reference, then run `during`. */
  const backup = async (during?: () => Promise<void>): Promise<GuestResult> => {
    const { res, refs } = await liveBackup({
      storage,
      vmid: 400,
      qmp: vm.qmpPath,
      devices: ['drive-scsi0', 'drive-virtio1'],
      refDir: dir,
      tag: String(points.length),
      config: 'name: live\n',
      during,
    })
    const vols = await storage.listVolumes({ vmid: 400 })
    const v = vols.find((x) => x.volid === res.volid)
    assert.ok(v)
    points.push({ volid: res.volid ?? '', refs, parent: v.parent !== undefined })
    return res
  }

  const io = (cmd: string): Promise<string> => vm.guestIo('scsi0', cmd)
  /** qemu-io's output of reading backup 2's concurrent write (0xee at 10M) in point `i`. */
  const readWriteDuring2 = async (i: number): Promise<string> => {
    const ref = points.at(i)?.refs['drive-scsi0'] ?? ''
    const cmd = ['-f', 'raw', '-c', 'read -P 0xee 10M 64k', ref]
    return (await run('qemu-io', cmd, { okExitCodes: [0, 1] })).stdout
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-live-'))
    await mkdir(join(dir, 'vm'))
    await createImage(disk(), { format: 'qcow2', size: 64 * MiB })
    await createImage(disk2(), { format: 'qcow2', size: 16 * MiB })
    await initStore(join(dir, 'store'), { 'vm-backup-mode': 'incremental' }, 'lab')
    storage = await openStore(join(dir, 'store'))
    await startTheVm()
  })
  after(async () => {
    await vm.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('1: full backup of two disks at one instant', async () => {
    await io('write -P 0x11 0 8M')
    await io('write -P 0x12 32M 4M')
    await vm.guestIo('virtio1', 'write -P 0x21 1M 1M')
    await backup()
    assert.equal(points[0]?.parent, false)
  })

  it('2: incremental after data, zeroes over data, discard and a tail write; a write during it is left out', async () => {
    await io('write -P 0x13 1M 64k')
    await io('write -z 2M 1M')
    await io('discard 4M 1M')
    await io('write -P 0x14 63M 1M')
    await backup(async () => {
      await io('write -P 0xee 10M 64k')
    })
    assert.equal(points[1]?.parent, true)
    assert.match(await readWriteDuring2(1), /Pattern verification failed/)
  })

  it('3: the write made during backup 2 is in backup 3', async () => {
    await backup()
    assert.equal(points[2]?.parent, true)
    assert.doesNotMatch(await readWriteDuring2(2), /failed/)
  })

  it('4: incremental across a VM restart (persistent bitmaps)', async () => {
    const qmp = await QmpClient.connect(vm.qmpPath)
    await qmp.executeRaw('quit').catch(() => undefined)
    await qmp.close()
    await vm.stop()
    await startTheVm()
    await io('write -P 0x15 20M 2M')
    await backup()
    assert.equal(points[3]?.parent, true, 'still incremental after the restart')
  })

  it('5: a disk resize forces a full backup, then incrementals resume', async () => {
    const qmp = await QmpClient.connect(vm.qmpPath)
    await qmp.executeRaw('block_resize', { 'node-name': 'drive-scsi0', size: 96 * MiB })
    await qmp.close()
    await io('write -P 0x16 90M 1M')
    await backup()
    // The resized disk starts a new chain; the other disk stays incremental.
    const volid = points[4]?.volid ?? ''
    const info = await imageInfo(
      join(
        dir,
        'store',
        volid.slice(volid.indexOf('backup/') + 'backup/'.length),
        'drive-scsi0.qcow2',
      ),
      'qcow2',
    )
    assert.equal(info['backing-filename'], undefined, 'full after resize')
    assert.equal(info['virtual-size'], 96 * MiB)
    await io('write -P 0x17 95M 1M')
    await backup()
    assert.equal(points[5]?.parent, true)
  })

  it('restores every point identical to the export at its instant', async () => {
    for (const [i, p] of points.entries()) {
      await restoreMatches(storage, p.volid, join(dir, `restore-${i}`), p.refs)
    }
  })

  it('leaves the VM graph as it was: no overlays, jobs, exports; one bitmap per disk', async () => {
    const qmp = await QmpClient.connect(vm.qmpPath)
    try {
      const nodes = (await qmp.executeRaw('query-named-block-nodes', { flat: true })) as {
        'node-name': string
      }[]
      assert.deepEqual(
        nodes
          .map((n) => n['node-name'])
          .filter((n) => !n.startsWith('#'))
          .sort(),
        ['drive-scsi0', 'drive-scsi0-file', 'drive-virtio1', 'drive-virtio1-file'],
      )
      assert.deepEqual(await qmp.executeRaw('query-block-jobs'), [])
      assert.deepEqual(await qmp.executeRaw('query-block-exports'), [])
      const blocks = (await qmp.executeRaw('query-block')) as {
        inserted?: { 'dirty-bitmaps'?: { name: string; recording: boolean }[] }
      }[]
      for (const b of blocks) {
        const bms = b.inserted?.['dirty-bitmaps'] ?? []
        assert.equal(bms.length, 1)
        assert.equal(bms[0]?.recording, true)
        assert.match(String(bms.at(0)?.name), /^gb-lab-\d+-[0-9a-f]{8}$/)
      }
    } finally {
      await qmp.close()
    }
  })

  it('freezes the guest file systems through the guest agent around the instant', async () => {
    const calls: string[] = []
    const sock = join(dir, 'qga.sock')
    const server = createServer((c) => {
      c.setEncoding('utf8')
      let buf = ''
      c.on('data', (d: string) => {
        buf += d
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          const msg = JSON.parse(buf.slice(0, i)) as {
            execute: string
            arguments?: { id?: number }
          }
          buf = buf.slice(i + 1)
          calls.push(msg.execute)
          if (msg.execute === 'guest-sync-delimited') {
            c.write(`\xff${JSON.stringify({ return: msg.arguments?.id })}\n`)
          } else {
            c.write(`${JSON.stringify({ return: 1 })}\n`)
          }
        }
      })
    })
    await new Promise<void>((r) => server.listen(sock, r))
    try {
      const res = await liveJob(storage, {
        type: 'qemu',
        vmid: 400,
        config: 'x\n',
        qmp: vm.qmpPath,
        qga: sock,
      })
      assert.equal(res.status, 'ok', res.error?.message)
      assert.deepEqual(calls, [
        'guest-sync-delimited',
        'guest-fsfreeze-freeze',
        'guest-fsfreeze-thaw',
      ])
      const volid = res.volid ?? ''
      const m = JSON.parse(
        await readFile(
          join(dir, 'store', volid.slice(volid.indexOf('backup/') + 7), 'manifest.json'),
          'utf8',
        ),
      ) as { consistency: string }
      assert.equal(m.consistency, 'fs')
    } finally {
      server.close()
    }
  })

  it('fails loudly and forces a full backup when the bitmap lies', async () => {
    // Write behind the bitmap's back: a clean block changes without being marked dirty.
    const qmp = await QmpClient.connect(vm.qmpPath)
    const blocks = (await qmp.executeRaw('query-block')) as {
      qdev?: string
      inserted?: { 'dirty-bitmaps'?: { name: string }[] }
    }[]
    const name = blocks.find((b) => b.qdev === 'scsi0')?.inserted?.['dirty-bitmaps']?.[0]?.name
    assert.ok(name)
    await qmp.executeRaw('block-dirty-bitmap-disable', { node: 'drive-scsi0', name })
    await io('write -P 0x66 0 8M')
    await qmp.executeRaw('block-dirty-bitmap-enable', { node: 'drive-scsi0', name })
    await qmp.close()
    const res = await liveJob(storage, { type: 'qemu', vmid: 400, config: 'x\n', qmp: vm.qmpPath })
    assert.equal(res.status, 'failed')
    assert.equal(res.error?.code, 'VERIFY_FAILED')
    // The failure path left the graph clean and folded the new bitmap back into the old one.
    const after = await QmpClient.connect(vm.qmpPath)
    try {
      assert.deepEqual(await after.executeRaw('query-block-jobs'), [])
      assert.deepEqual(await after.executeRaw('query-block-exports'), [])
      const blocks2 = (await after.executeRaw('query-block')) as {
        qdev?: string
        inserted?: { 'dirty-bitmaps'?: { name: string; recording: boolean }[] }
      }[]
      const bms = blocks2.find((b) => b.qdev === 'scsi0')?.inserted?.['dirty-bitmaps'] ?? []
      assert.deepEqual(
        bms.map((b) => [b.name, b.recording]),
        [[name, true]],
      )
    } finally {
      await after.close()
    }
    await backup()
    assert.equal(points.at(-1)?.parent, false, 'the next backup is full')
  })

  it('serves the file-handle mechanism from the same exports, incrementals included', async () => {
    await initStore(
      join(dir, 'store-fh'),
      { 'vm-backup-mode': 'incremental', 'vm-backup-mechanism': 'file-handle' },
      'fh',
    )
    const fh = await openStore(join(dir, 'store-fh'))
    for (const [n, write] of ['write -P 0x51 5M 1M', 'write -P 0x52 7M 64k'].entries()) {
      await io(write)
      const { res, refs } = await liveBackup({
        storage: fh,
        vmid: 400,
        qmp: vm.qmpPath,
        devices: ['drive-scsi0'],
        onlyDevices: true,
        refDir: dir,
        tag: `fh-${n}`,
      })
      const v = (await fh.listVolumes()).find((x) => x.volid === res.volid)
      assert.equal(v?.parent !== undefined, n === 1, 'the second one is incremental')
      await restoreMatches(fh, res.volid ?? '', join(dir, `restore-fh-${n}`), refs)
    }
  })
})
