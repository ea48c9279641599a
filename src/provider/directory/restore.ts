/**
 * The restore half of the directory provider. VM disks: the stored qcow2 chain is validated as
 * untrusted (`openChain`: every level a regular file in a backup directory of the guest, reached
 * without following links, qcow2 backing format, no data file, no protocol, no loop) and then
 * exported read-only by qemu-storage-daemon from an explicit spec naming the pinned files, as a
 * FUSE *regular file* of raw data in a private 0700 dir: qemu-server `stat`s the
 * `qemu-img-path` and runs its untrusted-image check on it (`restore_external_archive` in
 * qemu-server `PVE/QemuServer.pm`, `file_size_info` in pve-storage `PVE/Storage/Plugin.pm`),
 * which an NBD URI fails. Proxmox's example used a kernel NBD device; we never use one.
 * guestbackup's own host asks instead for the same pinned chain as an explicit spec
 * (`restoreVmVolumeSpec`) and lets `qemu-img convert` read the images directly. Containers:
 * the tar archive as is, or the squashfs image mounted with squashfuse (no loop device, no
 * mount), both pinned until the restore's cleanup.
 */
import { parseIdMapEntry, validateIdMap } from '../../api/idmap-parse.ts'
import { mkdir, rm, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import type {
  CallOptions,
  ProviderLogFunction,
  RestoreContainer,
  RestoreMechanism,
  RestoreVmVolume,
  RestoreVmVolumeSpec,
  VolumeSize,
} from '../../api/provider.ts'
import { mountSquashfs } from '../../archive/squashfs.ts'
import { BackupError, isBackupError, toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import { chainSpec, openChain } from '../../qemu/chain.ts'
import type { Qcow2Spec } from '../../qemu/chain.ts'
import { startFuseExport } from '../../qemu/fuse-export.ts'
import { BACKUP_DIR_RE, parseVolname } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'

/** Upper bound of a stored guest or firewall config (they are a few KiB). */
export const CONFIG_MAX_BYTES = 1024 * 1024

/** An opened committed backup: its guest directory, its directory and its manifest. */
interface OpenBackup extends AsyncDisposable {
  ref: VolumeRef
  guest: Dir
  dir: Dir
  m: Manifest
}

/** A disk's chain, pinned and held under `key` until the volume's cleanup. */
interface PinnedDisk {
  key: string
  spec: Qcow2Spec
  size: number
}

/** Restore calls and archive config access of the directory provider. */
export class DirectoryRestore {
  readonly #layout: StoreLayout
  readonly #log: ProviderLogFunction
  /** What a restore holds until its cleanup call: servers, mounts, pinned files. */
  readonly #held = new Map<string, AsyncDisposable[]>()

  constructor(layout: StoreLayout, log: ProviderLogFunction) {
    this.#layout = layout
    this.#log = log
  }

  /** Resolve a volume name to a committed backup and its manifest; `NOT_FOUND` otherwise. */
  async #open(volname: string): Promise<OpenBackup> {
    const ref = parseVolname(volname)
    const missing = (): BackupError =>
      new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    await using root = await this.#layout.openRoot()
    const guest = await root.tryOpenDir(String(ref.vmid))
    if (guest === undefined) throw missing()
    let dir: Dir | undefined
    try {
      dir = await guest.tryOpenDir(ref.dirName)
      if (dir === undefined || (await dir.lstat('manifest.json')) === undefined) throw missing()
      const m = await readManifest(dir, ref)
      const close = async (): Promise<void> => {
        await dir?.close()
        await guest.close()
      }
      return { ref, guest, dir, m, [Symbol.asyncDispose]: close }
    } catch (e) {
      await dir?.close()
      await guest.close()
      throw e
    }
  }

  #hold(key: string, what: AsyncDisposable): void {
    const list = this.#held.get(key) ?? []
    list.push(what)
    this.#held.set(key, list)
  }

  async #release(key: string): Promise<void> {
    const list = this.#held.get(key) ?? []
    this.#held.delete(key)
    // Everything is released even if one release fails (an export that cannot be unmounted
    // must not keep the chain pinned forever); the first error is reported.
    let first: unknown
    for (const h of list.reverse()) {
      try {
        await h[Symbol.asyncDispose]()
      } catch (e) {
        first ??= e
      }
    }
    if (first !== undefined) throw toBackupError(first)
  }

  async restoreGetMechanism(volname: string): Promise<RestoreMechanism> {
    await using b = await this.#open(volname)
    if (b.m.type === 'qemu') return { mechanism: 'qemu-img', vmtype: 'qemu' }
    if (b.m.container?.format === 'squashfs') return { mechanism: 'directory', vmtype: 'lxc' }
    return { mechanism: 'tar', vmtype: 'lxc' }
  }

  async archiveGetGuestConfig(volname: string): Promise<string> {
    await using b = await this.#open(volname)
    return await this.#readConfig(b, 'guest.conf', 'guest config')
  }

  async archiveGetFirewallConfig(volname: string): Promise<string | undefined> {
    await using b = await this.#open(volname)
    if (!b.m.firewall) return undefined
    return await this.#readConfig(b, 'firewall.conf', 'firewall config')
  }

  async #readConfig(b: OpenBackup, name: string, what: string): Promise<string> {
    try {
      return await b.dir.readFile(name, CONFIG_MAX_BYTES)
    } catch (e) {
      const why = isBackupError(e, 'NOT_FOUND') ? 'is missing' : 'is unusable'
      throw new BackupError('ARCHIVE_INVALID', `the ${what} of ${b.ref.volname} ${why}`, {
        cause: e,
      })
    }
  }

  async restoreVmInit(
    volname: string,
    _opts: CallOptions,
  ): Promise<Readonly<Record<string, VolumeSize>>> {
    await using b = await this.#open(volname)
    if (b.m.type !== 'qemu' || b.m.disks === undefined) {
      throw new BackupError('USAGE', `${volname} is not a VM backup`)
    }
    const out: Record<string, VolumeSize> = {}
    for (const [device, d] of Object.entries(b.m.disks)) out[device] = { size: d.size }
    return out
  }

  /**
   * Validate and pin the chain of `deviceName` (held until the volume's cleanup) and check its
   * size against the manifest; on failure nothing stays held.
   */
  async #pinDisk(volname: string, deviceName: string, opts: CallOptions): Promise<PinnedDisk> {
    await using b = await this.#open(volname)
    const disk = b.m.disks?.[deviceName]
    if (disk === undefined) {
      throw new BackupError('NOT_FOUND', `${volname} has no disk ${deviceName}`)
    }
    const key = `${volname}\0${deviceName}`
    const chain = await openChain(b.guest, b.ref.dirName, disk.file, {
      dirName: BACKUP_DIR_RE,
      signal: opts.signal,
    })
    this.#hold(key, chain)
    if (chain.links[0]?.virtualSize !== disk.size) {
      await this.#release(key)
      throw new BackupError('ARCHIVE_INVALID', `${deviceName} size differs from the manifest`)
    }
    this.#log('info', `${deviceName}: chain of ${chain.links.length} image(s) verified`)
    return { key, spec: chainSpec(chain.links), size: disk.size }
  }

  async restoreVmVolumeInit(
    volname: string,
    deviceName: string,
    opts: CallOptions,
  ): Promise<RestoreVmVolume> {
    const { key, spec, size } = await this.#pinDisk(volname, deviceName, opts)
    try {
      const exported = await startFuseExport({ spec, size, signal: opts.signal })
      this.#hold(key, exported)
      return { qemuImgPath: exported.path }
    } catch (e) {
      await this.#release(key)
      throw e
    }
  }

  /**
   * The extension guestbackup's own restore uses: the same validated, pinned chain as
   * {@link restoreVmVolumeInit}, as an explicit spec instead of a FUSE export of it.
   */
  async restoreVmVolumeSpec(
    volname: string,
    deviceName: string,
    opts: CallOptions,
  ): Promise<RestoreVmVolumeSpec> {
    const { spec, size } = await this.#pinDisk(volname, deviceName, opts)
    return { blockdev: spec, size }
  }

  async restoreVmVolumeCleanup(volname: string, deviceName: string): Promise<void> {
    await this.#release(`${volname}\0${deviceName}`)
  }

  async restoreVmCleanup(volname: string): Promise<void> {
    let first: unknown
    for (const key of [...this.#held.keys()]) {
      if (key.startsWith(`${volname}\0`))
        await this.#release(key).catch((e: unknown) => (first ??= e))
    }
    if (first !== undefined) throw toBackupError(first)
  }

  async restoreContainerInit(volname: string, opts: CallOptions): Promise<RestoreContainer> {
    await using b = await this.#open(volname)
    const c = b.m.container
    if (b.m.type !== 'lxc' || c === undefined) {
      throw new BackupError('USAGE', `${volname} is not a container backup`)
    }
    const pin = await b.dir.tryPin(c.file)
    if (pin === undefined) throw new BackupError('ARCHIVE_INVALID', `${volname} lacks ${c.file}`)
    this.#hold(volname, pin)
    const map = c.idmap === undefined ? {} : { idMap: validateIdMap(c.idmap.map(parseIdMapEntry)) }
    try {
      if (c.format === 'tar') {
        // pve-container picks the decompressor by the path's suffix and refuses a path not
        // ending in `.tar` or `.tar.<ext>` (src/PVE/LXC/Create.pm, tar_compression_option):
        // a pinned file's `/proc/<pid>/fd/<n>` has none. A private symlink with the archive's
        // own name names exactly the pinned file.
        const named = await makeTempDir('guestbackup-tar-')
        this.#hold(volname, named)
        const link = join(named.path, c.file)
        await symlink(pin.path, link)
        return { tarPath: link, ...map }
      }
      const tmp = await makeTempDir('guestbackup-sqfs-')
      this.#hold(volname, tmp)
      const mnt = join(tmp.path, 'root')
      await mkdir(mnt)
      const mount = await mountSquashfs(pin.path, mnt, { signal: opts.signal })
      this.#hold(volname, {
        [Symbol.asyncDispose]: async () => {
          await mount[Symbol.asyncDispose]()
          await rm(mnt, { recursive: true, force: true })
        },
      })
      const acls = c.acls === undefined ? undefined : await b.dir.tryPin(c.acls)
      if (c.acls !== undefined && acls === undefined) {
        throw new BackupError('ARCHIVE_INVALID', `${volname} lacks ${c.acls}`)
      }
      if (acls !== undefined) this.#hold(volname, acls)
      return {
        archiveDirectory: mnt,
        squashfsImage: pin.path,
        ...(acls === undefined ? {} : { posixAcls: acls.path }),
        ...map,
      }
    } catch (e) {
      await this.#release(volname)
      throw e
    }
  }

  async restoreContainerCleanup(volname: string): Promise<void> {
    await this.#release(volname)
  }
}
