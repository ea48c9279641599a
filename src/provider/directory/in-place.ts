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
import { pendingRemoval, resumeRemoval } from './merge.ts'
import type { GuestState } from './provider.ts'
import { isCommitted, listGuestIds, refOf } from './scan.ts'

/** The guest dir of `g`; a call that needs it fails in the container's user namespace. */
export const guestDir = (g: GuestState): Dir => {
  if (g.guest === undefined) {
    throw new BackupError('PROVIDER_FAILED', `guest ${g.ref.vmid}: not available as a mapped root`)
  }
  return g.guest
}

/**
 * A temporary file of `Dir.writeFileAtomic` (`.<name>.<12 hex>.tmp`) whose write holds the
 * guest lock: everything but notes and protection, which are set without it, so that a
 * concurrent `notes --set` or `protect` is never swept from under its rename.
 */
const LOCKED_TMP = /^\.(.+)\.[0-9a-f]{12}\.tmp$/
const lockedTmp = (name: string): boolean => {
  const of = LOCKED_TMP.exec(name)?.[1]
  return of !== undefined && !of.endsWith('.notes') && !of.endsWith('.protected')
}

/**
 * Remove what killed runs left in `guest` (under its lock, after resumeRemoval): partial
 * dirs, temporary files of atomic writes (in the guest dir and in backup dirs, where a merge
 * rewrites a dependant's manifest), and container backups written in place that never got
 * their manifest, with the ACL entries given for them. A removal journal's own backup also
 * lacks its manifest and is left to the journal. Each removal is logged: the operator sees what
 * a crash cost.
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
      const name = e.name.slice('.partial-'.length)
      const what = refOf(vmid, name)
      log(
        'info',
        `removing the partial backup ${what?.volname ?? guest.labelOf(e.name)} left by a killed run`,
      )
      await guest.removeTree(e.name)
    } else if (e.isFile() && lockedTmp(e.name)) {
      log('info', `removing the temporary file ${guest.labelOf(e.name)} left by a killed run`)
      await guest.unlink(e.name)
    } else if (e.isDirectory()) {
      const ref = refOf(vmid, e.name)
      if (ref === undefined || ref.volname === doomed) continue
      // Whether it is committed decides; its manifest is checked where it is read.
      if (await isCommitted(guest, ref)) {
        await sweepTmp(log, guest, e.name)
        continue
      }
      if (ref.subtype !== 'lxc') continue
      log('info', `removing ${ref.volname}, left incomplete by a killed run`)
      await guest.removeTree(e.name)
      inPlaceLeft = true
    }
  }
  if (inPlaceLeft) await revokeAll(guest.path)
}

/** Remove the temporary files a killed atomic write left in the backup dir `name`. */
const sweepTmp = async (log: ProviderLogFunction, guest: Dir, name: string): Promise<void> => {
  await using dir = await guest.tryOpenDir(name)
  if (dir === undefined) return
  for (const f of await dir.list()) {
    if (!f.isFile() || !lockedTmp(f.name)) continue
    log('info', `removing the temporary file ${dir.labelOf(f.name)} left by a killed run`)
    await dir.unlink(f.name)
  }
}

/**
 * Everything a command holding the guest lock does first: complete a removal a killed run left
 * (its journal), then sweep the rest ({@link sweepLeftovers}). Every command that takes the lock
 * (backup, prune, remove, verify) calls it, so nothing a crash left outlives the next of them.
 */
export const recoverGuest = async (
  layout: StoreLayout,
  guest: Dir,
  vmid: number,
  log: ProviderLogFunction,
): Promise<void> => {
  await resumeRemoval(layout, guest, { log })
  await sweepLeftovers(log, guest, vmid)
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
