import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { BackupProvider } from '../../src/api/provider.ts'
import { isBackupError } from '../../src/errors.ts'
import { restoreBackup } from '../../src/host/restore.ts'
import type { RestoreOptions } from '../../src/host/restore.ts'
import { TaskLog } from '../../src/host/task-log.ts'
import { silentLogger } from '../../src/log.ts'
import { openStore } from '../../src/provider/directory/store.ts'
import { compareImages } from '../../src/qemu/img.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

const sh = promisify(execFile)
const MiB = 1024 * 1024
const SIZE = 4 * MiB
const DEVICES = ['drive-scsi0', 'drive-scsi1', 'drive-scsi2'] as const

/** `provider` with some members replaced; the others keep the provider as `this`. */
const override = (
  provider: BackupProvider,
  over: { [K in keyof BackupProvider]?: BackupProvider[K] | undefined },
): BackupProvider =>
  new Proxy(provider, {
    get(target, key, receiver) {
      if (Object.hasOwn(over, key)) return (over as Record<string | symbol, unknown>)[key]
      const v: unknown = Reflect.get(target, key, receiver)
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
    },
  })

describe('host/restore: VM disks straight from the validated chain', () => {
  let dir: string
  let store: string
  /** An incremental (a chain of two images per disk) of three disks. */
  let volname: string
  /** Device -> the raw content the restore must give. */
  const expected: Record<string, string> = {}
  let n = 0
  const fresh = (): string => join(dir, `target-${++n}`)
  const restore = async (provider: BackupProvider, extra: Partial<RestoreOptions> = {}) => {
    const target = fresh()
    const log = new TaskLog(join(dir, `log-${n}`), silentLogger())
    const r = await restoreBackup({
      provider,
      volname,
      target,
      log,
      signal: new AbortController().signal,
      ...extra,
    })
    return { r, target, log: await readFile(log.path, 'utf8') }
  }
  const provider = async (): Promise<BackupProvider> =>
    (await openStore(store)).newBackupProvider(() => undefined)
  const assertRestored = async (target: string, device: string, file?: string) => {
    const out = file ?? join(target, `${device}.raw`)
    const ref = expected[device]
    assert.ok(ref !== undefined)
    assert.ok(await compareImages(out, 'raw', ref, 'raw'), `${device} differs`)
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-host-restore-'))
    store = join(dir, 'store')
    await runCliInProcessOk(['init', store, '--vm-backup-mode', 'incremental'])
    const conf = join(dir, 'vm.conf')
    await writeFile(conf, 'name: r\n')
    const disks: string[] = []
    for (const [i, device] of DEVICES.entries()) {
      const disk = join(dir, `${device}.qcow2`)
      await sh('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(SIZE)])
      await sh('qemu-io', ['-f', 'qcow2', '-c', `write -P ${0x10 + i} 0 1M`, disk])
      disks.push('--disk', `${device.slice('drive-'.length)}=${disk}`)
    }
    await runCliInProcessOk(backupArgs(store, 100, conf, ...disks))
    for (const [i, device] of DEVICES.entries()) {
      const disk = join(dir, `${device}.qcow2`)
      await sh('qemu-io', ['-f', 'qcow2', '-c', `write -P ${0x20 + i} 2M 64k`, disk])
      expected[device] = join(dir, `${device}.expected.raw`)
      await sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, expected[device]])
    }
    const r = await runCliInProcessOk([...backupArgs(store, 100, conf, ...disks), '--json'])
    const { volid } = JSON.parse(r.stdout) as { volid: string }
    volname = volid.slice(volid.indexOf(':') + 1)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('copies every disk of a chain from its spec, without the raw source', async () => {
    // The FUSE export (restoreVmVolumeInit) is Proxmox's path: ours must not need it.
    const p = override(await provider(), {
      restoreVmVolumeInit: () => Promise.reject(new Error('the FUSE export was used')),
    })
    const { r, target, log } = await restore(p)
    assert.deepEqual(r.files, ['guest.conf', ...DEVICES.map((d) => `${d}.raw`)])
    for (const d of DEVICES) await assertRestored(target, d)
    assert.match(log, /drive-scsi0: restoring 4194304 bytes from its image chain/)
    // Sparse: of 4 MiB, 1 MiB and 64 KiB hold data.
    const st = await stat(join(target, 'drive-scsi0.raw'))
    assert.equal(st.size, SIZE)
    assert.ok(st.blocks * 512 <= 2 * MiB, `${st.blocks * 512} bytes allocated`)
  })

  it("copies a provider's raw source when it has no spec (Proxmox's FUSE file)", async () => {
    const p = override(await provider(), { restoreVmVolumeSpec: undefined })
    const { target, log } = await restore(p)
    for (const d of DEVICES) await assertRestored(target, d)
    assert.match(log, /drive-scsi0: restoring 4194304 bytes from the provider's raw source/)
  })

  it('keeps the chain pinned until the copy ends: images swapped after the check change nothing', async () => {
    const real = await provider()
    const guest = join(store, '100')
    const p = override(real, {
      restoreVmVolumeSpec: async (v, device, o) => {
        const spec = await real.restoreVmVolumeSpec?.(v, device, o)
        assert.ok(spec !== undefined)
        // Every image of the chain is replaced by another file under its name.
        const { stdout } = await sh('find', [guest, '-name', `${device}.qcow2`])
        for (const image of stdout.trim().split('\n')) {
          await rename(image, `${image}.old`)
          await sh('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(SIZE)])
          await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 4M', image])
        }
        return spec
      },
    })
    try {
      const { target } = await restore(p)
      for (const d of DEVICES) await assertRestored(target, d)
    } finally {
      const { stdout } = await sh('find', [guest, '-name', '*.qcow2.old'])
      for (const old of stdout.trim().split('\n')) await rename(old, old.slice(0, -4))
    }
  })

  it('refuses a spec that is not an explicit qcow2 chain over plain files, before copying', async () => {
    const bad: Record<string, unknown> = {
      'a data file': {
        driver: 'qcow2',
        file: { driver: 'file', filename: '/x' },
        backing: null,
        'data-file': { driver: 'file', filename: '/etc/passwd' },
      },
      'no backing given': { driver: 'qcow2', file: { driver: 'file', filename: '/x' } },
      'a raw node': { driver: 'raw', file: { driver: 'file', filename: '/x' }, backing: null },
      'an NBD file': {
        driver: 'qcow2',
        file: { driver: 'nbd', server: { type: 'unix', path: '/s' } },
        backing: null,
      },
      'a relative name': {
        driver: 'qcow2',
        file: { driver: 'file', filename: 'x' },
        backing: null,
      },
    }
    for (const [what, blockdev] of Object.entries(bad)) {
      const real = await provider()
      const p = override(real, {
        restoreVmVolumeSpec: async (v, device, o) => {
          await real.restoreVmVolumeSpec?.(v, device, o)
          return { blockdev: blockdev as never, size: SIZE }
        },
      })
      await assert.rejects(restore(p), (e: unknown) => {
        assert.ok(isBackupError(e, 'UNSAFE_IMAGE'), `${what}: ${String(e)}`)
        assert.equal(e.details?.['rule'], 'spec', what)
        return true
      })
    }
  })

  it('copies different disks two at a time, and one at a time under a bandwidth limit', async () => {
    for (const [bandwidthLimit, most] of [
      [undefined, 2],
      [1024 * MiB, 1],
    ] as const) {
      const real = await provider()
      let running = 0
      let peak = 0
      const p = override(real, {
        restoreVmVolumeSpec: async (v, device, o) => {
          running++
          peak = Math.max(peak, running)
          return (await real.restoreVmVolumeSpec?.(v, device, o)) ?? assert.fail('no spec')
        },
        restoreVmVolumeCleanup: async (v, device) => {
          running--
          await real.restoreVmVolumeCleanup(v, device)
        },
      })
      const { target } = await restore(p, { bandwidthLimit })
      for (const d of DEVICES) await assertRestored(target, d)
      assert.equal(peak, most, `bandwidth limit ${String(bandwidthLimit)}`)
    }
  })

  it('restores onto an existing file, leaving what lies beyond the disk', async () => {
    const disk = join(dir, 'existing.img')
    await writeFile(disk, Buffer.alloc(SIZE + 4096, 0xaa))
    const { r, target } = await restore(await provider(), {
      diskTargets: { 'drive-scsi1': disk },
    })
    assert.ok(r.files.includes(disk))
    assert.ok(!r.files.includes('drive-scsi1.raw'))
    const content = await readFile(disk)
    const ref = await readFile(expected['drive-scsi1'] ?? '')
    assert.ok(content.subarray(0, SIZE).equals(ref), 'the old data was overwritten, zeroes too')
    assert.ok(content.subarray(SIZE).equals(Buffer.alloc(4096, 0xaa)))
    await assertRestored(target, 'drive-scsi0')
  })

  it('refuses disk targets that are not a regular file or block device, before writing', async () => {
    const file = join(dir, 'ok.img')
    await writeFile(file, Buffer.alloc(SIZE))
    const link = join(dir, 'link.img')
    await symlink(file, link)
    const small = join(dir, 'small.img')
    await writeFile(small, Buffer.alloc(SIZE - 512))
    await mkdir(join(dir, 'a-dir'))
    const cases: [Record<string, string>, RegExp][] = [
      [{ 'drive-scsi0': link }, /is a symbolic link, not a regular file or block device/],
      [{ 'drive-scsi0': '/dev/null' }, /is a character device, not a regular file/],
      [{ 'drive-scsi0': join(dir, 'a-dir') }, /is a directory, not a regular file/],
      [{ 'drive-scsi0': join(dir, 'missing.img') }, /does not exist/],
      [{ 'drive-scsi0': small }, /has 4193792 bytes, the disk needs 4194304/],
      [
        { 'drive-scsi0': file, 'drive-scsi2': file },
        /drive-scsi0 and drive-scsi2 have the same target/,
      ],
      [{ 'drive-virtio9': file }, /the backup has no disk drive-virtio9/],
    ]
    for (const [diskTargets, why] of cases) {
      await writeFile(file, Buffer.alloc(SIZE, 0x55))
      await assert.rejects(restore(await provider(), { diskTargets }), (e: unknown) => {
        assert.ok(isBackupError(e, 'USAGE'), String(e))
        assert.match(e.message, why)
        return true
      })
      assert.ok((await readFile(file)).equals(Buffer.alloc(SIZE, 0x55)), `${why} wrote it`)
    }
  })

  it('restore --target-disk through the CLI: a target in the store is refused', async () => {
    const image = join(store, volname.slice('backup/'.length), 'drive-scsi0.qcow2')
    const r = await runCliInProcess([
      ...['restore', '--store', store, volname, '--target', fresh()],
      ...['--target-disk', `scsi0=${image}`],
    ])
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, /disk target .* lies in the store or the target/)
    const disk = join(dir, 'cli.img')
    await writeFile(disk, Buffer.alloc(SIZE))
    const target = fresh()
    const ok = await runCliInProcessOk([
      ...['restore', '--store', store, volname, '--target', target],
      ...['--target-disk', `scsi2=${disk}`],
    ])
    assert.ok(ok.stdout.split('\n').includes(disk), ok.stdout)
    await assertRestored(target, 'drive-scsi2', disk)
  })
})
