/**
 * Pruning a directory store: Proxmox's retention (`src/storage/prune.ts`) over the store's
 * volumes, then each backup marked `remove` freed oldest first under its guest's lock (a base is
 * merged into a dependant that is itself kept, `merge.ts`), and the failed runs beyond what the
 * policy keeps removed. `dryRun` only reports what would go, with the merges it would do.
 */
import type { ProviderLogFunction } from '../../api/provider.ts'
import type { BackupVolume, PruneOptions, PruneResultEntry } from '../../api/storage.ts'
import { BackupError, isBackupError } from '../../errors.ts'
import { lockGuest } from '../../io/lock.ts'
import type { LockOptions } from '../../io/lock.ts'
import { parsePruneBackups } from '../../storage/prune-options.ts'
import { planPrune } from '../../storage/prune.ts'
import { usedBytes } from './describe.ts'
import { pruneFailedRuns } from './failed-runs.ts'
import { recoverGuest } from './in-place.ts'
import { parseVolname } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { freeBackup, planRemoval } from './merge.ts'
import type { PlannedMerge } from './merge.ts'
import type { StoreOptions } from './options.ts'

/** What pruning needs of the store it prunes. */
export interface PruneStore {
  layout: StoreLayout
  options: StoreOptions
  /** The store's backups (of one guest). */
  listVolumes: (vmid?: number) => Promise<BackupVolume[]>
  /** How the guest lock of `vmid` is taken for a prune. */
  lockOptions: (vmid: number, log?: ProviderLogFunction) => LockOptions
  /** A merge as reported (the dependant by volume id). */
  merge: (m: PlannedMerge) => NonNullable<PruneResultEntry['merges']>[number]
  /** The volume id of a volume name. */
  volid: (volname: string) => string
}

/** Prune the store `s` (see the module comment). */
export const pruneStore = async (
  s: PruneStore,
  opts: PruneOptions,
): Promise<PruneResultEntry[]> => {
  const keep = opts.keep ?? parsePruneBackups(s.options['prune-backups'])
  const volumes = await s.listVolumes(opts.vmid)
  const plan = planPrune(
    volumes.map((v) => ({
      volid: v.volid,
      ctime: v.ctime,
      protected: v.protected,
      vmid: v.vmid,
      subtype: v.subtype,
    })),
    keep,
    {
      ...(opts.vmid === undefined ? {} : { vmid: opts.vmid }),
      ...(opts.type === undefined ? {} : { subtype: opts.type }),
    },
  )
  const result: PruneResultEntry[] = plan.map((p) => ({
    volid: p.volid,
    ctime: p.ctime,
    mark: p.mark,
    type: p.subtype,
    vmid: p.vmid,
  }))
  if (opts.dryRun) {
    await using root = await s.layout.openRoot()
    for (const r of result) {
      if (r.mark !== 'remove') continue
      const ref = parseVolname(r.volid.slice(r.volid.indexOf(':') + 1))
      await using guest = await root.tryOpenDir(String(ref.vmid))
      if (guest === undefined) continue
      const merges = await planRemoval(s.layout, guest, ref)
      r.bytes = await usedBytes(guest, ref).catch(() => 0)
      if (merges.length > 0) r.merges = merges.map((m) => s.merge(m))
    }
    return result
  }
  let errors = 0
  await using root = await s.layout.openRoot()
  // Oldest first, so a removed base is merged into a dependant that is itself kept.
  for (const r of [...result].reverse()) {
    if (r.mark !== 'remove') continue
    const volname = r.volid.slice(r.volid.indexOf(':') + 1)
    try {
      const ref = parseVolname(volname)
      await using guest = await root.tryOpenDir(String(ref.vmid))
      if (guest === undefined) throw new BackupError('NOT_FOUND', `${volname} does not exist`)
      await using _lock = await lockGuest(guest, s.lockOptions(ref.vmid, opts.log))
      await recoverGuest(s.layout, guest, ref.vmid, opts.log ?? (() => undefined))
      const bytes = await usedBytes(guest, ref).catch(() => 0)
      const merges = await freeBackup(s.layout, guest, ref, {
        log: opts.log,
        onProgress: opts.onProgress,
      })
      r.bytes = bytes
      if (merges.length > 0) r.merges = merges.map((m) => s.merge(m))
      opts.log?.('info', `removed ${r.volid}`, { volid: r.volid, bytes })
    } catch (e) {
      // A concurrent prune or remove got there first: what is gone is not an error.
      if (isBackupError(e, 'NOT_FOUND')) {
        opts.log?.('info', `${r.volid} was already removed`, { volid: r.volid })
        continue
      }
      errors++
      opts.log?.('err', `cannot remove ${r.volid}: ${(e as Error).message}`, { volid: r.volid })
    }
  }
  for (const vmid of new Set(result.map((r) => r.vmid))) {
    await using guest = await root.tryOpenDir(String(vmid))
    if (guest === undefined) continue
    await using _lock = await lockGuest(guest, s.lockOptions(vmid, opts.log))
    await recoverGuest(s.layout, guest, vmid, opts.log ?? (() => undefined))
    await pruneFailedRuns(s.layout, guest, vmid, opts.log, s.volid)
  }
  if (errors > 0) throw new BackupError('IO', 'error pruning backups - check log')
  return result
}
