/** Findings of `check` (check.ts) and the helpers every part of it records them with. */
import type { ProviderLogFunction } from '../../api/provider.ts'
import { toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'

/** What `check` finds. */
export type FindingKind =
  | 'pending-removal'
  | 'stale-lock'
  | 'guest-locked'
  | 'stale-work-dir'
  | 'incomplete-backup'
  | 'stale-temp-file'
  | 'manifest-mismatch'
  | 'broken-chain'
  | 'orphan-image'
  | 'orphan-file'
  | 'stale-bitmap-record'
  | 'foreign-entry'

/** One finding of {@link checkStore}. */
export interface Finding {
  kind: FindingKind
  /** The store entry concerned (its display path). */
  path: string
  vmid?: number
  /** The backup concerned, if any. */
  volname?: string
  detail: string
  /** What `repair` does (or, when `repaired`, did); `none: …` for report-only findings. */
  repair: string
  repaired: boolean
}

/** Store file in the root (store.ts). */
export const STORE_FILE = 'guestbackup-store.json'
export const LOCK = '.lock'
export const FORCE_FULL = 'force-full'
/** `writeFileAtomic`'s temporary names: `.<name>.<12 hex>.tmp`. */
export const TEMP_RE = /^\..+\.[0-9a-f]{12}\.tmp$/
/** A younger temporary file may belong to a write in progress: it is not judged. */
export const TEMP_MIN_AGE_MS = 60_000
export const PARTIAL_PREFIX = '.partial-'
export const FAILED_RE = /^(.+)\.failed$/
/** A backup's attribute files, and its last verification (layout.ts `verifyName`). */
export const ATTR_RE = /^(.+)\.(notes|protected|verify)$/
/** Names guestbackup gives the files of a backup (manifest.ts `BACKUP_FILE_RE`, narrowed). */
export const DATA_RE = /^(?:.+\.(?:qcow2|blocks|conf|members)|archive\.(?:tar|sqfs))$/
export const REPORT_ONLY = 'none: guestbackup never writes it (left for you)'

/** The state of one pass over the store, or over one guest. */
export interface Ctx {
  repair: boolean
  signal: AbortSignal | undefined
  log: ProviderLogFunction | undefined
  findings: Finding[]
}

/**
 * Record a finding; in repair mode run `fix` first (no `fix`: report only). A failed repair is
 * recorded as such, with its error, and does not stop the check.
 */
export const found = async (
  ctx: Ctx,
  f: Omit<Finding, 'repaired'>,
  fix?: () => Promise<unknown>,
): Promise<boolean> => {
  let repaired = false
  let detail = f.detail
  if (ctx.repair && fix !== undefined) {
    try {
      await fix()
      repaired = true
      ctx.log?.('info', `repaired ${f.path}: ${f.repair}`)
    } catch (e) {
      if (ctx.signal?.aborted === true) throw e
      detail += ` (repair failed: ${toBackupError(e).message})`
    }
  }
  ctx.findings.push({ ...f, detail, repaired })
  return repaired
}

/** A temporary file (judged when old enough) or something guestbackup never writes. */
export const strayEntry = async (
  ctx: Ctx,
  dir: Dir,
  name: string,
  isFile: boolean,
  vmid?: number,
): Promise<void> => {
  const path = dir.labelOf(name)
  const where = vmid === undefined ? {} : { vmid }
  if (isFile && TEMP_RE.test(name)) {
    const st = await dir.lstat(name)
    if (st === undefined || Date.now() - st.mtimeMs < TEMP_MIN_AGE_MS) return
    const age = Math.round((Date.now() - st.mtimeMs) / 1000)
    await found(
      ctx,
      {
        kind: 'stale-temp-file',
        path,
        ...where,
        detail: `a temporary file left ${age} s ago by an interrupted write`,
        repair: 'remove it',
      },
      () => dir.unlink(name),
    )
    return
  }
  const what = isFile ? 'file' : 'entry that is not a regular file'
  await found(ctx, {
    kind: 'foreign-entry',
    path,
    ...where,
    detail: `an unknown ${what}`,
    repair: REPORT_ONLY,
  })
}
