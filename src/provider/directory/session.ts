/**
 * The directory provider's per-guest state as plain JSON, for hosts that run each provider call
 * in a process of its own (the Proxmox VE plugin, docs/pve-protocol.md): `suspend()` exports
 * it, `DirectoryProvider.resume()` takes it back. A session is input: every field is checked
 * by the store's own validators, and every path is derived from the validated vmid, type and
 * time (never taken from the session), so a forged session cannot reach outside the store.
 */
import { join } from 'node:path'
import * as z from 'zod'
import { DEVICE_NAME_RE } from '../../api/names.ts'
import { GUEST_TYPES } from '../../api/provider.ts'
import type { ProviderLogFunction } from '../../api/provider.ts'
import { BackupError } from '../../errors.ts'
import { Dir } from '../../io/beneath.ts'
import { isMappedUser } from '../../io/acl.ts'
import { lockGuest } from '../../io/lock.ts'
import type { LockOptions } from '../../io/lock.ts'
import { MAX_CHAIN_DEPTH } from '../../qemu/chain.ts'
import { BACKUP_DIR_RE, MANIFEST, volumeRef } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { incrementalBase } from './incremental.ts'
import type { GuestState } from './provider.ts'
import { refOf } from './scan.ts'

/** Format version of a provider session. */
export const SESSION_VERSION = 1

// An incremental base as backupVmQueryIncremental found it; the names of its files are derived
// from the device and the base's directory name, never stored.
const BaseSchema = z.strictObject({
  dirName: z.string().regex(BACKUP_DIR_RE, 'not a backup directory name'),
  /** Absent when the host gives no bitmap generations (Proxmox): the bitmap record decides. */
  generation: z.string().min(1).max(256).optional(),
  depth: z.number().int().min(1).max(MAX_CHAIN_DEPTH),
})

const GuestSchema = z.strictObject({
  vmid: z.number().int().min(1).max(999_999_999),
  type: z.enum(GUEST_TYPES),
  /** Backup time, Unix seconds (up to the year 9999, what RFC 3339 names can hold). */
  ctime: z.number().int().nonnegative().max(253_402_300_799),
  /** True once backupVm/backupContainer renamed the backup into place. */
  committed: z.boolean(),
  /**
   * Set by backupContainerPrepare for an unprivileged container: the backup is written in place
   * (in its final-named directory) by this host uid, the container's mapped root.
   */
  inPlaceUid: z.number().int().min(1).max(0xfffffffe).optional(),
  bases: z.record(z.string().regex(DEVICE_NAME_RE, 'not a device name'), BaseSchema),
})

/** Schema of a provider session. */
export const ProviderSessionSchema = z.strictObject({
  version: z.literal(SESSION_VERSION),
  /** The guests whose backups this provider has started and not yet finished. */
  guests: z.array(GuestSchema).max(1024),
})

/** A provider session. */
export type ProviderSession = z.infer<typeof ProviderSessionSchema>

/** One guest of a {@link ProviderSession}. */
export type SessionGuest = z.infer<typeof GuestSchema>

const invalid = (why: string): BackupError =>
  new BackupError('SESSION_INVALID', `invalid provider session: ${why}`)

/** The JSON form of one guest's state. */
export const exportGuest = (g: GuestState): SessionGuest => ({
  vmid: g.ref.vmid,
  type: g.ref.subtype,
  ctime: g.ref.ctime,
  committed: g.committed,
  ...(g.inPlaceUid === undefined ? {} : { inPlaceUid: g.inPlaceUid }),
  bases: Object.fromEntries(
    Object.entries(g.bases).map(([d, b]) => [
      d,
      {
        dirName: b.dirName,
        ...(b.generation === undefined ? {} : { generation: b.generation }),
        depth: b.depth,
      },
    ]),
  ),
})

/**
 * Validate a session: its schema, then that each guest appears once and its incremental bases are older VM backups of the same guest.
 * @throws BackupError `SESSION_INVALID`
 */
export const parseProviderSession = (raw: unknown): ProviderSession => {
  const r = ProviderSessionSchema.safeParse(raw)
  if (!r.success) {
    const i = r.error.issues[0]
    throw invalid(i === undefined ? 'unknown' : `${i.path.join('.') || 'session'}: ${i.message}`)
  }
  const seen = new Set<number>()
  for (const g of r.data.guests) {
    if (seen.has(g.vmid)) throw invalid(`guest ${g.vmid} appears twice`)
    seen.add(g.vmid)
    const ref = volumeRef(g.vmid, g.type, g.ctime)
    for (const [device, b] of Object.entries(g.bases)) {
      if (g.type !== 'qemu' || !b.dirName.startsWith('qemu-') || b.dirName >= ref.dirName) {
        throw invalid(`the base of ${device} is not an older VM backup of guest ${g.vmid}`)
      }
    }
  }
  return r.data
}

/**
 * Reopen one guest's backup in progress: its guest directory, its lock (taken again) and its
 * partial (or, once committed, its final) directory. Undefined, with a warning, when the
 * backup is gone. A backup written in place is committed once its manifest exists; reopened
 * by a mapped user (acl.ts isMappedUser), it is the container's mapped root writing it
 * ({@link openInPlaceChild}).
 */
export const openGuestState = async (
  layout: StoreLayout,
  g: SessionGuest,
  log: ProviderLogFunction,
  lockOptions: LockOptions,
): Promise<GuestState | undefined> => {
  const ref = volumeRef(g.vmid, g.type, g.ctime)
  if (g.inPlaceUid !== undefined && (await isMappedUser())) {
    return await openInPlaceChild(layout, ref, g.inPlaceUid)
  }
  let guest: Dir | undefined
  {
    await using root = await layout.openRoot()
    guest = await root.tryOpenDir(String(ref.vmid))
  }
  if (guest === undefined) {
    log('warn', `the backup in progress ${ref.volname} is gone (no guest directory)`)
    return undefined
  }
  let lock
  try {
    lock = await lockGuest(guest, lockOptions)
    const inPlace = g.inPlaceUid !== undefined
    // The partial directory, while the session says the backup is not committed yet.
    let partial =
      inPlace || g.committed ? undefined : await guest.tryOpenDir(layout.partialName(ref))
    let committed = false
    if (partial === undefined) {
      // The final directory, named by backupInit unused, so this backup's own: committed by
      // us, or by the forked backup_container whose session never comes back (pve-storage
      // PVE/BackupProvider/Plugin/Base.pm: "changes to $self made during this method will not
      // be visible"); written in place, committed once its manifest exists (scan.ts
      // readBackup lists it only then).
      partial = await guest.tryOpenDir(ref.dirName)
      committed =
        partial !== undefined && (!inPlace || (await partial.lstat(MANIFEST)) !== undefined)
      if (partial === undefined && (inPlace || !g.committed)) {
        partial = await removedDir(guest, layout.partialName(ref))
      }
    }
    if (partial === undefined) {
      log('warn', `the backup ${ref.volname} is gone`)
      await lock.release()
      await guest.close()
      return undefined
    }
    const bases: GuestState['bases'] = {}
    for (const [device, b] of Object.entries(g.bases)) {
      const base = refOf(ref.vmid, b.dirName, 'qemu')
      if (base === undefined) throw invalid(`the base of ${device} is not a VM backup`)
      bases[device] = incrementalBase(base, device, b.generation, b.depth)
    }
    return {
      ref,
      guest,
      partial,
      lock,
      committed,
      inPlaceUid: g.inPlaceUid,
      bases,
    }
  } catch (e) {
    await lock?.release()
    await guest.close()
    throw e
  }
}

/**
 * The backup written in place, as backup_container reopens it in the container's user
 * namespace (pve-container src/PVE/VZDump/LXC.pm runs it through
 * PVE::LXC::Namespaces::run_in_userns as the mapped root). That uid may only search the store
 * root and the guest directory (backupContainerPrepare), so the backup directory is opened by
 * its path; the guest directory is neither opened nor changed, and no guest lock is taken:
 * vzdump holds the guest's lock, and the mapped root could not create ours. The last component
 * is opened with O_NOFOLLOW; a link planted higher up would take write access to a store
 * directory, and following it only reaches what this uid can reach anyway.
 */
const openInPlaceChild = async (
  layout: StoreLayout,
  ref: VolumeRef,
  uid: number,
): Promise<GuestState> => {
  const partial = await Dir.open(join(layout.root, String(ref.vmid), ref.dirName), {
    noFollow: true,
  })
  const committed = (await partial.lstat(MANIFEST)) !== undefined
  return {
    ref,
    guest: undefined,
    partial,
    lock: undefined,
    committed,
    inPlaceUid: uid,
    bases: {},
  }
}

/**
 * A handle on a directory that no longer exists. A partial backup is removed by
 * backupCleanup after a failure, while the in-process provider keeps its handle until
 * backupHandleLogFile: a resumed one gets the same (a directory made and removed at once, under
 * the guest lock), so the task log is still kept and anything writing into the backup fails
 * with ENOENT, as it would in-process.
 */
const removedDir = async (guest: Dir, name: string): Promise<Dir | undefined> => {
  if (!(await guest.mkdir(name, 0o700))) return undefined
  const dir = await guest.openDir(name)
  await guest.removeTree(name)
  return dir
}
