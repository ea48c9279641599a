/** The container part of a backup (pve-container's `archive` for providers). */
import { stat } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import { resolve } from 'node:path'
import type {
  ArchiveCompression,
  BackupInfo,
  BackupProvider,
  ContainerBackupInfo,
} from '../api/provider.ts'
import { BackupError } from '../errors.ts'
import type { IdMap } from '../api/idmap.ts'
import { formatIdMapEntry, rootUid } from '../api/idmap-parse.ts'
import type { ProgressInfo } from '../api/progress.ts'
import type { TaskLog } from './task-log.ts'

/** A container to back up: a root directory. */
export interface CtGuest {
  type: 'lxc'
  vmid: number
  config: string
  firewallConfig?: string
  /** Root directory of the container. */
  rootfs: string
  /** vzdump exclude patterns. */
  excludes: readonly string[]
  /**
   * An unprivileged container's id map: the tree is archived as its mapped root, inside a user
   * namespace (io/userns.ts). Absent: privileged, archived as host root.
   */
  idMap?: IdMap | undefined
  /** How to compress the archive (`--compress`, `--zstd`). Absent: the provider's setting. */
  compress?: ArchiveCompression | undefined
}

/**
 * Input checks that need no provider (the runner calls them before `backupInit`, so bad input
 * leaves the store untouched). Returns the root directory's stat.
 */
export const preflightCt = async (guest: CtGuest): Promise<Stats> => {
  const st = await stat(guest.rootfs).catch((e: unknown) => {
    throw new BackupError('USAGE', `cannot access root directory ${guest.rootfs}`, { cause: e })
  })
  if (!st.isDirectory()) throw new BackupError('USAGE', `${guest.rootfs} is not a directory`)
  return st
}

/** Run the container part; the caller handles init and cleanup. */
export const backupCtGuest = async (
  provider: BackupProvider,
  guest: CtGuest,
  info: BackupInfo & ProgressInfo,
  log: TaskLog,
): Promise<void> => {
  const mechanism = await provider.backupGetMechanism(guest.vmid, 'lxc')
  if (mechanism !== 'directory') {
    throw new BackupError(
      'PROVIDER_INVALID',
      `mechanism '${mechanism}' requested by backup provider is not supported for containers`,
    )
  }
  const directory = resolve(guest.rootfs)
  const st = await preflightCt(guest)
  // Privileged: the owner of the root directory is the container's root on the host.
  const map = guest.idMap
  const ctInfo: ContainerBackupInfo & ProgressInfo = {
    ...info,
    directory,
    sources: ['.'],
    backupUserId: map === undefined ? st.uid : rootUid(map),
    ...(map === undefined ? {} : { idMap: map }),
    ...(guest.compress === undefined ? {} : { compress: guest.compress }),
  }
  log.info(`container root ${directory} (owner uid ${st.uid}), ${guest.excludes.length} excludes`)
  if (map !== undefined) {
    log.info(
      `unprivileged: archived as the mapped root, id map ${map.map(formatIdMapEntry).join(', ')}`,
    )
  }
  await provider.backupContainerPrepare(guest.vmid, ctInfo)
  await provider.backupContainer(guest.vmid, guest.config, guest.excludes, ctInfo)
}
