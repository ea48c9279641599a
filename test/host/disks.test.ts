import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { copyFile, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { isBackupError } from '../../src/errors.ts'
import { inspectDisk } from '../../src/host/disks.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { startVm } from '../helpers/qemu-vm.ts'

const sh = promisify(execFile)

const usage = (why: RegExp) => (e: unknown) => {
  assert.ok(isBackupError(e, 'USAGE'), String(e))
  assert.match(e.message, why)
  return true
}

// A disk's format is stated or safely known, never guessed from its name; a disk a running
// QEMU writes is refused.
describe('host/disks: inspectDisk', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-disks-'))
    for (const fmt of ['qcow2', 'vmdk', 'vdi', 'vhdx', 'qed']) {
      await sh('qemu-img', ['create', '-q', '-f', fmt, join(dir, `d.${fmt}`), '4M'])
    }
    // qcow2 images padded to a whole number of sectors (trailing zeroes change nothing).
    for (const f of ['q.raw', 'noext']) {
      await copyFile(join(dir, 'd.qcow2'), join(dir, f))
      await truncate(join(dir, f), 1024 * 1024)
    }
    await writeFile(join(dir, 'r.raw'), Buffer.alloc(1024 * 1024))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('refuses a qcow2 named .raw or without suffix unless a format is stated', async () => {
    for (const f of ['q.raw', 'noext']) {
      await assert.rejects(
        inspectDisk('drive-scsi0', join(dir, f)),
        usage(/is a qcow2 image, not raw: give scsi0=.*,format=qcow2/),
      )
      assert.equal((await inspectDisk('drive-scsi0', join(dir, f), 'qcow2')).format, 'qcow2')
      assert.equal((await inspectDisk('drive-scsi0', join(dir, f), 'raw')).format, 'raw')
    }
  })

  it('refuses vmdk, vdi, vhdx and qed assumed raw, and reads them as stated', async () => {
    for (const fmt of ['vmdk', 'vdi', 'vhdx', 'qed'] as const) {
      const p = join(dir, `d.${fmt}`)
      await assert.rejects(inspectDisk('drive-scsi0', p), usage(new RegExp(`is a ${fmt} image`)))
      assert.equal((await inspectDisk('drive-scsi0', p, fmt)).format, fmt)
    }
  })

  it('refuses a stated format the file is not', async () => {
    await assert.rejects(
      inspectDisk('drive-scsi0', join(dir, 'r.raw'), 'qcow2'),
      usage(/is not a qcow2 image \(no known signature\)/),
    )
    await assert.rejects(
      inspectDisk('drive-scsi0', join(dir, 'd.vmdk'), 'qcow2'),
      usage(/is not a qcow2 image \(it is vmdk\)/),
    )
  })

  it('refuses raw and qcow2 disks a running QEMU holds, pointing to --qmp', async () => {
    const raw = join(dir, 'vm.raw')
    const qcow = join(dir, 'vm.qcow2')
    await writeFile(raw, Buffer.alloc(1024 * 1024))
    await copyFile(join(dir, 'd.qcow2'), qcow)
    assert.equal((await inspectDisk('drive-scsi0', raw)).format, 'raw')
    {
      await using vm = await startVm({
        dir,
        disks: [
          { path: raw, format: 'raw', id: 'scsi0' },
          { path: qcow, format: 'qcow2', id: 'scsi1' },
        ],
      })
      // QMP answers once the machine (and its devices, which take the locks) is set up.
      await (await QmpClient.connect(vm.qmpPath)).close()
      for (const p of [raw, qcow]) {
        await assert.rejects(
          inspectDisk('drive-scsi0', p),
          usage(/is in use by a running QEMU .*--qmp SOCKET/),
        )
      }
    }
    // Once the VM is gone, the same disks are backed up offline.
    assert.equal((await inspectDisk('drive-scsi0', raw)).format, 'raw')
  })
})
