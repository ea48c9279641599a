/**
 * Shared helpers for the storage/prune tests: time helpers, entry builders and mark views, and
 * the fast-check arbitraries of the property tests.
 */
import fc from 'fast-check'
import { isBackupError } from '../../src/errors.ts'
import type { PruneEntry, PruneMark, PruneMarkKind } from '../../src/storage/prune.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'

export const HOUR = 60 * 60
export const DAY = 24 * HOUR
export const utc = (y: number, mo: number, d: number, h = 0, mi = 0, s = 0): number =>
  Date.UTC(y, mo - 1, d, h, mi, s) / 1000
export const byVolid = <T extends { volid: string }>(a: T, b: T): number =>
  a.volid < b.volid ? -1 : a.volid > b.volid ? 1 : 0
export const codeIs =
  (code: Parameters<typeof isBackupError>[1]) =>
  (e: unknown): boolean =>
    isBackupError(e, code)

// Hand-made entries for the details of prune_mark_backup_group.
export const entry = (name: string, ctime: number, isProtected = false): PruneEntry => ({
  volid: `s:backup/${name}`,
  ctime,
  protected: isProtected,
})
export const marksOf = (marks: readonly PruneMark[]): Record<string, PruneMarkKind> =>
  Object.fromEntries(marks.map((m) => [m.volid.replace('s:backup/', ''), m.mark]))

// Arbitraries of the property tests.

export const TIME_ZONES = [
  'UTC',
  'Europe/Vienna',
  'America/New_York',
  'Australia/Lord_Howe',
  'Asia/Kathmandu',
] as const
export const arbTimeZone = fc.constantFrom(...TIME_ZONES)

// Mostly dense backups (so periods collide), sometimes spread over years; DST days included.
export const arbCtime = fc.oneof(
  fc.integer({ min: utc(2021, 3, 20), max: utc(2021, 4, 5) }),
  fc.integer({ min: utc(2021, 10, 25), max: utc(2021, 11, 5) }),
  fc.integer({ min: utc(2019, 12, 1), max: utc(2021, 2, 1) }),
  fc.integer({ min: 0, max: utc(2040, 1, 1) }),
)

export const arbEntries = (opts: { uniqueCtime?: boolean; protectedRate?: number } = {}) => {
  const rate = opts.protectedRate ?? 0.25
  const arbProtected = fc.double({ min: 0, max: 1, noNaN: true }).map((x) => x < rate)
  const toEntries = (xs: readonly { ctime: number; protected: boolean }[]): PruneEntry[] =>
    xs.map((x, i) => ({ volid: `s:backup/b${String(i).padStart(3, '0')}`, ...x }))
  const arb = fc.record({ ctime: arbCtime, protected: arbProtected })
  return opts.uniqueCtime === true
    ? fc.uniqueArray(arb, { maxLength: 60, selector: (x) => x.ctime }).map(toEntries)
    : fc.array(arb, { maxLength: 60 }).map(toEntries)
}

export const arbCount = fc.integer({ min: 0, max: 6 })
export const arbKeep: fc.Arbitrary<KeepOptions> = fc
  .record(
    {
      'keep-all': fc.boolean(),
      'keep-last': arbCount,
      'keep-hourly': arbCount,
      'keep-daily': arbCount,
      'keep-weekly': arbCount,
      'keep-monthly': arbCount,
      'keep-yearly': arbCount,
    },
    { requiredKeys: [] },
  )
  .map((k) => {
    const out: KeepOptions = {}
    for (const [key, value] of Object.entries(k)) Object.assign(out, { [key]: value })
    return out
  })

export const arbPeriodOption = fc.constantFrom(
  ['keep-hourly', 'hour'] as const,
  ['keep-daily', 'day'] as const,
  ['keep-weekly', 'week'] as const,
  ['keep-monthly', 'month'] as const,
  ['keep-yearly', 'year'] as const,
)

export const sortedVolids = (xs: readonly { volid: string }[]): string[] =>
  xs.map((x) => x.volid).sort()
