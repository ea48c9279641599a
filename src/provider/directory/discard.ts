/**
 * The end of a backup task in the directory provider: discarding a backup of a failed task,
 * committed or not, and keeping the task log with the backup (or, for a failed task, in
 * `<type>-<time>.failed/`).
 */
import type { ProviderLogFunction } from '../../api/provider.ts'
import { withSpaceIn } from '../../errors.ts'
import { exists } from '../../io/fs.ts'
import { guestDir, reclaimInPlace } from './in-place.ts'
import type { StoreLayout } from './layout.ts'
import { freeBackup } from './merge.ts'
import type { GuestState } from './provider.ts'

/** Remove the backup of `g`, not committed: its partial dir, or written in place, its dir. */
export const discardUncommitted = async (
  layout: StoreLayout,
  g: GuestState,
  log: ProviderLogFunction,
): Promise<void> => {
  const guest = guestDir(g)
  if (g.inPlaceUid === undefined) {
    await guest.removeTree(layout.partialName(g.ref))
    return
  }
  await reclaimInPlace(layout, g, log)
  // An empty dir made by session.ts removedDir may sit at the partial name.
  await guest.removeTree(layout.partialName(g.ref))
  await guest.removeTree(g.ref.dirName)
}

/**
 * Remove the committed backup of this task. It is the guest's newest, so nothing builds on it
 * yet; the removal still goes through the journal of `merge.ts` (manifest first, so it is
 * unlisted at once, and completed by the next run if this one dies). Protection set by this
 * very task does not keep it.
 */
export const discardCommitted = async (
  layout: StoreLayout,
  g: GuestState,
  log: ProviderLogFunction,
): Promise<void> => {
  const guest = guestDir(g)
  await guest.unlink(layout.protectedName(g.ref))
  await freeBackup(layout, guest, g.ref, { log })
  g.committed = false
}

/** Keep the task log `filename` with the backup of `g` (or its failed run). */
export const keepTaskLog = async (
  layout: StoreLayout,
  g: GuestState,
  filename: string,
  log: ProviderLogFunction,
): Promise<void> => {
  const guest = guestDir(g)
  const failed = layout.failedName(g.ref)
  if (!g.committed) {
    // The name is ours: an entry there that is no directory (a planted link) is replaced.
    const st = await guest.lstat(failed)
    if (st !== undefined && !st.isDirectory()) await guest.unlink(failed)
  }
  await using dir = g.committed
    ? await guest.openDir(g.ref.dirName)
    : await guest.openDir(failed, { create: 0o700 })
  await dir.unlink('backup.log')
  if (await exists(filename)) {
    const where = `${g.ref.vmid}/${g.committed ? g.ref.dirName : failed}/backup.log`
    await withSpaceIn('store', layout.root, () => dir.copyIn(filename, 'backup.log'), where)
  } else log('warn', `the task log ${filename} does not exist: none kept`)
}
