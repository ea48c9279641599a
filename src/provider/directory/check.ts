/**
 * `check`: an fsck of a directory store. Read-only unless `repair`: the default run opens,
 * lists and reads, and changes not a byte (no lock is taken either). Findings: what killed runs
 * left (a pending removal journal, partial and incomplete backup directories, lock entries,
 * temporary files), backups whose files do not match their manifest or whose image chain is
 * broken (a parent deleted by hand), orphaned files, bitmap records naming backups that are
 * gone, and anything guestbackup never writes (reported, never touched).
 *
 * With `repair`, each guest's lock is taken while it is repaired (a guest whose lock is held
 * is reported and left alone): a pending removal is completed first, then every finding gets
 * its repair. Nothing that may be backup data is deleted: unusable backups are renamed aside
 * (check-backup.ts `quarantine`); only what guestbackup itself writes and no backup needs is
 * removed. Everything is reached through {@link Dir}; images only through `openChain`.
 */
import type { ProviderLogFunction } from '../../api/provider.ts'
import { isBackupError, toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { lockGuest } from '../../io/lock.ts'
import type { GuestLock } from '../../io/lock.ts'
import { checkEntries } from './check-entries.ts'
import { found, LOCK, REPORT_ONLY, STORE_FILE, strayEntry } from './check-report.ts'
import type { Ctx, Finding } from './check-report.ts'
import { GUEST_DIR_RE, JOURNAL } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { pendingRemoval, resumeRemoval } from './merge.ts'
import { listGuestIds } from './scan.ts'

export type { Finding, FindingKind } from './check-report.ts'

/** Options of {@link checkStore}. */
export interface CheckOptions {
  /** Repair what is found (taking each guest's lock); default false: change nothing. */
  repair?: boolean
  /** Only this guest (the store root's own entries are then not checked). */
  vmid?: number | undefined
  signal?: AbortSignal | undefined
  log?: ProviderLogFunction | undefined
}

/** Check the store (or one guest of it); the findings in store order. */
export const checkStore = async (layout: StoreLayout, opts: CheckOptions): Promise<Finding[]> => {
  const ctx: Ctx = {
    repair: opts.repair === true,
    signal: opts.signal,
    log: opts.log,
    findings: [],
  }
  await using root = await layout.openRoot()
  let ids: number[]
  if (opts.vmid === undefined) {
    ids = await listGuestIds(root)
    for (const e of await root.list()) {
      if ((e.name === STORE_FILE && e.isFile()) || (GUEST_DIR_RE.test(e.name) && e.isDirectory()))
        continue
      await strayEntry(ctx, root, e.name, e.isFile())
    }
  } else {
    ids = (await root.lstat(String(opts.vmid))) === undefined ? [] : [opts.vmid]
  }
  for (const vmid of ids) {
    opts.signal?.throwIfAborted()
    let guest: Dir
    try {
      guest = await layout.openGuest(root, vmid)
    } catch (e) {
      if (!isBackupError(e, 'UNSAFE_PATH')) throw e
      await found(ctx, {
        kind: 'foreign-entry',
        path: root.labelOf(String(vmid)),
        vmid,
        detail: e.message,
        repair: REPORT_ONLY,
      })
      continue
    }
    await using _guest = guest
    await checkGuest(ctx, layout, guest, vmid)
  }
  return ctx.findings
}

/** One guest directory: under its lock when repairing. */
const checkGuest = async (
  ctx: Ctx,
  layout: StoreLayout,
  guest: Dir,
  vmid: number,
): Promise<void> => {
  const g: Ctx = { ...ctx }
  const lockEntry = await guest.lstat(LOCK)
  let lock: GuestLock | undefined
  if (ctx.repair) {
    try {
      lock = await lockGuest(guest, { operation: 'check', what: `guest ${vmid}`, waitMs: 0 })
    } catch (e) {
      if (!isBackupError(e, 'LOCKED')) throw e
      g.repair = false
      await found(ctx, {
        kind: 'guest-locked',
        path: guest.labelOf(LOCK),
        vmid,
        detail: 'a running command holds the guest lock: nothing of this guest was repaired',
        repair: 'none: run check --repair again when it is done',
      })
    }
  }
  try {
    if (lockEntry !== undefined && (!ctx.repair || lock !== undefined)) {
      const age = Math.round((Date.now() - lockEntry.mtimeMs) / 1000)
      await found(
        g,
        {
          kind: 'stale-lock',
          path: guest.labelOf(LOCK),
          vmid,
          detail: `a lock entry (changed ${age} s ago): a running command holds it, or a killed one left it`,
          repair: 'remove it when nobody holds it (the guest lock can be taken)',
        },
        () => Promise.resolve(), // taken over by lockGuest, removed on release
      )
    }
    const doomed = await checkJournal(g, layout, guest, vmid)
    await checkEntries(g, layout, guest, vmid, doomed)
  } finally {
    await lock?.release()
  }
}

/**
 * A pending removal: completed in repair mode. Returns the backups it still involves (none once
 * completed), which the rest of the check leaves to it.
 */
const checkJournal = async (
  ctx: Ctx,
  layout: StoreLayout,
  guest: Dir,
  vmid: number,
): Promise<Set<string>> => {
  if ((await guest.lstat(JOURNAL)) === undefined) return new Set()
  const path = guest.labelOf(JOURNAL)
  let journal
  try {
    journal = await pendingRemoval(guest)
  } catch (e) {
    await found(ctx, {
      kind: 'pending-removal',
      path,
      vmid,
      detail: toBackupError(e).message,
      repair: 'none: inspect it by hand (guestbackup cannot complete it)',
    })
    ctx.repair = false
    return new Set()
  }
  if (journal === undefined) return new Set()
  const involved = new Set([journal.volname, ...journal.merges.map((m) => m.child)])
  const done = await found(
    ctx,
    {
      kind: 'pending-removal',
      path,
      vmid,
      volname: journal.volname,
      detail: `the removal of ${journal.volname} was interrupted (${journal.merges.length} merges)`,
      repair: 'complete it, as the next backup, prune or remove of the guest would',
    },
    () => resumeRemoval(layout, guest, { log: ctx.log, signal: ctx.signal }),
  )
  // A guest whose removal cannot be completed is inconsistent: leave the rest as it is.
  if (ctx.repair && !done) ctx.repair = false
  return done ? new Set() : involved
}
