import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cp, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { isBackupError } from '../../../src/errors.ts'
import { openStore } from '../../../src/provider/directory/store.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'

const sh = promisify(execFile)
const SIZE = 4 * 1024 * 1024
const DEVICE = 'drive-scsi0'

// The two ways the directory provider hands out a disk (the FUSE file Proxmox reads, the spec
// our own host reads) validate the same chain the same way: each tampering is refused by both,
// with the same code, rule and message.
describe('provider/directory restore: the FUSE file and the spec refuse alike', () => {
  let dir: string
  let template: string
  let volname = ''
  let n = 0

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-restore-spec-'))
    template = join(dir, 'template')
    await runCliInProcessOk(['init', template])
    const disk = join(dir, 'disk.qcow2')
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(SIZE)])
    await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', disk])
    const conf = join(dir, 'vm.conf')
    await writeFile(conf, 'name: s\n')
    const r = await runCliInProcessOk([
      ...backupArgs(template, 100, conf, '--disk', `scsi0=${disk}`),
      '--json',
    ])
    const { volid } = JSON.parse(r.stdout) as { volid: string }
    volname = volid.slice(volid.indexOf(':') + 1)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** A copy of the template store whose drive image `tamper` replaced. */
  const tampered = async (tamper: (drive: string, outside: string) => Promise<unknown>) => {
    const store = join(dir, `store-${++n}`)
    await cp(template, store, { recursive: true })
    const drive = join(store, volname.slice('backup/'.length), `${DEVICE}.qcow2`)
    const outside = join(dir, `outside-${n}.qcow2`)
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', outside, String(SIZE)])
    await rm(drive)
    await tamper(drive, outside)
    return store
  }

  const cases: [string, (drive: string, outside: string) => Promise<unknown>, string][] = [
    [
      'a backing file outside the store',
      (d, o) => sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', o, '-F', 'qcow2', d, '4M']),
      'backing-name',
    ],
    [
      'an external data file',
      (d, o) =>
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${o}.raw`, d, '4M']),
      'data-file',
    ],
    [
      'a backing file read as raw (probed, or not qcow2)',
      (d) =>
        sh('qemu-img', [
          'create',
          '-q',
          '-f',
          'qcow2',
          '-u',
          '-b',
          '../x/y.raw',
          '-F',
          'raw',
          d,
          '4M',
        ]),
      'backing-format',
    ],
    ['a raw image', (d) => sh('qemu-img', ['create', '-q', '-f', 'raw', d, '4M']), 'unreadable'],
    ['a symbolic link to an image outside', (d, o) => symlink(o, d), ''],
  ]
  for (const [what, tamper, rule] of cases) {
    it(`refuses ${what} on both paths with the same reason`, async () => {
      const storage = await openStore(await tampered(tamper))
      const signal = new AbortController().signal
      const reasons: unknown[] = []
      for (const call of ['restoreVmVolumeInit', 'restoreVmVolumeSpec'] as const) {
        const p = storage.newBackupProvider(() => undefined)
        await assert.rejects(p[call](volname, DEVICE, { signal }), (e: unknown) => {
          assert.ok(isBackupError(e), String(e))
          reasons.push({ code: e.code, rule: e.details?.['rule'], message: e.message })
          return true
        })
        await p.restoreVmCleanup(volname)
      }
      const [fuse, spec] = reasons as { code: string; rule: unknown }[]
      assert.deepEqual(spec, fuse)
      if (rule === '') assert.equal(fuse?.code, 'UNSAFE_PATH')
      else assert.deepEqual([fuse?.code, fuse?.rule], ['UNSAFE_IMAGE', rule])
    })
  }

  it('gives the pinned chain as the spec, every node explicit', async () => {
    const storage = await openStore(template)
    const p = storage.newBackupProvider(() => undefined)
    const signal = new AbortController().signal
    try {
      const r = await p.restoreVmVolumeSpec(volname, DEVICE, { signal })
      assert.equal(r.size, SIZE)
      assert.match(r.blockdev.file.filename, /^\/proc\/\d+\/fd\/\d+$/)
      assert.deepEqual(
        { ...r.blockdev, file: { ...r.blockdev.file, filename: 'F' } },
        {
          driver: 'qcow2',
          file: { driver: 'file', filename: 'F' },
          backing: null,
        },
      )
    } finally {
      await p.restoreVmVolumeCleanup(volname, DEVICE)
    }
  })
})
