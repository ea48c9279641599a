/**
 * QmpClient against a real `qemu-system-x86_64 -S` (QEMU 7.2). One VM serves the whole file; the
 * tests run in order and the last one quits QEMU.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { isBackupError, QmpCommandError } from '../../src/errors.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import { run } from '../../src/io/spawn.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'

const MiB = 1024 * 1024
const DISK = 'virtio0'
const NODE = `drive-${DISK}`

const bitmapsOf = async (client: QmpClient, node: string) => {
  const nodes = await client.execute('query-named-block-nodes', { flat: true })
  const info = nodes.find((n) => n['node-name'] === node)
  assert.ok(info, `node ${node} not found`)
  return info['dirty-bitmaps'] ?? []
}

describe('QmpClient with a real QEMU', () => {
  let tmp: TempDir
  let vm: TestVm
  let client: QmpClient

  before(async () => {
    tmp = await makeTempDir('guestbackup-qmp-')
    const disk = join(tmp.path, 'disk.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M'], {
      errorCode: 'QEMU_TOOL_FAILED',
    })
    const raw = join(tmp.path, 'disk1.raw')
    await run('qemu-img', ['create', '-q', '-f', 'raw', raw, '32M'], {
      errorCode: 'QEMU_TOOL_FAILED',
    })
    vm = await startVm({
      dir: tmp.path,
      disks: [
        { path: disk, format: 'qcow2', id: DISK },
        { path: raw, format: 'raw', id: 'scsi0' },
      ],
    })
    client = await QmpClient.connect(vm.qmpPath, { timeoutMs: 10_000 })
  })

  after(async () => {
    await client.close()
    await vm.stop()
    await tmp.remove()
  })

  it('reads the version from the greeting and agrees with query-version', async () => {
    assert.equal(client.state, 'ready')
    assert.ok(client.version.major >= 7)
    assert.ok(client.capabilities.includes('oob'))
    const v = await client.execute('query-version')
    assert.deepEqual(v.qemu, client.version)
    assert.equal(v.package, client.package)
    const status = await client.execute('query-status')
    assert.equal(status.status, 'prelaunch')
    assert.equal(status.running, false)
  })

  it('shows the disk in query-block and query-named-block-nodes', async () => {
    const blocks = await client.execute('query-block')
    const dev = blocks.find((b) => b.qdev === vm.qdevPath(DISK))
    assert.ok(dev, JSON.stringify(blocks))
    assert.equal(dev.inserted?.['node-name'], NODE)
    assert.equal(dev.inserted.drv, 'qcow2')
    assert.equal(dev.inserted.image['virtual-size'], 64 * MiB)
    // query-block names a device with an id by that id, a virtio-blk backend by its QOM path.
    const scsi = blocks.find((b) => b.qdev === 'scsi0')
    assert.equal(scsi?.inserted?.['node-name'], 'drive-scsi0')
    assert.equal(scsi.inserted.drv, 'raw')
    const nodes = await client.execute('query-named-block-nodes', { flat: true })
    assert.deepEqual(nodes.map((n) => n['node-name']).sort(), [
      'drive-scsi0',
      'drive-scsi0-file',
      NODE,
      `${NODE}-file`,
    ])
  })

  it('rejects an unknown command with QmpCommandError CommandNotFound and stays usable', async () => {
    await assert.rejects(client.executeRaw('no-such-command'), (e: unknown) => {
      assert.ok(e instanceof QmpCommandError)
      assert.equal(e.code, 'QMP_COMMAND')
      assert.equal(e.errorClass, 'CommandNotFound')
      assert.match(e.desc, /no-such-command/)
      return true
    })
    await assert.rejects(client.execute('blockdev-del', { 'node-name': 'nope' }), (e: unknown) => {
      assert.ok(e instanceof QmpCommandError)
      assert.equal(e.errorClass, 'GenericError')
      return true
    })
    assert.equal((await client.execute('query-status')).status, 'prelaunch')
  })

  it('writes as the guest with HMP qemu-io and reads the pattern back', async () => {
    const wrote = await vm.guestWrite(DISK, 'write -P 0xab 1M 64k')
    assert.match(wrote, /wrote 65536\/65536 bytes at offset 1048576/)
    const read = await vm.guestIo(DISK, 'read -P 0xab 1M 64k')
    assert.match(read, /read 65536\/65536 bytes at offset 1048576/)
    await assert.rejects(vm.guestIo(DISK, 'read -P 0xcd 1M 64k'), /Pattern verification failed/)
    await assert.rejects(vm.guestIo('virtio9', 'read 0 4k'), /not found/)
    await vm.guestWrite('scsi0', 'write -P 0x5a 31M 1M')
    await vm.guestIo('scsi0', 'read -P 0x5a 31M 1M')
    await assert.rejects(vm.guestIo('scsi0', 'read 32M 4k'), /failed/)
  })

  it('adds a dirty bitmap that records guest writes', async () => {
    await client.execute('block-dirty-bitmap-add', { node: NODE, name: 'bm0', persistent: true })
    let [bm] = await bitmapsOf(client, NODE)
    assert.deepEqual(
      { name: bm?.name, recording: bm?.recording, count: bm?.count, persistent: bm?.persistent },
      { name: 'bm0', recording: true, count: 0, persistent: true },
    )
    await vm.guestWrite(DISK, 'write -P 0x11 8M 4k')
    ;[bm] = await bitmapsOf(client, NODE)
    assert.equal(bm?.count, bm?.granularity) // one 4k write dirties one 64k granule
  })

  it('freezes and rotates bitmaps atomically in a transaction', async () => {
    await client.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-disable', data: { node: NODE, name: 'bm0' } },
        { type: 'block-dirty-bitmap-add', data: { node: NODE, name: 'bm1', persistent: true } },
      ],
    })
    await vm.guestWrite(DISK, 'write -P 0x22 16M 4k')
    const byName = new Map((await bitmapsOf(client, NODE)).map((b) => [b.name, b]))
    assert.equal(byName.get('bm0')?.recording, false)
    assert.equal(byName.get('bm0')?.count, 65536)
    assert.equal(byName.get('bm1')?.count, 65536)
    // A failed backup's bitmap path: merge the frozen bitmap back into the new one
    // (https://qemu.readthedocs.io/en/v7.2.0/interop/bitmaps.html, "Incremental Backups").
    await client.execute('block-dirty-bitmap-merge', {
      node: NODE,
      target: 'bm1',
      bitmaps: ['bm0'],
    })
    await client.execute('block-dirty-bitmap-remove', { node: NODE, name: 'bm0' })
    const left = await bitmapsOf(client, NODE)
    assert.deepEqual(
      left.map((b) => [b.name, b.count]),
      [['bm1', 2 * 65536]],
    )
  })

  it('runs the fleecing export sequence and sees its events', async () => {
    const fleece = join(tmp.path, 'fleece.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', fleece, '64M'], {
      errorCode: 'QEMU_TOOL_FAILED',
    })
    await client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'fleece0',
      file: { driver: 'file', filename: fleece },
      backing: NODE,
    })
    await client.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-disable', data: { node: NODE, name: 'bm1' } },
        { type: 'block-dirty-bitmap-add', data: { node: NODE, name: 'bm2', persistent: true } },
        {
          type: 'blockdev-backup',
          data: { 'job-id': 'fleecing', device: NODE, target: 'fleece0', sync: 'none' },
        },
      ],
    })
    const jobs = await client.execute('query-block-jobs')
    assert.deepEqual(
      jobs.map((j) => [j.device, j.type]),
      [['fleecing', 'backup']],
    )
    const nbdPath = join(tmp.path, 'nbd.sock')
    await client.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdPath } } })
    await client.execute('block-export-add', {
      type: 'nbd',
      id: 'exp0',
      'node-name': 'fleece0',
      name: DISK,
      writable: false,
      bitmaps: [{ node: NODE, name: 'bm1' }],
    })
    const exports = await client.execute('query-block-exports')
    assert.deepEqual(
      exports.map((e) => [e.id, e['node-name'], e['shutting-down']]),
      [['exp0', 'fleece0', false]],
    )

    let mark = client.eventMark()
    await client.execute('block-export-del', { id: 'exp0' })
    const deleted = await client.waitForEvent('BLOCK_EXPORT_DELETED', (d) => d.id === 'exp0', {
      since: mark,
      timeoutMs: 10_000,
    })
    assert.ok(deleted.seq > mark)
    await client.execute('nbd-server-stop')

    mark = client.eventMark()
    await client.execute('block-job-cancel', { device: 'fleecing' })
    const cancelled = await client.waitForEvent(
      'BLOCK_JOB_CANCELLED',
      (d) => d.device === 'fleecing',
      { since: mark, timeoutMs: 10_000 },
    )
    assert.equal(cancelled.data.type, 'backup')
    await client.execute('blockdev-del', { 'node-name': 'fleece0' })
    assert.deepEqual(await client.execute('query-block-jobs'), [])
  })

  it('sees STOP and RESUME events around cont and stop', async () => {
    const mark = client.eventMark()
    await client.execute('cont')
    await client.execute('stop')
    const resume = await client.waitForEvent('RESUME', undefined, { since: mark, timeoutMs: 5000 })
    const stop = await client.waitForEvent('STOP', undefined, { since: mark, timeoutMs: 5000 })
    assert.ok(stop.seq > resume.seq)
    assert.equal((await client.execute('query-status')).status, 'paused')
  })

  it('quits: SHUTDOWN arrives (even before the reply) and the connection closes', async () => {
    const mark = client.eventMark()
    await client.execute('quit')
    const shutdown = await client.waitForEvent('SHUTDOWN', undefined, {
      since: mark,
      timeoutMs: 5000,
    })
    assert.deepEqual(shutdown.data, { guest: false, reason: 'host-qmp-quit' })
    const reason = await client.closed
    assert.equal(reason.code, 'QMP_CLOSED')
    assert.equal(client.state, 'closed')
    await assert.rejects(client.execute('query-status'), (e: unknown) =>
      isBackupError(e, 'QMP_CLOSED'),
    )
    await vm.stop()
  })
})
