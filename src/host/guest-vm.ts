/**
 * The VM part of a backup (qemu-server's `archive_external` for offline disks): sizes, the
 * incremental query, one NBD export (or reader) per disk, `backupVm`, teardown on every path.
 */
import type { BackupInfo, BackupProvider, VmVolume, VolumeSize } from '../api/provider.ts'
import { BackupError, toBackupError } from '../errors.ts'
import type { ProgressInfo } from '../api/progress.ts'
import { CleanupStack } from '../io/cleanup.ts'
import { diskState, openDiskReader, serveDisk } from './disks.ts'
import type { DiskSpec } from './disks.ts'
import type { TaskLog } from './task-log.ts'
import type { BitmapFinalizer } from './live/guest-live.ts'
import {
  commitOfflineBitmaps,
  currentOfflineGeneration,
  prepareOfflineBitmaps,
  rollbackOfflineBitmaps,
} from './offline-bitmaps.ts'
import type { OfflineBitmapPlan } from './offline-bitmaps.ts'

/** A VM to back up. */
export interface VmGuest {
  type: 'qemu'
  vmid: number
  /** Guest configuration text stored with the backup. */
  config: string
  firewallConfig?: string
  disks: readonly DiskSpec[]
}

/** Input checks that need no provider (the runner calls them before `backupInit`). */
export const preflightVm = (guest: VmGuest): void => {
  if (guest.disks.length === 0) throw new BackupError('USAGE', 'the VM has no disks')
  const seen = new Set<string>()
  for (const d of guest.disks) {
    if (seen.has(d.device)) throw new BackupError('USAGE', `duplicate disk ${d.device}`)
    seen.add(d.device)
  }
}

/** Run the VM part; the caller handles init and cleanup and finishes the bitmaps. */
export const backupVmGuest = async (
  provider: BackupProvider,
  guest: VmGuest,
  storeId: string,
  info: BackupInfo & ProgressInfo,
  log: TaskLog,
): Promise<BitmapFinalizer> => {
  const mechanism = await provider.backupGetMechanism(guest.vmid, 'qemu')
  if (mechanism !== 'nbd' && mechanism !== 'file-handle') {
    throw new BackupError(
      'PROVIDER_INVALID',
      `mechanism '${mechanism}' requested by backup provider is not supported for VMs`,
    )
  }
  preflightVm(guest)
  const sizes: Record<string, VolumeSize> = {}
  for (const d of guest.disks) {
    // One qemu-img info per disk answers both its size and its bitmaps.
    const state = await diskState(d, info.signal)
    const gen = await currentOfflineGeneration(d, storeId, log, state.bitmaps)
    sizes[d.device] = {
      size: state.size,
      ...(gen === undefined ? {} : { bitmapGeneration: gen }),
    }
  }
  const query = (await provider.backupVmQueryIncremental(guest.vmid, sizes)) ?? {}
  for (const device of Object.keys(query)) {
    if (sizes[device] === undefined) {
      throw new BackupError('PROVIDER_INVALID', `incremental answer names unknown ${device}`)
    }
    const q = query[device]
    if (q !== 'new' && q !== 'use' && q !== 'none') {
      throw new BackupError('PROVIDER_INVALID', `invalid incremental mode '${String(q)}'`)
    }
  }
  const plans = new Map<DiskSpec, OfflineBitmapPlan>()
  const rollback = async (): Promise<void> => {
    for (const [d, p] of plans) await rollbackOfflineBitmaps(d, p)
    plans.clear()
  }
  try {
    // Every server and reader of this guest; all are closed (last opened first) before a
    // failure rolls the bitmaps back, and on success before the provider's backupCleanup.
    await using open = new CleanupStack()
    const volumes: Record<string, VmVolume> = {}
    for (const d of guest.disks) {
      const size = sizes[d.device]?.size ?? 0
      const plan = await prepareOfflineBitmaps(
        d,
        storeId,
        sizes[d.device]?.bitmapGeneration,
        query[d.device],
      )
      plans.set(d, plan)
      log.info(`${d.device}: ${d.format} ${d.path}, ${size} bytes, bitmap ${plan.mode}`)
      const bitmaps = {
        ...(plan.read === undefined ? {} : { bitmapName: plan.read, bitmapGeneration: plan.read }),
        ...(plan.next === undefined ? {} : { nextBitmapGeneration: plan.next }),
      }
      if (mechanism === 'nbd') {
        const server = open.use(await serveDisk(d, info.signal, plan.read))
        volumes[d.device] = { size, bitmapMode: plan.mode, nbdPath: server.socketPath, ...bitmaps }
      } else {
        const opened = open.use(await openDiskReader(d, size, info.signal, plan.read))
        volumes[d.device] = {
          size,
          bitmapMode: plan.mode,
          fileHandle: opened.reader,
          nextDirtyRegion: opened.nextDirtyRegion,
          ...bitmaps,
        }
      }
    }
    await provider.backupVm(guest.vmid, guest.config, volumes, { ...info, consistency: 'offline' })
  } catch (e) {
    try {
      await rollback()
    } catch (re) {
      // Keep the real error; the next run repairs the bitmaps.
      log.error(`bitmap rollback failed: ${toBackupError(re).message}`)
    }
    throw e
  }
  return {
    commit: async () => {
      for (const [d, p] of plans) await commitOfflineBitmaps(d, p)
      plans.clear()
    },
    rollback,
  }
}
