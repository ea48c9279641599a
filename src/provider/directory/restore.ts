/**
 * The restore half of the directory provider. VM disks: the stored qcow2 chain is validated as
 * untrusted (every level inside the guest dir, qcow2 backing format, no data file, no protocol,
 * no loop) and then served read-only by qemu-nbd from an explicit `json:` chain spec that
 * ignores the header names, as raw data on a private unix socket (Proxmox's example bypassed this
 * check with a kernel NBD device; we never use one). Containers: the tar archive as is, or the
 * squashfs image mounted with squashfuse (no loop device, no mount).
 */
import { mkdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type {
  CallOptions,
  ProviderLogFunction,
  RestoreContainer,
  RestoreMechanism,
  RestoreVmVolume,
  VolumeSize,
} from '../../api/provider.ts'
import { mountSquashfs } from '../../archive/squashfs.ts'
import { BackupError } from '../../errors.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import { chainJson, validateChain } from '../../qemu/chain.ts'
import { startQemuNbd } from '../../qemu/nbd-server.ts'
import type { QemuNbd } from '../../qemu/nbd-server.ts'
import { MANIFEST, parseVolname } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'
import { pathExists } from './fsutil.ts'

/** Restore calls and archive config access of the directory provider. */
export class DirectoryRestore {
  /** The store's layout. */
  protected readonly layout: StoreLayout
  readonly #log: ProviderLogFunction
  readonly #servers = new Map<string, QemuNbd>()
  readonly #mounts = new Map<string, AsyncDisposable>()

  constructor(layout: StoreLayout, log: ProviderLogFunction) {
    this.layout = layout
    this.#log = log
  }

  /** True if a committed backup with this reference exists. */
  protected async exists(ref: VolumeRef): Promise<boolean> {
    return pathExists(this.layout.backupDir(ref))
  }

  /** Resolve a volume name to a committed backup and its manifest; `NOT_FOUND` otherwise. */
  protected async open(volname: string): Promise<{ ref: VolumeRef; dir: string; m: Manifest }> {
    const ref = parseVolname(volname)
    const dir = this.layout.backupDir(ref)
    if (!(await pathExists(join(dir, MANIFEST)))) {
      throw new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    }
    const m = await readManifest(dir)
    if (m.vmid !== ref.vmid || m.type !== ref.subtype || m.archiveName !== ref.archiveName) {
      throw new BackupError('ARCHIVE_INVALID', `manifest of ${volname} names another backup`)
    }
    return { ref, dir, m }
  }

  async restoreGetMechanism(volname: string): Promise<RestoreMechanism> {
    const { m } = await this.open(volname)
    if (m.type === 'qemu') return { mechanism: 'qemu-img', vmtype: 'qemu' }
    if (m.container?.format === 'squashfs') return { mechanism: 'directory', vmtype: 'lxc' }
    return { mechanism: 'tar', vmtype: 'lxc' }
  }

  async archiveGetGuestConfig(volname: string): Promise<string> {
    const { dir } = await this.open(volname)
    try {
      return await readFile(join(dir, 'guest.conf'), 'utf8')
    } catch (e) {
      throw new BackupError('ARCHIVE_INVALID', `backup ${volname} has no guest config`, {
        cause: e,
      })
    }
  }

  async archiveGetFirewallConfig(volname: string): Promise<string | undefined> {
    const { dir, m } = await this.open(volname)
    if (!m.firewall) return undefined
    try {
      return await readFile(join(dir, 'firewall.conf'), 'utf8')
    } catch (e) {
      throw new BackupError('ARCHIVE_INVALID', `firewall config of ${volname} is missing`, {
        cause: e,
      })
    }
  }

  async restoreVmInit(
    volname: string,
    _opts: CallOptions,
  ): Promise<Readonly<Record<string, VolumeSize>>> {
    const { m } = await this.open(volname)
    if (m.type !== 'qemu' || m.disks === undefined) {
      throw new BackupError('USAGE', `${volname} is not a VM backup`)
    }
    const out: Record<string, VolumeSize> = {}
    for (const [device, d] of Object.entries(m.disks)) out[device] = { size: d.size }
    return out
  }

  async restoreVmVolumeInit(
    volname: string,
    deviceName: string,
    opts: CallOptions,
  ): Promise<RestoreVmVolume> {
    const { ref, dir, m } = await this.open(volname)
    const disk = m.disks?.[deviceName]
    if (disk === undefined) {
      throw new BackupError('NOT_FOUND', `${volname} has no disk ${deviceName}`)
    }
    const chain = await validateChain(
      join(dir, disk.file),
      this.layout.guestDir(ref.vmid),
      opts.signal,
    )
    if (chain[0]?.virtualSize !== disk.size) {
      throw new BackupError('ARCHIVE_INVALID', `${deviceName} size differs from the manifest`)
    }
    this.#log('info', `${deviceName}: chain of ${chain.length} image(s) verified`)
    const server = await startQemuNbd({
      image: chainJson(chain),
      readOnly: true,
      exportName: deviceName,
      signal: opts.signal,
    })
    this.#servers.set(`${volname}\0${deviceName}`, server)
    return { qemuImgPath: server.uri }
  }

  async restoreVmVolumeCleanup(volname: string, deviceName: string): Promise<void> {
    const key = `${volname}\0${deviceName}`
    const server = this.#servers.get(key)
    this.#servers.delete(key)
    await server?.stop()
  }

  async restoreVmCleanup(volname: string): Promise<void> {
    for (const [key, server] of this.#servers) {
      if (key.startsWith(`${volname}\0`)) {
        this.#servers.delete(key)
        await server.stop()
      }
    }
  }

  async restoreContainerInit(volname: string, opts: CallOptions): Promise<RestoreContainer> {
    const { dir, m } = await this.open(volname)
    if (m.type !== 'lxc' || m.container === undefined) {
      throw new BackupError('USAGE', `${volname} is not a container backup`)
    }
    const file = join(dir, m.container.file)
    if (!(await pathExists(file))) {
      throw new BackupError('ARCHIVE_INVALID', `${volname} lacks ${m.container.file}`)
    }
    if (m.container.format === 'tar') return { tarPath: file }
    const tmp = await makeTempDir('guestbackup-sqfs-')
    const mnt = join(tmp.path, 'root')
    await mkdir(mnt)
    try {
      const mount = await mountSquashfs(file, mnt, { signal: opts.signal })
      this.#mounts.set(volname, {
        [Symbol.asyncDispose]: async () => {
          await mount[Symbol.asyncDispose]()
          await rm(tmp.path, { recursive: true, force: true })
        },
      })
      return { archiveDirectory: mnt }
    } catch (e) {
      await tmp.remove()
      throw e
    }
  }

  async restoreContainerCleanup(volname: string): Promise<void> {
    const mount = this.#mounts.get(volname)
    this.#mounts.delete(volname)
    await mount?.[Symbol.asyncDispose]()
  }
}
