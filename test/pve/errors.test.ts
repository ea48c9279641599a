import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { JsonValue } from '../../src/pve/protocol.ts'
import { pveErr, pveOk, pveRaw } from '../helpers/pve.ts'

// Every failure of a call is one error line with a specific code (docs/pve-protocol.md).
describe('pve-call: error replies', () => {
  let dir: string
  let store: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-pve-errors-'))
    store = join(dir, 'store')
    await pveOk(store, 'job_init', [1])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('refuses an unknown method', async () => {
    assert.deepEqual(await pveErr(store, 'backup_everything', []), {
      code: 'PVE_METHOD',
      message: "unknown method 'backup_everything'",
    })
    // Names of Object.prototype are not methods.
    assert.equal((await pveErr(store, 'constructor', [])).code, 'PVE_METHOD')
  })

  it('refuses arguments that do not fit the method', async () => {
    const e = await pveErr(store, 'backup_init', ['hundred', 'qemu', 1])
    assert.equal(e.code, 'PVE_ARGS')
    assert.match(e.message, /^bad arguments to backup_init: argument 1/)
    assert.equal((await pveErr(store, 'backup_init', [100, 'openvz', 1])).code, 'PVE_ARGS')
    const vol = { size: 1, 'bitmap-mode': 'none' }
    const noNbd = await pveErr(store, 'backup_vm', [100, '', { 'drive-scsi0': vol }, {}])
    assert.equal(noNbd.code, 'PVE_ARGS')
  })

  it('accepts Perl integers given as strings', async () => {
    const r = await pveOk(store, 'backup_get_mechanism', ['100', 'lxc'])
    assert.equal(r.result, 'directory')
  })

  it('refuses a forged session naming a path outside the store', async () => {
    const guest = { vmid: 100, type: 'qemu', ctime: 1_733_100_000, committed: false }
    const older = 'qemu-2020-01-01T00:00:00Z'
    const forged: [unknown, RegExp][] = [
      [
        { version: 1, guests: [{ ...guest, bases: { 'drive-scsi0': base('../../../etc') } }] },
        /not a backup directory name/,
      ],
      [
        { version: 1, guests: [{ ...guest, bases: { '../x': base(older) } }] },
        /bases\.\.\.\/x: Invalid key/,
      ],
      [{ version: 1, guests: [{ ...guest, vmid: '../100', bases: {} }] }, /vmid/],
      [{ version: 1, guests: [{ ...guest, ctime: 1.5, bases: {} }] }, /ctime/],
      [{ version: 1, guests: [{ ...guest, bases: {}, manifest: manifest() }] }, /manifest/],
      [
        {
          version: 1,
          guests: [
            { ...guest, bases: {} },
            { ...guest, bases: {} },
          ],
        },
        /guest 100 appears twice/,
      ],
      // An incremental base must be an older VM backup of the same guest.
      [
        {
          version: 1,
          guests: [{ ...guest, bases: { 'drive-scsi0': base('qemu-2030-01-01T00:00:00Z') } }],
        },
        /the base of drive-scsi0 is not an older VM backup/,
      ],
      [
        {
          version: 1,
          guests: [{ ...guest, bases: { 'drive-scsi0': base('lxc-2020-01-01T00:00:00Z') } }],
        },
        /the base of drive-scsi0 is not an older VM backup/,
      ],
      [
        { version: 1, guests: [{ ...guest, type: 'lxc', bases: { 'drive-scsi0': base(older) } }] },
        /the base of drive-scsi0 is not an older VM backup/,
      ],
      [{ version: 2, guests: [] }, /version/],
      ['session', /session/],
    ]
    for (const [session, why] of forged) {
      const e = await pveErr(store, 'backup_cleanup', [100, 'qemu', 1, {}], {
        session: session as JsonValue,
      })
      assert.equal(e.code, 'SESSION_INVALID', JSON.stringify(session))
      assert.match(e.message, why, JSON.stringify(session))
    }
    // Nothing was created for the forged guest.
    assert.deepEqual(await readdir(store), [])
  })

  it('refuses another protocol number before looking at the line', async () => {
    const r = await pveRaw('{"protocol":2,"call":"backup"}\n')
    assert.deepEqual(r.final, {
      kind: 'error',
      code: 'UNSUPPORTED',
      message: 'protocol mismatch (plugin speaks 2, guestbackup speaks 1)',
    })
  })

  it('refuses a line that is not a request', async () => {
    for (const line of ['', '\n', 'hello\n', '[1]\n', '{"protocol":1}\n', '\xff\n']) {
      const r = await pveRaw(line === '\xff\n' ? Buffer.from([0xff, 0x0a]) : line)
      assert.equal(r.final.kind === 'error' && r.final.code, 'PVE_PROTOCOL', line)
    }
  })

  it('refuses a storage configuration it cannot use', async () => {
    const r = await pveRaw(
      `${JSON.stringify({ protocol: 1, method: 'status', storeid: 'gb', scfg: { path: 'rel' }, args: [] })}\n`,
    )
    assert.equal(r.final.kind === 'error' && r.final.code, 'CONFIG_INVALID')
    const bad = await pveErr(store, 'status', [], {
      scfg: { 'prune-backups': 'keep-all=1,keep-last=2' },
    })
    assert.equal(bad.code, 'CONFIG_INVALID')
  })

  it("reports a restore holder's failure with its own code, and cleans up what is not held", async () => {
    const volname = 'backup/100/qemu-2024-12-02T00:40:00Z'
    const vm = await pveErr(store, 'restore_vm_volume_init', [volname, 'drive-scsi0', {}])
    assert.equal(vm.code, 'NOT_FOUND', vm.message)
    const ct = await pveErr(store, 'restore_container_init', [volname, 'gb', {}])
    assert.equal(ct.code, 'NOT_FOUND', ct.message)
    const cleanup = await pveOk(store, 'restore_vm_volume_cleanup', [volname, 'drive-scsi0', {}])
    assert.equal(cleanup.result, null)
  })
})

const base = (dirName: string) => ({ dirName, generation: 'g1', depth: 1 })

const manifest = () => ({
  version: 1,
  vmid: 100,
  type: 'qemu',
  ctime: 1_733_100_000,
  archiveName: '100/qemu-2024-12-02T00:40:00Z',
  firewall: false,
  warnings: [],
})
