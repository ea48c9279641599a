/** Failed backup runs kept in a store: how they are listed, and when their logs go. */
import type { GuestType, ProviderLogFunction } from '../../api/provider.ts'
import type { Dir } from '../../io/beneath.ts'
import type { StoreLayout } from './layout.ts'
import { listFailedRuns, listGuestBackups } from './scan.ts'

/** A failed backup run as {@link DirectoryStorage.listFailed} shows it. */
export interface FailedVolume {
  /** The volume id the backup would have had. */
  volid: string
  vmid: number
  subtype: GuestType
  ctime: number
  /** The error line of its task log, if found. */
  error: string | undefined
  /** Path of its task log. */
  log: string
}

/**
 * Remove the failed runs of a guest older than its newest backup of the same type: once a
 * backup succeeded, the logs of the failures before it are history (the caller holds the lock).
 */
export const pruneFailedRuns = async (
  layout: StoreLayout,
  guest: Dir,
  vmid: number,
  log: ProviderLogFunction | undefined,
  volid: (volname: string) => string,
): Promise<void> => {
  const newest = new Map<GuestType, number>()
  for (const b of await listGuestBackups(guest, vmid)) {
    newest.set(b.ref.subtype, Math.max(newest.get(b.ref.subtype) ?? 0, b.ref.ctime))
  }
  for (const f of await listFailedRuns(guest, vmid)) {
    if (f.ref.ctime < (newest.get(f.ref.subtype) ?? 0)) {
      await guest.removeTree(layout.failedName(f.ref))
      log?.('info', `removed the log of failed run ${volid(f.ref.volname)}`)
    }
  }
}
