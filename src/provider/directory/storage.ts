/**
 * The storage-plugin side of the directory store: list, size, prune, free, attributes. Unlike
 * Proxmox's example (which left prune, free, parent, notes and protected as TODOs), freeing a
 * backup that others build on first merges it into its dependants (`qemu-img rebase` in safe
 * mode onto its own parent), so no chain ever breaks.
 */
import { readFile, rm, stat, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { GuestType, ProviderLogFunction } from '../../api/provider.ts'
import type {
  BackupStorage,
  BackupVolume,
  ParsedVolname,
  PruneOptions,
  PruneResultEntry,
  VolumeSizeInfo,
} from '../../api/storage.ts'
import { BackupError } from '../../errors.ts'
import { lockGuest } from '../../io/lock.ts'
import { run } from '../../io/spawn.ts'
import { validateChain } from '../../qemu/chain.ts'
import { parsePruneBackups } from '../../storage/prune-options.ts'
import { planPrune } from '../../storage/prune.ts'
import { allocatedBytes, pathExists } from './fsutil.ts'
import { parseVolname, STORE_ID_DEFAULT } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest, writeManifest } from './manifest.ts'
import type { StoreOptions } from './options.ts'
import { DirectoryProvider } from './provider.ts'
import { listGuestBackups, listGuestIds } from './scan.ts'
import type { FoundBackup } from './scan.ts'

/** The directory store. */
export class DirectoryStorage implements BackupStorage {
  readonly #layout: StoreLayout
  readonly #options: StoreOptions
  readonly #storeId: string

  constructor(layout: StoreLayout, options: StoreOptions, storeId = STORE_ID_DEFAULT) {
    this.#layout = layout
    this.#options = options
    this.#storeId = storeId
  }

  /** The store id, prefix of volume ids. */
  get storeId(): string {
    return this.#storeId
  }

  /** The validated store options. */
  get options(): StoreOptions {
    return this.#options
  }

  parseVolname(volname: string): ParsedVolname {
    const ref = parseVolname(volname)
    return { vtype: 'backup', name: ref.archiveName, vmid: ref.vmid, subtype: ref.subtype }
  }

  path(volname: string): { path: string; vmid: number; vtype: 'backup' } {
    const ref = parseVolname(volname)
    return { path: this.#layout.backupDir(ref), vmid: ref.vmid, vtype: 'backup' }
  }

  async activateStorage(): Promise<void> {
    try {
      const st = await stat(this.#layout.root)
      if (!st.isDirectory()) throw new Error('not a directory')
    } catch (e) {
      throw new BackupError('STORE_INVALID', `store ${this.#layout.root} is unreachable`, {
        cause: e,
      })
    }
  }

  async listVolumes(opts: { vmid?: number; subtype?: GuestType } = {}): Promise<BackupVolume[]> {
    const ids = opts.vmid === undefined ? await listGuestIds(this.#layout) : [opts.vmid]
    const out: BackupVolume[] = []
    for (const vmid of ids) {
      for (const b of await listGuestBackups(this.#layout, vmid, opts.subtype)) {
        out.push(await this.#describe(b))
      }
    }
    return out
  }

  async volumeSizeInfo(volname: string): Promise<VolumeSizeInfo> {
    const b = await this.#find(volname)
    const m = b.manifest
    if (m === undefined) throw new BackupError('ARCHIVE_INVALID', `${volname} has no manifest`)
    let size = 0
    for (const [name, bytes] of Object.entries(m.files)) {
      const disk = Object.values(m.disks ?? {}).find((d) => d.file === name)
      size += disk ? disk.size : bytes
    }
    return {
      size,
      format: 'directory',
      used: await allocatedBytes(b.dir),
      ...(m.parent ? { parent: this.#volid(m.parent) } : {}),
      ctime: b.ref.ctime,
    }
  }

  async getVolumeAttribute(volname: string, attribute: 'notes'): Promise<string | undefined>
  async getVolumeAttribute(volname: string, attribute: 'protected'): Promise<boolean>
  async getVolumeAttribute(
    volname: string,
    attribute: 'notes' | 'protected',
  ): Promise<string | boolean | undefined> {
    const b = await this.#find(volname)
    if (attribute === 'protected') return pathExists(this.#layout.protectedFile(b.ref))
    try {
      return await readFile(this.#layout.notesFile(b.ref), 'utf8')
    } catch {
      return undefined
    }
  }

  async updateVolumeAttribute(volname: string, attribute: 'notes', value: string): Promise<void>
  async updateVolumeAttribute(
    volname: string,
    attribute: 'protected',
    value: boolean,
  ): Promise<void>
  async updateVolumeAttribute(
    volname: string,
    attribute: 'notes' | 'protected',
    value: string | boolean,
  ): Promise<void> {
    const b = await this.#find(volname)
    if (attribute === 'notes') {
      const notes = String(value)
      if (notes === '') await rm(this.#layout.notesFile(b.ref), { force: true })
      else await writeFile(this.#layout.notesFile(b.ref), notes, { mode: 0o600 })
      return
    }
    const file = this.#layout.protectedFile(b.ref)
    if (value !== true) {
      await rm(file, { force: true })
      return
    }
    if (await pathExists(file)) return
    const max = this.#options['max-protected-backups']
    if (max >= 0) {
      const same = await this.listVolumes({ vmid: b.ref.vmid, subtype: b.ref.subtype })
      const count = same.filter((v) => v.protected).length
      if (count >= max) {
        throw new BackupError(
          'PROTECTED',
          `the number of protected backups per guest is limited to ${max} on this store`,
        )
      }
    }
    await writeFile(file, '', { mode: 0o600 })
  }

  async freeImage(volname: string): Promise<void> {
    const ref = parseVolname(volname)
    await using _lock = await lockGuest(this.#layout.guestDir(ref.vmid))
    await this.#free(ref, undefined)
  }

  async pruneBackups(opts: PruneOptions): Promise<PruneResultEntry[]> {
    const keep = opts.keep ?? parsePruneBackups(this.#options['prune-backups'])
    const volumes = await this.listVolumes(opts.vmid === undefined ? {} : { vmid: opts.vmid })
    const plan = planPrune(
      volumes.map((v) => ({
        volid: v.volid,
        ctime: v.ctime,
        protected: v.protected,
        vmid: v.vmid,
        subtype: v.subtype,
      })),
      keep,
      {
        ...(opts.vmid === undefined ? {} : { vmid: opts.vmid }),
        ...(opts.type === undefined ? {} : { subtype: opts.type }),
      },
    )
    const result: PruneResultEntry[] = plan.map((p) => ({
      volid: p.volid,
      ctime: p.ctime,
      mark: p.mark,
      type: p.subtype,
      vmid: p.vmid,
    }))
    if (opts.dryRun) return result
    let errors = 0
    // Oldest first, so a removed base is merged into a dependant that is itself kept.
    for (const r of [...result].reverse()) {
      if (r.mark !== 'remove') continue
      const volname = r.volid.slice(r.volid.indexOf(':') + 1)
      try {
        const ref = parseVolname(volname)
        await using _lock = await lockGuest(this.#layout.guestDir(ref.vmid))
        await this.#free(ref, opts.log)
        opts.log?.('info', `removed ${r.volid}`)
      } catch (e) {
        errors++
        opts.log?.('err', `cannot remove ${r.volid}: ${(e as Error).message}`)
      }
    }
    if (errors > 0) throw new BackupError('IO', 'error pruning backups - check log')
    return result
  }

  /** Create the provider writing to this store. */
  newBackupProvider(log: ProviderLogFunction): DirectoryProvider {
    return new DirectoryProvider(this.#layout, this.#options, log)
  }

  #volid(volname: string): string {
    return `${this.#storeId}:${volname}`
  }

  async #find(volname: string): Promise<FoundBackup> {
    const ref = parseVolname(volname)
    const found = (await listGuestBackups(this.#layout, ref.vmid, ref.subtype)).find(
      (b) => b.ref.ctime === ref.ctime,
    )
    if (found === undefined) throw new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    return found
  }

  async #describe(b: FoundBackup): Promise<BackupVolume> {
    let notes: string | undefined
    try {
      notes = (await readFile(this.#layout.notesFile(b.ref), 'utf8')).split('\n')[0]
    } catch {
      notes = undefined
    }
    const parent = b.manifest?.parent
    return {
      volid: this.#volid(b.ref.volname),
      vmid: b.ref.vmid,
      subtype: b.ref.subtype,
      ctime: b.ref.ctime,
      size: await allocatedBytes(b.dir),
      format: 'directory',
      ...(parent === undefined ? {} : { parent: this.#volid(parent) }),
      protected: await pathExists(this.#layout.protectedFile(b.ref)),
      ...(notes === undefined || notes === '' ? {} : { notes }),
      content: 'backup',
    }
  }

  /** Free one backup; merge it into the backups that use it as backing first. */
  async #free(ref: VolumeRef, log: ProviderLogFunction | undefined): Promise<void> {
    const dir = this.#layout.backupDir(ref)
    if (!(await pathExists(dir))) {
      throw new BackupError('NOT_FOUND', `backup ${ref.volname} does not exist`)
    }
    if (await pathExists(this.#layout.protectedFile(ref))) {
      throw new BackupError('PROTECTED', `cannot remove protected backup ${ref.volname}`)
    }
    const me = await readManifest(dir)
    const guestDir = this.#layout.guestDir(ref.vmid)
    for (const child of await listGuestBackups(this.#layout, ref.vmid, ref.subtype)) {
      const cm = child.manifest
      if (cm === undefined) continue
      let changed = false
      for (const [device, disk] of Object.entries(cm.disks ?? {})) {
        if (disk.parent !== ref.volname) continue
        const own = me.disks?.[device]
        const newParent = own?.parent
        const newBacking =
          newParent === undefined || own === undefined
            ? ''
            : `../${parseVolname(newParent).dirName}/${own.file}`
        const childImage = join(child.dir, disk.file)
        await validateChain(childImage, guestDir)
        log?.('info', `merging ${ref.volname} ${device} into ${child.ref.volname}`)
        // Safe-mode rebase copies every cluster that differs between the old and the new
        // backing into the child; the header changes last, so a crash leaves a valid chain.
        const args = ['rebase', '-q', '-f', 'qcow2', '-b', newBacking]
        if (newBacking !== '') args.push('-F', 'qcow2')
        args.push(disk.file)
        await run('qemu-img', args, { cwd: child.dir, errorCode: 'QEMU_TOOL_FAILED' })
        const { parent: _p, ...diskRest } = disk
        cm.disks = {
          ...cm.disks,
          [device]: newParent === undefined ? diskRest : { ...diskRest, parent: newParent },
        }
        changed = true
      }
      if (changed) {
        const parents = Object.values(cm.disks ?? {})
          .map((d) => d.parent)
          .filter((p): p is string => p !== undefined)
        const { parent: _old, ...rest } = cm
        await writeManifest(child.dir, { ...rest, ...(parents[0] ? { parent: parents[0] } : {}) })
      }
    }
    // Remove the manifest first: from then on the backup is not listed, even if rm stops.
    await unlink(join(dir, 'manifest.json'))
    await rm(dir, { recursive: true, force: true })
    await rm(this.#layout.notesFile(ref), { force: true })
    await rm(this.#layout.failedDir(ref), { recursive: true, force: true })
  }
}
