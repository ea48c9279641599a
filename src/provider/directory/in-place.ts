/**
 * Unprivileged container backups are written in place: pve-container runs backupContainer as
 * the container's mapped root in its user namespace (src/PVE/VZDump/LXC.pm), so the backup
 * dir gets its final name and that owner before, and is taken back by root after. This file
 * holds the root-side halves: taking a backup back, and sweeping what a killed run left.
 */
import type { ProviderLogFunction } from '../../api/provider.ts'
import { BackupError } from '../../errors.ts'
import { hasUserEntry, revokeAll, revokeUser } from '../../io/acl.ts'
import type { Dir } from '../../io/beneath.ts'
import type { StoreLayout } from './layout.ts'
import { pendingRemoval } from './merge.ts'
import type { GuestState } from './provider.ts'
import { listGuestIds, readBackup, refOf } from './scan.ts'

/** The guest dir of `g`; a call that needs it fails in the container's user namespace. */
export const guestDir = (g: GuestState): Dir => {
  if (g.guest === undefined) {
    throw new BackupError('PROVIDER_FAILED', `guest ${g.ref.vmid}: not available as a mapped root`)
  }
  return g.guest
}

/**
 * Remove what killed runs left in `guest` (under its lock, after resumeRemoval): partial
 * dirs, and container backups written in place that never got their manifest, with the
 * ACL entries given for them. A removal journal's own backup also lacks its manifest and is
 * left to the journal.
 */
export const sweepLeftovers = async (
  log: ProviderLogFunction,
  guest: Dir,
  vmid: number,
): Promise<void> => {
  const doomed = (await pendingRemoval(guest))?.volname
  let inPlaceLeft = false
  for (const e of await guest.list()) {
    if (e.name.startsWith('.partial-')) {
      await guest.removeTree(e.name)
    } else if (e.isDirectory()) {
      const ref = refOf(vmid, e.name, 'lxc')
      if (ref === undefined || ref.volname === doomed) continue
      if ((await readBackup(guest, ref)) !== undefined) continue
      log('info', `removing ${ref.volname}, left incomplete by a killed run`)
      await guest.removeTree(e.name)
      inPlaceLeft = true
    }
  }
  if (inPlaceLeft) await revokeAll(guest.path)
}

/**
 * Take back a backup written in place (root, the guest lock held): the dir and its files
 * become root's (0700/0600), so the container's root can no longer change it, and the ACL
 * entries of backupContainerPrepare go. The dir is taken first: from then on its entries
 * cannot change. An entry that is not a plain file with one link was not written by us and
 * is removed. Idempotent.
 */
export const reclaimInPlace = async (
  layout: StoreLayout,
  g: GuestState,
  log: ProviderLogFunction,
): Promise<void> => {
  const uid = g.inPlaceUid
  if (uid === undefined) return
  const guest = guestDir(g)
  const dir = g.partial
  await dir.chown(0, 0)
  await dir.chmod(0o700)
  for (const e of await dir.list()) {
    if (!(await dir.ownFile(e.name, 0, 0, 0o600))) {
      log('warn', `removing ${dir.labelOf(e.name)}: not a file the backup wrote`)
      await dir.removeTree(e.name)
    }
  }
  await dir.sync()
  await revokeUser(guest.path, uid)
  // The store root's entry serves every guest dir that still has one for this uid (another
  // container's backup running with the same mapping).
  await using root = await layout.openRoot()
  let inUse = false
  for (const id of await listGuestIds(root)) {
    if (id !== g.ref.vmid && (await hasUserEntry(root.at(String(id)), uid))) inUse = true
  }
  if (!inUse) await revokeUser(root.path, uid)
}
