/**
 * The backup provider contract: the final (2025) Proxmox VE backup provider API
 * (`PVE::BackupProvider::Plugin::Base`), in TypeScript.
 *
 * Method names are the Perl names in camelCase; object keys that are kebab-case in Perl are
 * camelCase here (the table in `docs/api.md` maps every one). All sizes and offsets are bytes;
 * bandwidth is bytes per second; times are Unix epoch seconds.
 *
 * Call order for one backup job (what vzdump does, and what guestbackup's host side does):
 * ```
 * jobInit(startTime)
 *   per guest:
 *     backupInit(vmid, vmtype, startTime)        -> { archiveName }
 *     backupGetMechanism(vmid, vmtype)
 *     VM:  backupVmQueryIncremental(vmid, volumes) ; (host freezes the instant) ; backupVm(...)
 *     CT:  backupContainerPrepare(vmid, info)      ; backupContainer(...)
 *     success: backupCleanup(vmid, vmtype, true, {})          -> { stats }
 *     failure: backupCleanup(vmid, vmtype, false, { error })  (its own failure is only logged)
 *     backupHandleLogFile(vmid, logPath)          (always, after backupCleanup)
 * jobCleanup()                                    (always; may be called twice on error paths)
 * ```
 * Restore: `restoreGetMechanism` first, then either the VM calls (`restoreVmInit`, per device
 * `restoreVmVolumeInit` … `restoreVmVolumeCleanup`, then `restoreVmCleanup`) or the container
 * calls (`restoreContainerInit` … `restoreContainerCleanup`). Cleanup calls run on every path.
 * `archiveGetGuestConfig` / `archiveGetFirewallConfig` may be called on a fresh instance at any
 * time, independently of a restore.
 */

import type { IdMap } from './idmap.ts'

/** Guest type, as in Proxmox: `qemu` for VMs, `lxc` for containers. */
export type GuestType = 'qemu' | 'lxc'

/** The guest types as a value list. */
export const GUEST_TYPES = ['qemu', 'lxc'] as const satisfies readonly GuestType[]

/** Log levels of the provider log function (Proxmox: `info`, `warn`, `err`). */
export type ProviderLogLevel = 'info' | 'warn' | 'err'

/**
 * Structured fields of a log line (a guestbackup extension): the device, volume, bytes… the
 * message is about, for `--log-json`. The message says everything on its own; Proxmox's log
 * function takes only level and message, and a host may ignore the fields.
 */
export type LogFields = Readonly<Record<string, string | number | boolean>>

/** The log function handed to a provider. Messages reach the task log. */
export type ProviderLogFunction = (
  level: ProviderLogLevel,
  message: string,
  fields?: LogFields,
) => void

/**
 * VM backup mechanisms. `nbd`: each disk is an NBD export on a unix socket (export name = device
 * name). `file-handle`: each disk is a random-access reader (see {@link VolumeReader}).
 */
export type VmBackupMechanism = 'nbd' | 'file-handle'

/** Container backup mechanism: the host hands over a directory tree. */
export type ContainerBackupMechanism = 'directory'

/** What {@link BackupProvider.backupGetMechanism} returns. */
export type BackupMechanism = VmBackupMechanism | ContainerBackupMechanism

/**
 * Answer of {@link BackupProvider.backupVmQueryIncremental} per device: `new` creates a new bitmap
 * (or recreates it), `use` reuses an existing bitmap (or creates one if it does not exist), `none`
 * uses no bitmap and drops an existing one.
 */
export type IncrementalQuery = 'new' | 'use' | 'none'

/**
 * The bitmap mode {@link BackupProvider.backupVm} actually gets per device: `none` (no bitmap;
 * full read), `new` (a new bitmap was created: everything is dirty, so the backup is full),
 * `reuse` (the existing bitmap is used: only dirty regions changed since the last successful
 * backup to this store). A `use` query may come back as `new` when the bitmap was lost.
 */
export type BitmapMode = 'none' | 'new' | 'reuse'

/** A `[offset, length]` region in bytes. */
export type Region = readonly [offset: number, length: number]

/** Size of one volume, keyed by device name in the maps below. */
export interface VolumeSize {
  /** Virtual size in bytes. */
  size: number
  /**
   * guestbackup extension: opaque id of the dirty bitmap that currently tracks this device for
   * this store (absent: no bitmap, e.g. lost with a VM restart or never created). A provider
   * answers `use` only if it equals the {@link VmVolume.nextBitmapGeneration} it recorded with
   * its newest backup; anything else means writes may have gone untracked.
   */
  bitmapGeneration?: string
}

/** Random access to a disk for the `file-handle` mechanism. */
export interface VolumeReader {
  /**
   * Read `length` bytes at `position`. Reading past the end is an error. With `into` (at least
   * `length` bytes), fill and return its first `length` bytes instead of allocating.
   */
  read(position: number, length: number, signal?: AbortSignal, into?: Buffer): Promise<Buffer>
  /**
   * Tell the source a region is backed up and may be dropped (Proxmox: discard in the fleecing
   * image). Optional; a no-op where the source keeps no fleecing data.
   */
  discard?(position: number, length: number): Promise<void>
}

/** One VM disk as handed to {@link BackupProvider.backupVm}. */
export interface VmVolume {
  /** Virtual size in bytes (QEMU's block-node size). */
  size: number
  /** The effective bitmap mode for this device. */
  bitmapMode: BitmapMode
  /**
   * `nbd` mechanism: path of the unix socket of the NBD server. The export name is the device
   * name. Perl key `nbd-path`.
   */
  nbdPath?: string
  /**
   * `nbd` mechanism with a bitmap: the bitmap name; the dirty map is the NBD meta context
   * `qemu:dirty-bitmap:<bitmapName>` (flag bit 0 set = dirty). Perl key `bitmap-name`.
   */
  bitmapName?: string
  /**
   * guestbackup extension: id of the bitmap started at this backup's instant, which will track
   * the writes the next incremental needs. Record it with the backup.
   */
  nextBitmapGeneration?: string
  /**
   * guestbackup extension: id of the bitmap this backup reads (`bitmapMode` `reuse`), i.e. the
   * one the base backup recorded as `nextBitmapGeneration`.
   */
  bitmapGeneration?: string
  /** `file-handle` mechanism: random access to the disk. Perl key `file-handle`. */
  fileHandle?: VolumeReader
  /**
   * `file-handle` mechanism: the next dirty region, or `undefined` after the last. Without a
   * bitmap it yields `[0, size]` once. Perl key `next-dirty-region`.
   */
  nextDirtyRegion?: () => Promise<Region | undefined>
}

/** Extra information for a guest backup. */
export interface BackupInfo {
  /** Bytes per second for source I/O and network; 0 or absent: unlimited. Perl `bandwidth-limit`. */
  bandwidthLimit?: number
  /** Raw firewall configuration, present iff the guest has one. Perl `firewall-config`. */
  firewallConfig?: string
  /** Aborts the backup; the provider must stop promptly and throw. */
  signal: AbortSignal
  /**
   * guestbackup extension: `fs` when the guest's file systems were frozen at the instant,
   * `crash` for a plain point in time of a running VM, `offline` for a stopped guest.
   */
  consistency?: 'crash' | 'fs' | 'offline'
}

/** Extra information for a container backup (`directory` mechanism). */
export interface ContainerBackupInfo extends BackupInfo {
  /** Root of the (snapshot or copy of the) container file system. */
  directory: string
  /** Paths relative to `directory` to back up, e.g. `['.']` or `['.', './mnt/data']`. */
  sources: readonly string[]
  /** The uid the container root maps to on the host (0 for privileged). Perl `backup-user-id`. */
  backupUserId: number
  /**
   * guestbackup extension, optional: the id map of an unprivileged container whose tree the
   * provider must archive as the mapped root, i.e. inside a user namespace with this map
   * (`backupUserId` is then its host uid of container uid 0). guestbackup's own host sets it;
   * Proxmox never does, as it already runs `backup_container` inside the container's namespace
   * (pve-container `VZDump/LXC.pm`, `run_in_userns`).
   */
  idMap?: IdMap
  /**
   * guestbackup extension, optional: how to compress the archive for this backup (vzdump's
   * `compress` and `zstd` options), overriding the provider's own setting. Proxmox never sets
   * it: vzdump does not hand its compression to a backup provider.
   */
  compress?: ArchiveCompression
}

/**
 * How a container archive is compressed, with vzdump's names (`compress`: `zstd`, `gzip`,
 * `lzo`, or `none` for its `0`) and its `zstd` thread count (`0`: half of the cores).
 */
export interface ArchiveCompression {
  /** Absent: the provider's own setting (guestbackup: the store's `lxc-compress`). */
  type?: CompressionType
  /** zstd only: threads of the compressor, `0` half of the cores. Default `0`. */
  zstdThreads?: number
}

/** vzdump's `compress` names, `none` for its `0`. */
export type CompressionType = 'zstd' | 'gzip' | 'lzo' | 'none'

/** Result of {@link BackupProvider.backupInit}. */
export interface BackupInitResult {
  /**
   * Name of the archive; the volume id is `<storeid>:backup/<archiveName>`. Must match
   * `^[A-Za-z0-9._+=/:-]+$`. Perl key `archive-name`.
   */
  archiveName: string
}

/** Result of {@link BackupProvider.backupCleanup} on success. */
export interface BackupCleanupResult {
  stats: {
    /** Size of the archive in bytes as stored. Perl `archive-size`. */
    archiveSize: number
  }
}

/** Restore mechanism and guest type of an archive. */
export type RestoreMechanism =
  { mechanism: 'qemu-img'; vmtype: 'qemu' } | { mechanism: 'tar' | 'directory'; vmtype: 'lxc' }

/** Result of {@link BackupProvider.restoreVmVolumeInit}. */
export interface RestoreVmVolume {
  /**
   * Source for `qemu-img convert -f raw`: a path (regular file or block device) or an NBD URI
   * (`nbd+unix:///<export>?socket=<path>`). The data is raw and copied verbatim. Proxmox VE
   * needs a regular file or block device: qemu-server `stat`s the path and checks it with
   * `file_size_info(…, 'raw', untrusted)` (`PVE/QemuServer.pm::restore_external_archive`);
   * guestbackup's own host also reads NBD URIs. Perl key `qemu-img-path`.
   */
  qemuImgPath: string
}

/**
 * guestbackup extension: one node of an explicit QEMU blockdev spec (`BlockdevOptions` of
 * QEMU's `qapi/block-core.json`) for a qcow2 image over a file. `backing` is always given,
 * `null` at the bottom, so QEMU follows no backing name, format or data file from the image's
 * header and probes nothing. Extra keys are not allowed: a consumer refuses them.
 */
export interface BlockdevSpec {
  driver: 'qcow2'
  /** The image file; `filename` is an absolute path (e.g. a pinned `/proc/<pid>/fd/<n>`). */
  file: { driver: 'file'; filename: string }
  /** The node below, or `null` for the base of the chain. */
  backing: BlockdevSpec | null
}

/** Result of {@link BackupProvider.restoreVmVolumeSpec}. */
export interface RestoreVmVolumeSpec {
  /**
   * The disk's validated image chain, top node first: what the guest sees is the top node's
   * content. Every file it names stays valid (pinned) until `restoreVmVolumeCleanup`.
   */
  blockdev: BlockdevSpec
  /** Virtual size in bytes. */
  size: number
}

/** Result of {@link BackupProvider.restoreContainerInit}. */
export type RestoreContainer = RestoreContainerSource & {
  /**
   * guestbackup extension, optional: the id map the archive was written under (an unprivileged
   * container's: its owners are the container's view). guestbackup's host then restores it as
   * the mapped root only. Absent: a privileged backup, or a provider that does not know.
   */
  idMap?: IdMap
}

/** Where a container's archive is: the two shapes of {@link RestoreContainer}. */
export type RestoreContainerSource =
  | {
      /** A tar archive, possibly compressed (by extension). Perl key `tar-path`. */
      tarPath: string
    }
  | {
      /** A directory holding the container tree. Perl key `archive-directory`. */
      archiveDirectory: string
      /**
       * guestbackup extension, optional: the squashfs image that `archiveDirectory` is a mount
       * of. guestbackup's own host then restores it with `unsquashfs` (still reading file
       * capabilities through the mount); Proxmox's pve-container never sees this key.
       */
      squashfsImage?: string
      /**
       * guestbackup extension, optional: a file of the tree's POSIX ACLs as `getfacl -R -P -n
       * --skip-base .` writes them (names relative to the tree's root), which squashfs cannot
       * store. guestbackup's own host applies it once the tree is unpacked; Proxmox's
       * pve-container never sees this key, so a Proxmox restore of a squashfs backup has no ACLs.
       */
      posixAcls?: string
    }

/** Options passed to long restore calls. */
export interface CallOptions {
  signal: AbortSignal
}

/**
 * A backup provider. One instance serves a whole job (all guests) or one restore; providers
 * should keep little state, since the host may create fresh instances for config extraction.
 * Methods are never called concurrently for the same guest, except where a method says so.
 */
export interface BackupProvider {
  /** Human-readable name, printed in logs ("starting external backup via <name>"). */
  readonly name: string

  /**
   * Called once before the first guest of a job. Throwing fails the whole job before any guest
   * is touched (jobCleanup is still called).
   * @param startTime job start, Unix seconds.
   */
  jobInit(startTime: number): Promise<void>

  /**
   * Called after the job, on success and on failure (it may be called twice on the error
   * path). Must be idempotent.
   */
  jobCleanup(): Promise<void>

  /**
   * Called first for each guest. Returns the archive name that identifies this backup.
   * @param startTime per-guest backup time, Unix seconds.
   */
  backupInit(vmid: number, vmtype: GuestType, startTime: number): Promise<BackupInitResult>

  /**
   * The mechanism for this guest: `nbd` or `file-handle` for `qemu`, `directory` for `lxc`.
   * Throw for an unsupported guest type.
   */
  backupGetMechanism(vmid: number, vmtype: GuestType): Promise<BackupMechanism>

  /**
   * Which VM devices may be backed up incrementally. Return `undefined` (or an empty object)
   * when incremental backup is not supported. Devices absent from the answer use no bitmap and
   * existing bitmaps are dropped.
   * @param volumes device name -> size in bytes.
   */
  backupVmQueryIncremental(
    vmid: number,
    volumes: Readonly<Record<string, VolumeSize>>,
  ): Promise<Readonly<Record<string, IncrementalQuery>> | undefined>

  /**
   * Back up a VM. Returns when done; throwing fails the backup (and the host keeps the dirty
   * bitmaps, so no write is lost). The sources represent one consistent instant.
   * @param guestConfig the guest configuration text to store with the backup.
   * @param volumes device name -> volume.
   */
  backupVm(
    vmid: number,
    guestConfig: string,
    volumes: Readonly<Record<string, VmVolume>>,
    info: BackupInfo,
  ): Promise<void>

  /**
   * Runs privileged right before {@link BackupProvider.backupContainer}, e.g. to chown target
   * directories to `info.backupUserId`.
   */
  backupContainerPrepare(vmid: number, info: ContainerBackupInfo): Promise<void>

  /**
   * Back up a container tree. Proxmox runs this as the ID-mapped container root in a forked
   * user namespace: changes to the provider's state are not visible in later calls.
   * @param excludePatterns shell globs; a leading `/` anchors at the container root, others
   * match in every directory.
   */
  backupContainer(
    vmid: number,
    guestConfig: string,
    excludePatterns: readonly string[],
    info: ContainerBackupInfo,
  ): Promise<void>

  /**
   * Called for every guest after the backup, on success (`success = true`, `info = {}`,
   * returns the stats) and on failure (`success = false`, `info.error` set; the return value is
   * ignored and a throw is only logged). `vmtype` may be undefined in some error scenarios.
   */
  backupCleanup(
    vmid: number,
    vmtype: GuestType | undefined,
    success: boolean,
    info: { error?: string },
  ): Promise<BackupCleanupResult | undefined>

  /**
   * Called after {@link BackupProvider.backupCleanup}, on success and failure, with the path of
   * the guest's task log. The provider may store a copy.
   */
  backupHandleLogFile(vmid: number, filename: string): Promise<void>

  /** Restore mechanism and guest type of the archive `volname` (`backup/<archive-name>`). */
  restoreGetMechanism(volname: string): Promise<RestoreMechanism>

  /** The guest configuration stored in the archive. Throws if it cannot be read. */
  archiveGetGuestConfig(volname: string): Promise<string>

  /** The firewall configuration stored in the archive, or `undefined` if there is none. */
  archiveGetFirewallConfig(volname: string): Promise<string | undefined>

  /** Start a VM restore; returns device name -> virtual size (bytes) of every disk. */
  restoreVmInit(volname: string, opts: CallOptions): Promise<Readonly<Record<string, VolumeSize>>>

  /** Prepare one disk; returns a raw source that `qemu-img convert -f raw` can read. */
  restoreVmVolumeInit(
    volname: string,
    deviceName: string,
    opts: CallOptions,
  ): Promise<RestoreVmVolume>

  /**
   * guestbackup extension, optional: prepare one disk like {@link restoreVmVolumeInit}, but
   * hand over its image chain as an explicit blockdev spec, which guestbackup's own host copies
   * with `qemu-img convert` straight from the images (Proxmox's qemu-server needs the raw file
   * of `restoreVmVolumeInit` and never calls this). The same validation as for
   * `restoreVmVolumeInit` must have passed. `restoreVmVolumeCleanup` follows on every path.
   * May be called for several devices of one restore at once (never twice for one device).
   */
  restoreVmVolumeSpec?(
    volname: string,
    deviceName: string,
    opts: CallOptions,
  ): Promise<RestoreVmVolumeSpec>

  /** Called after each disk, on success and failure. */
  restoreVmVolumeCleanup(volname: string, deviceName: string): Promise<void>

  /** Called once at the end of a VM restore, on success and failure. */
  restoreVmCleanup(volname: string): Promise<void>

  /** Start a container restore; returns a tar path or a directory. */
  restoreContainerInit(volname: string, opts: CallOptions): Promise<RestoreContainer>

  /** Called at the end of a container restore, on success and failure. */
  restoreContainerCleanup(volname: string): Promise<void>
}
