/**
 * Backup retention ("prune") with the exact semantics of Proxmox VE.
 *
 * Sources: pve-storage `src/PVE/Storage.pm` — `prune_mark_backup_group` and its helper closure
 * `$prune_mark` — and the default `prune_backups` of `src/PVE/Storage/Plugin.pm`, which builds
 * the `"$type/$vmid"` groups and marks protected backups before marking.
 *
 * Everything here is pure: it decides marks, the storage plugin deletes the `remove`d volumes.
 */

import { inspect } from 'node:util'
import { BackupError } from '../errors.ts'
import { KEEP_COUNT_KEYS, assertKeepOptions } from './prune-options.ts'
import type { KeepCountKey, KeepOptions } from './prune-options.ts'

/** One backup of a backup group, as far as pruning needs it. */
export interface PruneEntry {
  /** Volume id, e.g. `store:backup/vzdump-qemu-100-2024_01_01-00_00_00.vma.zst`. */
  volid: string
  /** Creation time in unix seconds (an integer). */
  ctime: number
  /** Protected backups are never removed and never count toward any keep option. */
  protected: boolean
}

/** What prune does with one backup. */
export type PruneMarkKind = 'keep' | 'remove' | 'protected'

/** The decision for one backup. */
export interface PruneMark {
  /** Volume id of the backup. */
  volid: string
  /** Creation time in unix seconds. */
  ctime: number
  /** `keep`, `remove`, or `protected` (kept, outside the retention policy). */
  mark: PruneMarkKind
}

/** Guest type of a backup; groups never mix types. */
export type PruneSubtype = 'qemu' | 'lxc'

/** A backup of any guest, for {@link planPrune}. */
export interface PruneGuestEntry extends PruneEntry {
  /** Guest id the backup belongs to. */
  vmid: number
  /** Guest type. */
  subtype: PruneSubtype
}

/** The decision for one backup of {@link planPrune}, with its group. */
export interface PlannedPruneMark extends PruneMark {
  /** Guest id the backup belongs to. */
  vmid: number
  /** Guest type. */
  subtype: PruneSubtype
}

/** Options of {@link markBackupGroup} and {@link backupPeriods}. */
export interface PruneTimeOptions {
  /**
   * IANA time zone (e.g. `Europe/Vienna`) in which hours, days, weeks, months and years are
   * counted. Default: the process's local time zone (`TZ`), like Perl's `localtime` on the node.
   */
  timeZone?: string
}

/** Options of {@link planPrune}. */
export interface PlanPruneOptions extends PruneTimeOptions {
  /** Only backups of this guest id. */
  vmid?: number
  /** Only backups of this guest type. */
  subtype?: PruneSubtype
}

/**
 * The calendar periods of a backup, in local time. These are the bucket ids of the period
 * options; two backups are in the same period exactly when the ids are equal.
 */
export interface BackupPeriods {
  /** `YYYY-MM-DDTHH` (keep-hourly). */
  hour: string
  /** `YYYY-MM-DD` (keep-daily). */
  day: string
  /** `GGGG-Www`, ISO 8601 week-year and week (keep-weekly; strftime `%G`/`%V`). */
  week: string
  /** `YYYY-MM` (keep-monthly). */
  month: string
  /** `YYYY` (keep-yearly). */
  year: string
}

/** Broken-down local time, month and day 1-based. */
interface LocalTime {
  year: number
  month: number
  day: number
  hour: number
}

// The JavaScript Date range is ±8.64e15 ms; leave a day of room for the time zone offset.
const MAX_ABS_CTIME = 8_640_000_000_000 - 86_400

const SUBTYPES: readonly string[] = ['qemu', 'lxc'] satisfies PruneSubtype[]

const pad = (n: number, width: number): string =>
  n < 0 ? `-${String(-n).padStart(width, '0')}` : String(n).padStart(width, '0')

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`). */
const daysFromCivil = (year: number, month: number, day: number): number => {
  const y = month <= 2 ? year - 1 : year
  const era = Math.floor(y / 400)
  const yoe = y - era * 400
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146_097 + doe - 719_468
}

/** ISO 8601 week-year and week of a date (what strftime `%G` and `%V` print). */
const isoWeek = (year: number, month: number, day: number): { isoYear: number; week: number } => {
  const days = daysFromCivil(year, month, day)
  const isoWeekday = (((days + 3) % 7) + 7) % 7 // 0 = Monday (1970-01-01 was a Thursday)
  const thursday = days - isoWeekday + 3
  // The Thursday of a week lies in its ISO week-year, which is the calendar year or a neighbour.
  let isoYear = year
  if (thursday < daysFromCivil(year, 1, 1)) isoYear = year - 1
  else if (thursday >= daysFromCivil(year + 1, 1, 1)) isoYear = year + 1
  return { isoYear, week: Math.floor((thursday - daysFromCivil(isoYear, 1, 1)) / 7) + 1 }
}

const formatters = new Map<string, Intl.DateTimeFormat>()

const offsetFormatter = (timeZone: string): Intl.DateTimeFormat => {
  let f = formatters.get(timeZone)
  if (f === undefined) {
    try {
      f = new Intl.DateTimeFormat('en-US', { timeZone, timeZoneName: 'longOffset' })
    } catch (e) {
      throw new BackupError('CONFIG_INVALID', `invalid time zone '${timeZone}'`, {
        cause: e,
        details: { timeZone },
      })
    }
    formatters.set(timeZone, f)
  }
  return f
}

/** UTC offset in milliseconds of `timeZone` at instant `ms`, from the `GMT±hh:mm[:ss]` name. */
const offsetMs = (f: Intl.DateTimeFormat, ms: number): number => {
  const name = f.formatToParts(ms).find((p) => p.type === 'timeZoneName')?.value ?? ''
  const m = /^GMT(?:([+-])(\d{1,2}):(\d{2})(?::(\d{2}))?)?$/.exec(name)
  if (m === null) {
    throw new BackupError('CONFIG_INVALID', `cannot read the UTC offset of '${name}'`, {
      details: { timeZone: f.resolvedOptions().timeZone },
    })
  }
  if (m[1] === undefined) return 0
  const abs = Number(m[2]) * 3_600_000 + Number(m[3]) * 60_000 + Number(m[4] ?? '0') * 1000
  return m[1] === '-' ? -abs : abs
}

/**
 * A `localtime` for one time zone. The IANA path asks Intl for the offset in effect at the
 * instant and reads the shifted instant with the UTC getters: DST changes are exact (the offset
 * is looked up per instant), and the calendar stays the proleptic Gregorian one of Perl and
 * JavaScript with no era handling for early years.
 */
const localTimeIn = (timeZone: string | undefined): ((ctime: number) => LocalTime) => {
  if (timeZone === undefined) {
    return (ctime) => {
      const d = new Date(ctime * 1000)
      return {
        year: d.getFullYear(),
        month: d.getMonth() + 1,
        day: d.getDate(),
        hour: d.getHours(),
      }
    }
  }
  const f = offsetFormatter(timeZone)
  return (ctime) => {
    const ms = ctime * 1000
    const d = new Date(ms + offsetMs(f, ms))
    return {
      year: d.getUTCFullYear(),
      month: d.getUTCMonth() + 1,
      day: d.getUTCDate(),
      hour: d.getUTCHours(),
    }
  }
}

const periodsOf = (t: LocalTime): BackupPeriods => {
  const y = pad(t.year, 4)
  const month = `${y}-${pad(t.month, 2)}`
  const day = `${month}-${pad(t.day, 2)}`
  const w = isoWeek(t.year, t.month, t.day)
  return {
    hour: `${day}T${pad(t.hour, 2)}`,
    day,
    week: `${pad(w.isoYear, 4)}-W${pad(w.week, 2)}`,
    month,
    year: y,
  }
}

const assertCtime = (volid: string, ctime: number): void => {
  if (!Number.isSafeInteger(ctime) || Math.abs(ctime) > MAX_ABS_CTIME) {
    throw new BackupError('STORE_INVALID', `backup '${volid}' has an invalid ctime ${ctime}`, {
      details: { volid, ctime },
    })
  }
}

/**
 * The calendar periods a backup created at `ctime` belongs to, in local time (see
 * {@link PruneTimeOptions.timeZone}). These are the ids `prune_mark_backup_group` compares:
 * `localtime` hour/day/month/year and strftime `%V`/`%G` for the ISO week.
 *
 * @throws BackupError `CONFIG_INVALID` for an unknown time zone, `STORE_INVALID` for a ctime
 *   that is not an integer in the Date range.
 */
export function backupPeriods(ctime: number, opts: PruneTimeOptions = {}): BackupPeriods {
  assertCtime('(ctime)', ctime)
  return periodsOf(localTimeIn(opts.timeZone)(ctime))
}

/** Working record of one entry while marking. */
interface Work {
  readonly volid: string
  readonly ctime: number
  readonly protected: boolean
  mark: PruneMarkKind | undefined
  periods: BackupPeriods | undefined
}

/**
 * Newest first, like `sort { $b->{ctime} <=> $a->{ctime} }`. Perl's sort is stable, so Proxmox
 * breaks ties by listing order (file names for directory storages); we break them by volid,
 * then unprotected before protected, so the result never depends on the input order.
 */
const newestFirst = (a: Work, b: Work): number => {
  if (a.ctime !== b.ctime) return b.ctime - a.ctime
  if (a.volid !== b.volid) return a.volid < b.volid ? -1 : 1
  return Number(a.protected) - Number(b.protected)
}

/**
 * Port of the `$prune_mark` closure: walk the newest-first list and mark the newest unmarked
 * entry of each not yet covered period `keep` until `count` new periods are covered; later
 * entries of a newly covered period are marked `remove`. Periods of entries already marked
 * `keep` by an earlier option count as covered. Entries of older periods stay unmarked for
 * the next option.
 */
const pruneMark = (list: readonly Work[], count: number | undefined, id: (w: Work) => string) => {
  if (count === undefined || count === 0) return
  const already = new Set<string>()
  for (const w of list) if (w.mark === 'keep') already.add(id(w))
  const newly = new Set<string>()
  for (const w of list) {
    if (w.mark !== undefined) continue
    const k = id(w)
    if (already.has(k)) continue
    if (!newly.has(k)) {
      if (newly.size >= count) break
      newly.add(k)
      w.mark = 'keep'
    } else {
      w.mark = 'remove'
    }
  }
}

/** The period options after keep-last, in processing order, with the period each one counts. */
const PERIOD_OPTIONS: readonly (readonly [KeepCountKey, keyof BackupPeriods])[] = [
  ['keep-hourly', 'hour'],
  ['keep-daily', 'day'],
  ['keep-weekly', 'week'],
  ['keep-monthly', 'month'],
  ['keep-yearly', 'year'],
]

/**
 * Mark the backups of one group (one guest) for pruning — a port of `prune_mark_backup_group`
 * (pve-storage `Storage.pm`), with protected backups pre-marked as Plugin.pm's `prune_backups`
 * does:
 * - protected backups are marked `protected`; they are never removed and never count toward
 *   any option (only `keep` marks cover periods);
 * - if `keep-all` is true or no count option is positive, every other backup is `keep`
 *   (`keep-all` together with positive counts is not an error here, keep-all wins);
 * - otherwise the backups are taken newest first and the options are applied in the order
 *   keep-last (period = the exact ctime), keep-hourly, keep-daily, keep-weekly (ISO week and
 *   ISO week-year), keep-monthly, keep-yearly; each covers `N` more periods not covered yet,
 *   keeping the newest backup of each; everything left unmarked is `remove`.
 *
 * Periods are counted in local time; see {@link PruneTimeOptions.timeZone}.
 *
 * @param entries the backups of one group, in any order.
 * @param keep the retention options; checked with `assertKeepOptions` (not normalized).
 * @returns one mark per entry, newest first (ties by volid).
 * @throws BackupError `CONFIG_INVALID` for bad options or time zone, `STORE_INVALID` for a
 *   ctime that is not an integer in the Date range.
 */
export function markBackupGroup(
  entries: readonly PruneEntry[],
  keep: KeepOptions,
  opts: PruneTimeOptions = {},
): PruneMark[] {
  assertKeepOptions(keep)
  const localTime = localTimeIn(opts.timeZone)
  const list: Work[] = entries.map((e) => {
    assertCtime(e.volid, e.ctime)
    return {
      volid: e.volid,
      ctime: e.ctime,
      protected: e.protected,
      mark: e.protected ? 'protected' : undefined,
      periods: undefined,
    }
  })
  list.sort(newestFirst)

  const anyPositive = KEEP_COUNT_KEYS.some((k) => (keep[k] ?? 0) > 0)
  if (keep['keep-all'] === true || !anyPositive) {
    for (const w of list) w.mark ??= 'keep'
  } else {
    pruneMark(list, keep['keep-last'], (w) => String(w.ctime))
    for (const [option, period] of PERIOD_OPTIONS) {
      pruneMark(list, keep[option], (w) => {
        w.periods ??= periodsOf(localTime(w.ctime))
        return w.periods[period]
      })
    }
  }
  // prune_mark_backup_group: `$prune_entry->{mark} //= 'remove'`
  return list.map((w) => ({ volid: w.volid, ctime: w.ctime, mark: w.mark ?? 'remove' }))
}

/**
 * Plan a prune over backups of many guests, like Plugin.pm's default `prune_backups` in dry-run
 * mode: drop backups that do not match the `vmid` / `subtype` filters, group the rest by
 * `"$subtype/$vmid"`, and run {@link markBackupGroup} on every group.
 *
 * @returns the marks of all groups, groups ordered by subtype then vmid, each group newest
 *   first (ties by volid). Filtered-out backups are not in the result.
 * @throws BackupError `CONFIG_INVALID` for bad options or time zone, `STORE_INVALID` for an
 *   entry with a bad ctime, vmid or subtype.
 */
export function planPrune(
  entries: readonly PruneGuestEntry[],
  keep: KeepOptions,
  opts: PlanPruneOptions = {},
): PlannedPruneMark[] {
  assertKeepOptions(keep)
  const groups = new Map<string, { vmid: number; subtype: PruneSubtype; list: PruneEntry[] }>()
  for (const e of entries) {
    if (!Number.isSafeInteger(e.vmid) || e.vmid < 0 || !SUBTYPES.includes(e.subtype)) {
      throw new BackupError(
        'STORE_INVALID',
        `backup '${e.volid}' has an invalid guest ${inspect(e.subtype)}/${inspect(e.vmid)}`,
        { details: { volid: e.volid, vmid: e.vmid, subtype: e.subtype } },
      )
    }
    if (opts.vmid !== undefined && e.vmid !== opts.vmid) continue
    if (opts.subtype !== undefined && e.subtype !== opts.subtype) continue
    const key = `${e.subtype}/${e.vmid}`
    const group = groups.get(key)
    if (group === undefined) groups.set(key, { vmid: e.vmid, subtype: e.subtype, list: [e] })
    else group.list.push(e)
  }
  const sorted = [...groups.values()].sort((a, b) =>
    a.subtype !== b.subtype ? (a.subtype < b.subtype ? -1 : 1) : a.vmid - b.vmid,
  )
  const markOpts: PruneTimeOptions = opts.timeZone === undefined ? {} : { timeZone: opts.timeZone }
  const result: PlannedPruneMark[] = []
  for (const { vmid, subtype, list } of sorted) {
    for (const m of markBackupGroup(list, keep, markOpts)) result.push({ ...m, vmid, subtype })
  }
  return result
}
