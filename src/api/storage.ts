/**
 * The storage-plugin side of a backup provider (Proxmox: a `PVE::Storage::Custom::*Plugin` with
 * the `backup-provider` feature): it names, lists, sizes, prunes and frees backups, and creates
 * the {@link BackupProvider} that writes them.
 */
import type { ProgressEvent } from './progress.ts'
import type { BackupProvider, GuestType, ProviderLogFunction } from './provider.ts'

/** Result of {@link BackupStorage.parseVolname}. */
export interface ParsedVolname {
  /** Always `backup` for backup archives. */
  vtype: 'backup'
  /** The archive name (the volume name without `backup/`). */
  name: string
  /** Owner guest id. */
  vmid: number
  /** Guest type, when the name encodes it. */
  subtype: GuestType
}

/** One backup as listed by {@link BackupStorage.listVolumes}. */
export interface BackupVolume {
  /** `<storeid>:backup/<archive-name>`. */
  volid: string
  /** Owner guest id. */
  vmid: number
  /** `qemu` or `lxc`: how the UI and retention classify the archive. */
  subtype: GuestType
  /** Backup time, Unix seconds. */
  ctime: number
  /** Bytes stored (allocated) by this backup alone. */
  size: number
  /** Storage format of the archive, e.g. `directory`. */
  format: string
  /** Volume id of the backup this one depends on (incremental chains), if any. */
  parent?: string
  /** Protected backups are never pruned nor freed. */
  protected: boolean
  /** First line of the notes, if any. */
  notes?: string
  /** The last verification of the backup's data, if it was verified (PBS's `verification`). */
  verification?: Verification
  /**
   * Why the backup cannot be restored as listed (its manifest is unreadable, or a backup it
   * builds on is gone or unusable), if so; `check --repair` sets such backups aside.
   */
  broken?: string
  /**
   * guestbackup extension: an unprivileged container's id map the archive was written under,
   * as `lxc.idmap` entries (`u 0 100000 65536`); absent for privileged containers and VMs.
   */
  idmap?: string[]
  /** Always `backup`. */
  content: 'backup'
}

/** The outcome of verifying a backup against the digests recorded when it was taken. */
export interface Verification {
  /** `ok`: every byte matches; `failed`: something differs or is unreadable. */
  state: 'ok' | 'failed'
  /** When it was verified (ISO time). */
  time: string
  /** What failed first (a disk and offset, a member, a file), for `failed`. */
  detail?: string
}

/** Result of {@link BackupStorage.volumeSizeInfo}. */
export interface VolumeSizeInfo {
  /** Total virtual size of the archive's contents (disk sizes plus file sizes), bytes. */
  size: number
  format: string
  /** Bytes allocated on the storage. */
  used: number
  /** Parent volume id, for incrementals. */
  parent?: string
  /** Backup time, Unix seconds. */
  ctime: number
}

/** Volume attributes (Proxmox `get_volume_attribute` / `update_volume_attribute`). */
export type VolumeAttribute = 'notes' | 'protected'

/**
 * Retention options (Proxmox's `prune-backups` format). Counts are non-negative integers; 0 and
 * a missing key both mean "option not used".
 */
export interface KeepOptions {
  /** Keep all backups. Conflicts with the other options when true. */
  'keep-all'?: boolean
  /** Keep the last N backups. */
  'keep-last'?: number
  /** Keep backups for the last N different hours; only the latest one of an hour is kept. */
  'keep-hourly'?: number
  /** Keep backups for the last N different days; only the latest one of a day is kept. */
  'keep-daily'?: number
  /** Keep backups for the last N different ISO weeks; only the latest one of a week is kept. */
  'keep-weekly'?: number
  /** Keep backups for the last N different months; only the latest one of a month is kept. */
  'keep-monthly'?: number
  /** Keep backups for the last N different years; only the latest one of a year is kept. */
  'keep-yearly'?: number
}

/** Mark of one backup in a prune plan. */
export type PruneMarkKind = 'keep' | 'remove' | 'protected'

/** One entry of a prune result. */
export interface PruneResultEntry {
  volid: string
  ctime: number
  mark: PruneMarkKind
  type: GuestType
  vmid: number
  /**
   * guestbackup extension: for a backup marked `remove` that others build on, the merges its
   * removal does (into which backup, which disk, bytes written): on a dry run as the store is
   * now, else the merges done.
   */
  merges?: readonly { child: string; device: string; bytes: number }[]
  /**
   * guestbackup extension: for a backup marked `remove`, the bytes it occupies (dry run) or
   * occupied before it was removed.
   */
  bytes?: number
}

/** Options of {@link BackupStorage.pruneBackups}. */
export interface PruneOptions {
  /** Retention; default: the store's `prune-backups` option. */
  keep?: KeepOptions
  /** Only this guest. */
  vmid?: number
  /** Only this guest type. */
  type?: GuestType
  /** Only compute the plan; remove nothing. */
  dryRun: boolean
  /** Receives a line per removal or error. */
  log?: ProviderLogFunction
  /** How far each merge got (a guestbackup extension, see {@link FreeImageOptions}). */
  onProgress?: (ev: ProgressEvent) => void
}

/** Options of {@link BackupStorage.freeImage}. */
export interface FreeImageOptions {
  log?: ProviderLogFunction
  /**
   * How far each merge of a dependant got: `item` names it (`<child volname> <device>`),
   * `total` the bytes it writes at most (a guestbackup extension).
   */
  onProgress?: (ev: ProgressEvent) => void
}

/** The storage plugin of a backup provider. */
export interface BackupStorage {
  /** Parse `backup/<archive-name>`; throws on anything else. */
  parseVolname(volname: string): ParsedVolname

  /** Filesystem path (or URI) of a volume, with its owner. */
  path(volname: string): { path: string; vmid: number; vtype: 'backup' }

  /** Backups on this store, newest first within each guest; attributes included. */
  listVolumes(opts?: { vmid?: number; subtype?: GuestType }): Promise<BackupVolume[]>

  /** Size, format, usage and parent of one backup. */
  volumeSizeInfo(volname: string): Promise<VolumeSizeInfo>

  /**
   * Apply retention: mark backups keep/remove/protected (Proxmox's `prune_mark_backup_group`)
   * and, unless `dryRun`, free the removed ones. A backup another one depends on is merged into
   * its dependant first, so no chain breaks.
   */
  pruneBackups(opts: PruneOptions): Promise<PruneResultEntry[]>

  /**
   * Delete one backup. Refuses protected backups (`PROTECTED`). `opts.log` receives what is
   * done besides (merges, and the cleanup of what a killed run left in the guest).
   */
  freeImage(volname: string, opts?: FreeImageOptions): Promise<void>

  /** Read an attribute; `notes` is the full text, `protected` a boolean. */
  getVolumeAttribute(volname: string, attribute: 'notes'): Promise<string | undefined>
  getVolumeAttribute(volname: string, attribute: 'protected'): Promise<boolean>

  /**
   * Set an attribute. Setting `protected` honours the store's `max-protected-backups` per guest
   * and type.
   */
  updateVolumeAttribute(volname: string, attribute: 'notes', value: string): Promise<void>
  updateVolumeAttribute(volname: string, attribute: 'protected', value: boolean): Promise<void>

  /** Check the store is reachable and initialised; throws otherwise. */
  activateStorage(): Promise<void>

  /** Create the provider that writes backups to this store. */
  newBackupProvider(log: ProviderLogFunction): BackupProvider
}

/**
 * A backup provider plugin as a third party ships it: a module exporting `plugin` of this type.
 */
export interface BackupProviderPlugin<Options = Record<string, unknown>> {
  /** Storage type name, e.g. `dir`. */
  readonly type: string
  /** API version implemented; this package defines version 1. */
  readonly apiVersion: 1
  /** Validate raw store options (throw `CONFIG_INVALID` with a clear message). */
  parseOptions(raw: Readonly<Record<string, unknown>>): Options
  /** Open a store. */
  open(storeId: string, options: Options): BackupStorage
}
