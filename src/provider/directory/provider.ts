/**
 * The directory provider: Proxmox's DirectoryExample with every TODO and review point solved.
 * VM disks become qcow2 images (incrementals: backing-file chains by relative path), written
 * through qemu-nbd on private unix sockets; containers become a tar or squashfs archive. A backup
 * is built in a hidden `.partial-*` dir and renamed into place at the end of `backupVm` /
 * `backupContainer`, after all data and `manifest.json` are synced: vzdump sets notes and
 * protection and prunes by volume id before it calls `backup_cleanup` (pve-manager
 * `PVE/VZDump.pm`, `exec_backup_task`), so the backup must be listed when those return, and a
 * backup whose data did not complete is never listed. `backupCleanup(false)` removes it again.
 *
 * An unprivileged container's archive is written by its mapped root in a forked child (pve-container
 * `src/PVE/VZDump/LXC.pm`, `run_in_userns`), which cannot rename in the root-owned guest dir:
 * `backupContainerPrepare` moves the partial dir to its final name at once, hands it to that
 * uid and lets it search the store root and guest dir (POSIX ACL `x`, no read); the child's
 * manifest is the commit (a dir is listed once it has one), and `backupCleanup` takes the
 * backup back (root-owned, ACL entries removed).
 */
import { mkdir } from 'node:fs/promises'
import type {
  BackupCleanupResult,
  BackupInfo,
  BackupInitResult,
  BackupMechanism,
  BackupProvider,
  ContainerBackupInfo,
  GuestType,
  IncrementalQuery,
  ProviderLogFunction,
  VmVolume,
  VolumeSize,
} from '../../api/provider.ts'
import { formatIdMapEntry } from '../../api/idmap-parse.ts'
import type { ProgressInfo } from '../../api/progress.ts'
import { BackupError, toBackupError, withSpaceIn } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { lockGuest } from '../../io/lock.ts'
import type { GuestLock, LockOptions, LockPolicy } from '../../io/lock.ts'
import { volumeRef } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { resumeRemoval } from './merge.ts'
import { grantSearch } from '../../io/acl.ts'
import { digestOf } from './digests.ts'
import type { StoreOptions } from './options.ts'
import { DirectoryRestore } from './restore.ts'
import { findIncrementalBase } from './incremental.ts'
import type { IncrementalBase } from './incremental.ts'
import { allocatedBytes } from './fsutil.ts'
import { readBitmapRecord, writeBitmapRecord } from './bitmap-record.ts'
import { backupVmDisks } from './backup-data.ts'
import { archiveFileOf } from './archive-files.ts'
import { writeContainerArchive } from './ct-archive.ts'
import { baseManifest, commitBackup, inStore, writeConfigs } from './commit.ts'
import { discardCommitted, discardUncommitted, keepTaskLog } from './discard.ts'
import { guestDir, reclaimInPlace, sweepLeftovers } from './in-place.ts'
import { exportGuest, openGuestState, parseProviderSession, SESSION_VERSION } from './session.ts'
import type { ProviderSession } from './session.ts'

/** What the provider keeps per guest between backupInit and backupHandleLogFile. */
export interface GuestState {
  ref: VolumeRef
  /**
   * The guest directory and the partial backup directory, open while the backup runs. The
   * guest directory and lock are undefined in the container's user namespace (session.ts
   * openInPlaceChild).
   */
  guest: Dir | undefined
  partial: Dir
  lock: GuestLock | undefined
  /**
   * The backup is listed: renamed into place (by backupVm / backupContainer), or, written in
   * place, its manifest exists.
   */
  committed: boolean
  /** The mapped root uid writing this backup in place (see backupContainerPrepare). */
  inPlaceUid?: number | undefined
  /** Incremental bases found by backupVmQueryIncremental, per device. */
  bases: Record<string, Extract<IncrementalBase, { kind: 'base' }>>
}

/**
 * Lock options of a backup of guest `vmid`: wait messages go to the task log unless the policy
 * has its own log.
 */
const backupLock = (lock: LockPolicy, vmid: number, log: ProviderLogFunction): LockOptions => ({
  ...lock,
  log:
    lock.log ??
    ((m) => {
      log('info', m)
    }),
  operation: 'backup',
  what: `guest ${vmid}`,
})

/** The directory provider. One instance per job or restore. */
export class DirectoryProvider extends DirectoryRestore implements BackupProvider {
  readonly name = 'guestbackup directory provider'
  readonly #layout: StoreLayout
  readonly #options: StoreOptions
  readonly #log: ProviderLogFunction
  /** {@link fullReasons}, per guest. */
  readonly #fullReasons = new Map<number, Record<string, string>>()
  readonly #guests = new Map<number, GuestState>()
  readonly #lock: LockPolicy

  /** `lock`: how guest locks are waited for (default: not at all, `LOCKED` at once). */
  constructor(
    layout: StoreLayout,
    options: StoreOptions,
    log: ProviderLogFunction,
    lock: LockPolicy = {},
  ) {
    super(layout, log)
    this.#layout = layout
    this.#options = options
    this.#log = log
    this.#lock = lock
  }

  /**
   * A provider continuing a {@link DirectoryProvider.suspend}ed one (`session`: its JSON, or
   * null/undefined for a fresh provider): the session is validated (`SESSION_INVALID`), each
   * guest's lock is taken again and its backup in progress reopened; a guest whose backup is
   * gone is dropped with a warning.
   */
  static async resume(
    layout: StoreLayout,
    options: StoreOptions,
    log: ProviderLogFunction,
    session: unknown,
    lock: LockPolicy = {},
  ): Promise<DirectoryProvider> {
    const p = new DirectoryProvider(layout, options, log, lock)
    if (session === null || session === undefined) return p
    try {
      for (const g of parseProviderSession(session).guests) {
        const state = await openGuestState(layout, g, log, backupLock(lock, g.vmid, log))
        if (state !== undefined) p.#guests.set(g.vmid, state)
      }
    } catch (e) {
      await p.suspend()
      throw e
    }
    return p
  }

  /**
   * Export the per-guest state as JSON and let go of what this process holds (guest locks,
   * open directories) without discarding any backup in progress, for hosts that run each call
   * in its own process. The provider holds no guest afterwards.
   */
  async suspend(): Promise<ProviderSession> {
    const guests = [...this.#guests.values()].map(exportGuest)
    for (const [vmid, g] of this.#guests) await this.#release(vmid, g)
    return { version: SESSION_VERSION, guests }
  }

  /** Checks the store is usable. No kernel module, no NBD slots: nothing else to prepare. */
  async jobInit(startTime: number): Promise<void> {
    await withSpaceIn('store', this.#layout.root, () =>
      mkdir(this.#layout.root, { recursive: true, mode: 0o700 }),
    )
    this.#log('info', `job started at ${new Date(startTime * 1000).toISOString()}`)
  }

  async jobCleanup(): Promise<void> {
    // Release what a failed guest may have left behind; idempotent (may run twice).
    for (const [vmid, g] of this.#guests) {
      if (!g.committed) await discardUncommitted(this.#layout, g, this.#log)
      await this.#release(vmid, g)
    }
  }

  async backupInit(vmid: number, vmtype: GuestType, startTime: number): Promise<BackupInitResult> {
    if (this.#guests.has(vmid)) {
      throw new BackupError('LOCKED', `a backup of guest ${vmid} is already running in this job`)
    }
    let guest: Dir
    {
      await using root = await this.#layout.openRoot()
      guest = await this.#layout.openGuest(root, vmid, true)
    }
    let lock: GuestLock | undefined
    let partial: Dir | undefined
    try {
      lock = await withSpaceIn(
        'store',
        this.#layout.root,
        () => lockGuest(guest, backupLock(this.#lock, vmid, this.#log)),
        String(vmid),
      )
      // We hold the guest lock: a removal journal or a partial backup left is a killed run's.
      await resumeRemoval(this.#layout, guest, { log: this.#log })
      await sweepLeftovers(this.#log, guest, vmid)
      let ref = volumeRef(vmid, vmtype, startTime)
      // Two backups in the same second: take the next free second rather than overwrite.
      for (let t = startTime; (await guest.lstat(ref.dirName)) !== undefined; t++) {
        ref = volumeRef(vmid, vmtype, t + 1)
      }
      const name = this.#layout.partialName(ref)
      const made = await withSpaceIn(
        'store',
        this.#layout.root,
        () => guest.mkdir(name, 0o700),
        `${vmid}/${ref.dirName}`,
      )
      if (!made) {
        throw new BackupError('IO', `${guest.labelOf(name)} appeared while starting the backup`)
      }
      partial = await guest.openDir(name)
      this.#guests.set(vmid, { ref, guest, partial, lock, committed: false, bases: {} })
      return { archiveName: ref.archiveName }
    } catch (e) {
      await partial?.close()
      await lock?.release()
      await guest.close()
      throw e
    }
  }

  async backupGetMechanism(_vmid: number, vmtype: GuestType): Promise<BackupMechanism> {
    await Promise.resolve()
    if (vmtype === 'lxc') return 'directory'
    return this.#options['vm-backup-mechanism']
  }

  /**
   * Why each disk of the last backup of `vmid` is full, by device: guestbackup's report of
   * what `backupVmQueryIncremental` decided (the task log has the same lines).
   */
  fullReasons(vmid: number): Readonly<Record<string, string>> {
    return this.#fullReasons.get(vmid) ?? {}
  }

  async backupVmQueryIncremental(
    vmid: number,
    volumes: Readonly<Record<string, VolumeSize>>,
  ): Promise<Readonly<Record<string, IncrementalQuery>> | undefined> {
    const reasons: Record<string, string> = {}
    this.#fullReasons.set(vmid, reasons)
    if (this.#options['vm-backup-mode'] !== 'incremental') {
      for (const device of Object.keys(volumes))
        reasons[device] = "the store's vm-backup-mode is full"
      return undefined
    }
    const g = this.#guest(vmid)
    const guest = guestDir(g)
    const answer: Record<string, IncrementalQuery> = {}
    const record = await readBitmapRecord(guest)
    for (const [device, { size, bitmapGeneration }] of Object.entries(volumes)) {
      const base = await findIncrementalBase(guest, vmid, device, size, bitmapGeneration, record)
      if (base.kind === 'base') {
        g.bases[device] = base
        answer[device] = 'use'
      } else {
        this.#log('info', `${device}: full backup (${base.reason})`, {
          device,
          reason: base.reason,
        })
        reasons[device] = base.reason
        answer[device] = 'new'
      }
    }
    return answer
  }

  async backupVm(
    vmid: number,
    guestConfig: string,
    volumes: Readonly<Record<string, VmVolume>>,
    info: BackupInfo & ProgressInfo,
  ): Promise<void> {
    const g = this.#guest(vmid)
    const guest = guestDir(g)
    // The limit the data is read under, as the API gives it (bytes per second).
    if ((info.bandwidthLimit ?? 0) > 0) {
      this.#log('info', `bandwidth limit ${info.bandwidthLimit} bytes/s`)
    }
    await writeConfigs(this.#layout, g, guestConfig, info)
    const { disks, parent, bitmaps } = await backupVmDisks({
      guest,
      partial: g.partial,
      bases: g.bases,
      volumes,
      info,
      sampleBlocks: this.#options['incremental-sample'],
      verifyAfter: this.#options['verify-after-backup'],
      compress: this.#options['vm-compress'],
      log: this.#log,
      inStore: (file, fn) => inStore(this.#layout, g, file, fn),
    })
    await commitBackup(
      this.#layout,
      g,
      baseManifest(g, info, {
        disks,
        ...(parent ? { parent } : {}),
        consistency: info.consistency ?? 'offline',
      }),
    )
    // After the rename: until this is written the record names an older backup, which is no
    // longer the newest, so a crash in between means a full backup next time, never a gap.
    await inStore(this.#layout, g, undefined, () =>
      writeBitmapRecord(guest, g.ref.volname, bitmaps),
    )
  }

  /**
   * Run `fn`, which writes `file` of the backup of `g` (undefined: the guest dir); a full file
   * system becomes one line naming the store and what was being written.
   */
  /**
   * Runs as root. A privileged container (`backupUserId` 0) is backed up like a VM. For an
   * unprivileged one the archive is written as its mapped root (pve-container
   * `src/PVE/VZDump/LXC.pm` runs backupContainer in the container's user namespace), which
   * cannot rename in the guest dir: the partial dir gets its final name now (it is listed only
   * once its manifest exists, scan.ts readBackup), is handed to that uid, and the store root
   * and guest dir let it search (ACL `x`, no read: it lists nothing).
   */
  async backupContainerPrepare(vmid: number, info: ContainerBackupInfo): Promise<void> {
    const g = this.#guest(vmid)
    const uid = info.backupUserId
    if (uid === 0) return
    const guest = guestDir(g)
    if ((await guest.lstat(g.ref.dirName)) !== undefined) {
      throw new BackupError('IO', `${guest.labelOf(g.ref.dirName)} appeared during the backup`)
    }
    await guest.rename(this.#layout.partialName(g.ref), g.ref.dirName)
    g.inPlaceUid = uid
    await guest.sync()
    await g.partial.chown(uid, -1)
    await grantSearch(guest.path, uid)
    await using root = await this.#layout.openRoot()
    await grantSearch(root.path, uid)
  }

  async backupContainer(
    vmid: number,
    guestConfig: string,
    excludePatterns: readonly string[],
    info: ContainerBackupInfo & ProgressInfo,
  ): Promise<void> {
    const g = this.#guest(vmid)
    // The limit the data is read under, as the API gives it (bytes per second).
    if ((info.bandwidthLimit ?? 0) > 0) {
      this.#log('info', `bandwidth limit ${info.bandwidthLimit} bytes/s`)
    }
    await writeConfigs(this.#layout, g, guestConfig, info)
    const mode = this.#options['lxc-backup-mode']
    const compress = {
      type: info.compress?.type ?? this.#options['lxc-compress'],
      zstdThreads: info.compress?.zstdThreads ?? 0,
    }
    const archive = await inStore(this.#layout, g, archiveFileOf(mode, compress.type), () =>
      writeContainerArchive(g.partial, mode, compress, excludePatterns, info, this.#log),
    )
    const { warnings, members, frames, file, acls } = archive
    for (const w of warnings) this.#log('warn', w)
    // A container archive stands alone (no chain): verify-after-backup `first` reads it back
    // too. A squashfs archive's digest was taken by reading it back already.
    if (this.#options['verify-after-backup'] !== 'never' && mode === 'tar') {
      if ((await digestOf(g.partial, file, info.signal)) !== archive.digests[file]) {
        throw new BackupError('VERIFY_FAILED', `${file} reads back differently than it was written`)
      }
      this.#log('info', `${file} reads back to its digest`, { file })
    }
    await commitBackup(
      this.#layout,
      g,
      baseManifest(g, info, {
        container: {
          file,
          format: mode,
          excludes: [...excludePatterns],
          digest: {
            algorithm: 'sha256',
            ...(members === undefined ? {} : { members }),
            ...(frames === undefined ? {} : { frames }),
          },
          ...(acls === undefined ? {} : { acls }),
          ...(info.idMap === undefined ? {} : { idmap: info.idMap.map(formatIdMapEntry) }),
        },
        warnings,
      }),
      archive.digests,
    )
  }

  async backupCleanup(
    vmid: number,
    _vmtype: GuestType | undefined,
    success: boolean,
    info: { error?: string },
  ): Promise<BackupCleanupResult | undefined> {
    const g = this.#guests.get(vmid)
    if (g === undefined) return undefined
    try {
      if (g.inPlaceUid !== undefined) await reclaimInPlace(this.#layout, g, this.#log)
      if (success && g.committed) {
        return { stats: { archiveSize: await allocatedBytes(g.partial) } }
      }
      const why = info.error ?? 'no data was backed up'
      if (!g.committed) {
        this.#log('info', `discarding the partial backup (${why})`)
        await discardUncommitted(this.#layout, g, this.#log)
        return undefined
      }
      // The task failed after the backup was complete (notes, protection or prune): vzdump
      // counts the task as failed, so the backup goes too.
      this.#log('info', `removing the backup ${g.ref.volname} of the failed task (${why})`)
      await discardCommitted(this.#layout, g, this.#log)
      return undefined
    } catch (e) {
      if (!g.committed) await discardUncommitted(this.#layout, g, this.#log)
      throw toBackupError(e)
    }
  }

  async backupHandleLogFile(vmid: number, filename: string): Promise<void> {
    const g = this.#guests.get(vmid)
    if (g === undefined) return
    try {
      await keepTaskLog(this.#layout, g, filename, this.#log)
    } finally {
      await this.#release(vmid, g)
    }
  }

  async #release(vmid: number, g: GuestState): Promise<void> {
    this.#guests.delete(vmid)
    await g.lock?.release()
    await g.partial.close()
    await g.guest?.close()
  }

  #guest(vmid: number): GuestState {
    const g = this.#guests.get(vmid)
    if (g === undefined) {
      throw new BackupError('PROVIDER_FAILED', `backupInit was not called for guest ${vmid}`)
    }
    return g
  }
}
