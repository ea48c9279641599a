/**
 * The storage-plugin side of the directory store: list, size, prune, free, attributes. Unlike
 * Proxmox's example (which left prune, free, parent, notes and protected as TODOs), freeing a
 * backup that others build on first merges it into its dependants, crash-safe (`merge.ts`), so
 * no chain ever breaks. Everything below the store root is reached through {@link Dir}
 * handles: nothing a writer of the store plants makes this code follow a link.
 */
import type { GuestType, ProviderLogFunction } from '../../api/provider.ts'
import type {
  BackupStorage,
  BackupVolume,
  ParsedVolname,
  PruneOptions,
  FreeImageOptions,
  PruneResultEntry,
  VolumeSizeInfo,
} from '../../api/storage.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { lockGuest } from '../../io/lock.ts'
import type { LockOperation, LockOptions, LockPolicy } from '../../io/lock.ts'
import { parseVolname, STORE_ID_DEFAULT } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { freeBackup, parentAfter, pendingRemoval, resumeRemoval } from './merge.ts'
import { sweepLeftovers } from './in-place.ts'
import type { StoreOptions } from './options.ts'
import { DirectoryProvider } from './provider.ts'
import { listFailedRuns, listGuestBackups, listGuestIds, parentsOf } from './scan.ts'
import { readBackup, unusableBackups } from './scan.ts'
import type { FoundBackup } from './scan.ts'
import type { Manifest } from './manifest.ts'
import type { FailedVolume } from './failed-runs.ts'

import { describeBackup, isProtected, NOTES_MAX_BYTES, readNotes, usedBytes } from './describe.ts'
import { proveRestored } from './verify.ts'
import { verifyStore } from './verify-store.ts'
import type { VerifyReport, VerifyStoreOptions } from './verify-store.ts'
import { pruneStore } from './prune-store.ts'

export type { FailedVolume }

/** A merge a removal did: into which backup (volume id), which disk, the bytes written. */
export interface RemovedMerge {
  child: string
  device: string
  bytes: number
}

/** The directory store. */
export class DirectoryStorage implements BackupStorage {
  readonly #layout: StoreLayout
  readonly #options: StoreOptions
  readonly #storeId: string

  readonly #bitmapKey: string
  readonly #lock: LockPolicy

  /**
   * `lock`: how this process waits for guest locks (prune, remove, and the providers it makes);
   * default: it does not wait (`LOCKED` at once).
   */
  constructor(
    layout: StoreLayout,
    options: StoreOptions,
    storeId = STORE_ID_DEFAULT,
    bitmapKey = storeId,
    lock: LockPolicy = {},
  ) {
    this.#layout = layout
    this.#options = options
    this.#storeId = storeId
    this.#bitmapKey = bitmapKey
    this.#lock = lock
  }

  /** How guest locks are waited for by this store's commands. */
  get lockPolicy(): LockPolicy {
    return this.#lock
  }

  #lockOptions(vmid: number, operation: LockOperation, log?: ProviderLogFunction): LockOptions {
    return {
      ...this.#lock,
      log: this.#lock.log ?? ((m) => log?.('info', m)),
      operation,
      what: `guest ${vmid}`,
    }
  }

  /** The store's immutable key in dirty-bitmap names (its UUID). */
  get bitmapKey(): string {
    return this.#bitmapKey
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
    return {
      path: `${this.#layout.root}/${ref.vmid}/${ref.dirName}`,
      vmid: ref.vmid,
      vtype: 'backup',
    }
  }

  /** Verify backups against their digests and record the outcomes (`verify-store.ts`). */
  verify(opts: Omit<VerifyStoreOptions, 'lock'>): Promise<VerifyReport[]> {
    return verifyStore(this.#layout, {
      ...opts,
      lock: (vmid) => this.#lockOptions(vmid, 'verify', opts.log),
    })
  }

  /**
   * Prove a restored backup against its digests: VM disks as `<restored>/<device>.raw` (what
   * `restore` writes). Undefined when proven, else the first difference.
   */
  async proveRestored(
    volname: string,
    restored: string,
    signal: AbortSignal,
  ): Promise<string | undefined> {
    await using root = await this.#layout.openRoot()
    const { guest, b } = await this.#find(root, volname)
    await using _guest = guest
    return await proveRestored(guest, b.ref, restored, signal)
  }

  async activateStorage(): Promise<void> {
    try {
      const root = await this.#layout.openRoot()
      await root.close()
    } catch (e) {
      throw new BackupError('STORE_INVALID', `store ${this.#layout.root} is unreachable`, {
        cause: e,
      })
    }
  }

  async listVolumes(opts: { vmid?: number; subtype?: GuestType } = {}): Promise<BackupVolume[]> {
    await using root = await this.#layout.openRoot()
    const out: BackupVolume[] = []
    for await (const [vmid, guest] of this.#guests(root, opts.vmid)) {
      // A removal a killed run left is shown as done: the next command completes it.
      const pending = await pendingRemoval(guest).catch(() => undefined)
      const backups = (await listGuestBackups(guest, vmid, opts.subtype)).filter(
        (b) => b.ref.volname !== pending?.volname,
      )
      const parentOf = (b: FoundBackup) =>
        b.manifest && parentAfter(pending, b.ref.volname, b.manifest)
      const unusable = unusableBackups(backups, (b) =>
        pending === undefined ? parentsOf(b) : [parentOf(b)].filter((p) => p !== undefined),
      )
      for (const b of backups) {
        out.push(
          await describeBackup(this.#layout, guest, b, {
            volid: (v) => this.#volid(v),
            parent: parentOf(b),
            broken: unusable.get(b.ref.volname),
          }),
        )
      }
    }
    return out
  }

  async volumeSizeInfo(volname: string): Promise<VolumeSizeInfo> {
    await using root = await this.#layout.openRoot()
    const { guest, b } = await this.#find(root, volname)
    await using _guest = guest
    const m = b.manifest
    if (m === undefined)
      throw new BackupError('ARCHIVE_INVALID', `${volname} has no valid manifest`)
    let size = 0
    for (const [name, bytes] of Object.entries(m.files)) {
      const disk = Object.values(m.disks ?? {}).find((d) => d.file === name)
      size += disk ? disk.size : bytes
    }
    return {
      size,
      format: 'directory',
      used: await usedBytes(guest, b.ref),
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
    await using root = await this.#layout.openRoot()
    const { guest, b } = await this.#find(root, volname)
    await using _guest = guest
    if (attribute === 'protected') return await isProtected(this.#layout, guest, b.ref)
    return await readNotes(this.#layout, guest, b.ref)
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
    await using root = await this.#layout.openRoot()
    const { guest, b } = await this.#find(root, volname)
    await using _guest = guest
    if (attribute === 'notes') {
      const notes = String(value)
      const name = this.#layout.notesName(b.ref)
      if (Buffer.byteLength(notes) > NOTES_MAX_BYTES) {
        throw new BackupError('USAGE', `notes are limited to ${NOTES_MAX_BYTES} bytes`)
      }
      if (notes === '') await guest.unlink(name)
      else await guest.writeFileAtomic(name, notes)
      return
    }
    const name = this.#layout.protectedName(b.ref)
    if (value !== true) {
      await guest.unlink(name)
      return
    }
    if (await isProtected(this.#layout, guest, b.ref)) return
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
    await guest.writeFileAtomic(name, '')
  }

  async freeImage(volname: string, opts: FreeImageOptions = {}): Promise<void> {
    await this.removeBackup(volname, opts)
  }

  /**
   * {@link freeImage}, reporting what went: the bytes the backup occupied (0 when this
   * completed an interrupted removal of it) and the merges into its dependants.
   */
  async removeBackup(
    volname: string,
    opts: FreeImageOptions = {},
  ): Promise<{ bytes: number; merges: RemovedMerge[] }> {
    const ref = parseVolname(volname)
    const log = opts.log ?? (() => undefined)
    await using root = await this.#layout.openRoot()
    await using guest = await root.tryOpenDir(String(ref.vmid))
    if (guest === undefined) throw new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    await using _lock = await lockGuest(guest, this.#lockOptions(ref.vmid, 'remove', log))
    // The journal first: a killed `remove` of this very backup, run again, finishes it.
    const resumed = await resumeRemoval(this.#layout, guest, { log })
    await sweepLeftovers(log, guest, ref.vmid)
    if (resumed === ref.volname) return { bytes: 0, merges: [] }
    const bytes = await usedBytes(guest, ref).catch(() => 0)
    const merges = await freeBackup(this.#layout, guest, ref, {
      log,
      onProgress: opts.onProgress,
    })
    return { bytes, merges: merges.map((m) => this.#merge(m)) }
  }

  /** A merge as reported: the dependant by volume id, the device and the bytes written. */
  #merge(m: { child: string; device: string; bytes: number }): RemovedMerge {
    return { child: this.#volid(m.child), device: m.device, bytes: m.bytes }
  }

  async pruneBackups(opts: PruneOptions): Promise<PruneResultEntry[]> {
    return pruneStore(
      {
        layout: this.#layout,
        options: this.#options,
        listVolumes: (vmid) => this.listVolumes(vmid === undefined ? {} : { vmid }),
        lockOptions: (vmid, log) => this.#lockOptions(vmid, 'prune', log),
        merge: (m) => this.#merge(m),
        volid: (volname) => this.#volid(volname),
      },
      opts,
    )
  }

  /**
   * Failed backup runs (`<type>-<time>.failed`, holding their task log), newest first per guest:
   * guestbackup's extension beside Proxmox's volume list, which shows only backups.
   */
  async listFailed(opts: { vmid?: number; subtype?: GuestType } = {}): Promise<FailedVolume[]> {
    await using root = await this.#layout.openRoot()
    const out: FailedVolume[] = []
    for await (const [vmid, guest] of this.#guests(root, opts.vmid)) {
      for (const f of await listFailedRuns(guest, vmid, opts.subtype)) {
        out.push({
          volid: this.#volid(f.ref.volname),
          vmid,
          subtype: f.ref.subtype,
          ctime: f.ref.ctime,
          error: f.error,
          log: `${this.#layout.root}/${vmid}/${this.#layout.failedName(f.ref)}/backup.log`,
        })
      }
    }
    return out
  }

  /** The task log path of the failed run that would have been `volid`, if it was kept. */
  async failedLog(volid: string): Promise<string | undefined> {
    const ref = parseVolname(volid.slice(volid.indexOf(':') + 1))
    const runs = await this.listFailed({ vmid: ref.vmid, subtype: ref.subtype })
    return runs.find((r) => r.ctime === ref.ctime)?.log
  }

  /** Create the provider writing to this store. */
  newBackupProvider(log: ProviderLogFunction): DirectoryProvider {
    return new DirectoryProvider(this.#layout, this.#options, log, this.#lock)
  }

  /**
   * A provider continuing the session a suspended one exported (see
   * {@link DirectoryProvider.resume}); `SESSION_INVALID` for a session this store could not
   * have made.
   */
  resumeBackupProvider(log: ProviderLogFunction, session: unknown): Promise<DirectoryProvider> {
    return DirectoryProvider.resume(this.#layout, this.#options, log, session, this.#lock)
  }

  /** The manifest of the backup `volname`: what was stored, how, and with which warnings. */
  async manifestOf(volname: string): Promise<Manifest> {
    await using root = await this.#layout.openRoot()
    const { guest, b } = await this.#find(root, volname)
    await guest.close()
    if (b.manifest === undefined) {
      throw new BackupError('ARCHIVE_INVALID', `${volname} has no valid manifest`)
    }
    return b.manifest
  }

  #volid(volname: string): string {
    return `${this.#storeId}:${volname}`
  }

  /** Complete an interrupted removal in a guest directory (the caller holds its lock). */
  async resume(guest: Dir, log?: ProviderLogFunction): Promise<void> {
    await resumeRemoval(this.#layout, guest, { log })
  }

  /** The directories of the store's guests (or of `vmid` only), each open while it is used. */
  async *#guests(root: Dir, vmid?: number): AsyncGenerator<[number, Dir]> {
    for (const id of vmid === undefined ? await listGuestIds(root) : [vmid]) {
      await using guest = await root.tryOpenDir(String(id))
      if (guest !== undefined) yield [id, guest]
    }
  }

  async #find(root: Dir, volname: string): Promise<{ guest: Dir; b: FoundBackup }> {
    const ref = parseVolname(volname)
    const guest = await root.tryOpenDir(String(ref.vmid))
    const b = guest === undefined ? undefined : await readBackup(guest, ref)
    if (guest === undefined || b === undefined) {
      await guest?.close()
      throw new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    }
    return { guest, b }
  }
}
