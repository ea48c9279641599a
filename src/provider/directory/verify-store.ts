/**
 * `verify` over a store: the chosen backups of each guest are verified under the guest lock,
 * oldest first, and each outcome is recorded beside its backup. A backup that fails marks every
 * backup building on it failed too (their content reads through it), and the guest's next VM
 * backup is forced full, so no new incremental builds on damaged data.
 */
import type { ProviderLogFunction } from '../../api/provider.ts'
import type { Verification } from '../../api/storage.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { lockGuest } from '../../io/lock.ts'
import type { LockOptions } from '../../io/lock.ts'
import { recoverGuest } from './in-place.ts'
import { forceFull } from './incremental.ts'
import { parseVolname } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { listGuestBackups, listGuestIds } from './scan.ts'
import type { FoundBackup } from './scan.ts'
import type { BlockDigests } from '../../digest/blocks.ts'
import { verifyBackup } from './verify.ts'
import type { VerifyOptions, VerifyOutcome } from './verify.ts'
import { writeVerification } from './verify-state.ts'

/** One verified backup. */
export interface VerifyReport {
  volname: string
  outcome: VerifyOutcome
}

/** Options of {@link verifyStore}. */
export interface VerifyStoreOptions extends VerifyOptions {
  /** Only these backups (volume names); default every backup of the store. */
  volnames?: readonly string[] | undefined
  log?: ProviderLogFunction | undefined
  /** How to take each guest's lock (waiting, messages). */
  lock: (vmid: number) => LockOptions
}

/** Verify backups of the store and record the outcomes; see the module comment. */
export const verifyStore = async (
  layout: StoreLayout,
  opts: VerifyStoreOptions,
): Promise<VerifyReport[]> => {
  const wanted = opts.volnames === undefined ? undefined : new Set(opts.volnames.map(checked))
  const vmids =
    wanted === undefined ? undefined : new Set([...wanted].map((v) => parseVolname(v).vmid))
  const reports: VerifyReport[] = []
  await using root = await layout.openRoot()
  for (const vmid of await listGuestIds(root)) {
    if (vmids !== undefined && !vmids.has(vmid)) continue
    await using guest = await layout.openGuest(root, vmid)
    await using _lock = await lockGuest(guest, opts.lock(vmid))
    // What a killed run left goes first: a pending removal's victim must not be verified.
    await recoverGuest(layout, guest, vmid, opts.log ?? (() => undefined))
    const backups = (await listGuestBackups(guest, vmid)).reverse()
    const chosen = backups.filter((b) => wanted === undefined || wanted.has(b.ref.volname))
    // Oldest first: each image of a chain is read once, its dependants only where they differ.
    const verified = new Map<string, BlockDigests>()
    for (const b of chosen) {
      opts.signal.throwIfAborted()
      // Marked in this run already: it builds on a backup that failed.
      if (reports.some((r) => r.volname === b.ref.volname)) continue
      opts.log?.('info', `verifying ${b.ref.volname}`, { volname: b.ref.volname })
      const outcome = await verifyBackup(guest, b.ref, { ...opts, verified })
      reports.push({ volname: b.ref.volname, outcome })
      if (outcome.state === 'none') continue
      await writeVerification(layout, guest, b.ref, strip(outcome))
      if (outcome.state === 'failed') {
        await markDependants(layout, guest, b, backups, outcome, reports, opts)
      }
    }
  }
  for (const v of wanted ?? []) {
    if (!reports.some((r) => r.volname === v)) {
      throw new BackupError('NOT_FOUND', `backup ${v} does not exist`)
    }
  }
  return reports
}

const checked = (volname: string): string => parseVolname(volname).volname

const strip = (o: Verification): Verification =>
  o.detail === undefined
    ? { state: o.state, time: o.time }
    : { state: o.state, time: o.time, detail: o.detail }

/** Mark every backup building on `failed` (directly or not) failed; force the next VM full. */
const markDependants = async (
  layout: StoreLayout,
  guest: Dir,
  failed: FoundBackup,
  backups: readonly FoundBackup[],
  outcome: VerifyOutcome,
  reports: VerifyReport[],
  opts: VerifyStoreOptions,
): Promise<void> => {
  const doomed = new Set([failed.ref.volname])
  // Oldest first: a dependant's parent is older, so it is marked before its own dependants.
  for (const b of backups) {
    const parents = [
      b.manifest?.parent,
      ...Object.values(b.manifest?.disks ?? {}).map((d) => d.parent),
    ].filter((p): p is string => p !== undefined)
    if (!parents.some((p) => doomed.has(p))) continue
    doomed.add(b.ref.volname)
    const detail = `builds on ${failed.ref.volname}, which failed verification`
    const v: Verification = { state: 'failed', time: outcome.time, detail }
    await writeVerification(layout, guest, b.ref, v)
    const existing = reports.find((r) => r.volname === b.ref.volname)
    if (existing === undefined)
      reports.push({ volname: b.ref.volname, outcome: { ...v, bytes: 0 } })
    opts.log?.('warn', `${b.ref.volname} ${detail}`, { volname: b.ref.volname })
  }
  if (failed.ref.subtype === 'qemu') {
    await forceFull(guest, `${failed.ref.volname} failed verification: ${outcome.detail ?? ''}`)
  }
}
