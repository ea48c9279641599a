import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import type { JsonValue } from '../../src/pve/protocol.ts'
import { compareImages, createImage } from '../../src/qemu/img.ts'
import { startQemuNbd } from '../../src/qemu/nbd-server.ts'
import { runCliInProcessOk } from '../helpers/cli.ts'
import { pveOk } from '../helpers/pve.ts'

const MiB = 1024 * 1024
const ARCHIVE_NAME_PVE = /^([a-zA-Z0-9\-.+=_]|\/|:)+$/

// A VM backup as vzdump drives a provider (pve-backup-provider-api.md §2.7), each method a
// separate pve-call with the session of the previous reply carried over, the disk an NBD
// export named after the device as qemu-server's backup access gives it.
describe('pve-call: a VM backup through the provider methods', () => {
  let dir: string
  let store: string
  let disk: string
  const scfg = { 'gb-vm-backup-mode': 'incremental' }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-pve-backup-'))
    store = join(dir, 'store')
    disk = join(dir, 'disk.qcow2')
    await createImage(disk, { format: 'qcow2', size: 32 * MiB })
    await run('qemu-io', [
      ...['-f', 'qcow2', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0x5a 20M 2M', disk],
    ])
    // Initialised only so that the CLI can restore what the plugin wrote.
    await runCliInProcessOk(['init', store, '--id', 'gb'])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('backs up, commits, keeps the task log, and lists the backup', async () => {
    await using nbd = await startQemuNbd({
      image: disk,
      format: 'qcow2',
      exportName: 'drive-scsi0',
      readOnly: true,
    })
    const t = 1_733_100_000
    let session: JsonValue | undefined = null
    const call = async (method: string, args: JsonValue[]): Promise<JsonValue> => {
      const r = await pveOk(store, method, args, { session: session ?? null, scfg })
      assert.notEqual(r.session, undefined, `${method} returns a session`)
      session = r.session
      // Between calls nothing is held: the guest lock is released.
      await assert.rejects(stat(join(store, '100', '.lock')), { code: 'ENOENT' })
      return r.result
    }
    assert.equal(await call('job_init', [t]), null)
    const init = (await call('backup_init', [100, 'qemu', t])) as { 'archive-name': string }
    assert.match(init['archive-name'], ARCHIVE_NAME_PVE)
    assert.equal(init['archive-name'], '100/qemu-2024-12-02T00:40:00Z')
    assert.equal(await call('backup_get_mechanism', [100, 'qemu']), 'nbd')
    const volumes = { 'drive-scsi0': { size: 32 * MiB } }
    const query = await call('backup_vm_query_incremental', [100, volumes])
    assert.deepEqual(query, { 'drive-scsi0': 'new' })
    const config = 'name: t\nscsi0: local:100/vm-100-disk-0.qcow2,size=32M\n'
    const vm = {
      'drive-scsi0': { size: 32 * MiB, 'bitmap-mode': 'new', 'nbd-path': nbd.socketPath },
    }
    const info = { 'firewall-config': '[OPTIONS]\nenable: 1\n', 'bandwidth-limit': 0 }
    assert.equal(await call('backup_vm', [100, config, vm, info]), null)
    const cleanup = (await call('backup_cleanup', [100, 'qemu', 1, {}])) as {
      stats: { 'archive-size': number }
    }
    assert.ok(cleanup.stats['archive-size'] > 3 * MiB, JSON.stringify(cleanup))
    const taskLog = join(dir, 'task.log')
    await writeFile(taskLog, 'INFO: starting new backup job\n')
    assert.equal(await call('backup_handle_log_file', [100, taskLog]), null)
    assert.equal(await call('job_cleanup', []), null)
    assert.deepEqual(session, { version: 1, guests: [] })

    const volname = `backup/${init['archive-name']}`
    const listed = await pveOk(store, 'list_volumes', [100, ['backup']])
    assert.deepEqual(
      (listed.result as { volid: string }[]).map((v) => v.volid),
      [`gb:${volname}`],
    )
    const kept = await readFile(join(store, init['archive-name'], 'backup.log'), 'utf8')
    assert.equal(kept, 'INFO: starting new backup job\n')
    const fw = await pveOk(store, 'archive_get_firewall_config', [volname], { session: null })
    assert.equal(fw.result, '[OPTIONS]\nenable: 1\n')
    const cfg = await pveOk(store, 'archive_get_guest_config', [volname, 'gb'])
    assert.equal(cfg.result, config)
    const mech = await pveOk(store, 'restore_get_mechanism', [volname, 'gb'])
    assert.deepEqual(mech.result, ['qemu-img', 'qemu'])
    const sizes = await pveOk(store, 'restore_vm_init', [volname])
    assert.deepEqual(sizes.result, { 'drive-scsi0': { size: 32 * MiB } })

    // What the plugin wrote restores to the same disk.
    const target = join(dir, 'restore')
    await runCliInProcessOk(['restore', '--store', store, volname, '--target', target])
    assert.ok(await compareImages(disk, 'qcow2', join(target, 'drive-scsi0.raw'), 'raw'))
  })

  it('discards a failed backup and keeps its task log', async () => {
    const t = 1_733_200_000
    const s1 = await pveOk(store, 'backup_init', [101, 'qemu', t], { scfg })
    const name = (s1.result as { 'archive-name': string })['archive-name']
    const s2 = await pveOk(store, 'backup_cleanup', [101, 'qemu', 0, { error: 'VM vanished' }], {
      session: s1.session ?? null,
    })
    assert.equal(s2.result, null)
    assert.ok(s2.logs.some((l) => l.message.includes('VM vanished')))
    const taskLog = join(dir, 'task-101.log')
    await writeFile(taskLog, 'ERROR: VM vanished\n')
    const s3 = await pveOk(store, 'backup_handle_log_file', [101, taskLog], {
      session: s2.session ?? null,
    })
    await pveOk(store, 'job_cleanup', [], { session: s3.session ?? null })
    const dirName = name.slice('101/'.length)
    await assert.rejects(stat(join(store, '101', `.partial-${dirName}`)), { code: 'ENOENT' })
    const failedLog = await readFile(join(store, '101', `${dirName}.failed`, 'backup.log'), 'utf8')
    assert.equal(failedLog, 'ERROR: VM vanished\n')
    const listed = await pveOk(store, 'list_volumes', [101, ['backup']])
    assert.deepEqual(listed.result, [])
  })
})
