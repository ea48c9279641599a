import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { isBackupError } from '../../src/errors.ts'
import { backupPeriods, markBackupGroup, planPrune } from '../../src/storage/prune.ts'
import type {
  PlannedPruneMark,
  PruneEntry,
  PruneGuestEntry,
  PruneMark,
  PruneMarkKind,
  PruneSubtype,
} from '../../src/storage/prune.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'

const HOUR = 60 * 60
const DAY = 24 * HOUR
const utc = (y: number, mo: number, d: number, h = 0, mi = 0, s = 0): number =>
  Date.UTC(y, mo - 1, d, h, mi, s) / 1000
const byVolid = <T extends { volid: string }>(a: T, b: T): number =>
  a.volid < b.volid ? -1 : a.volid > b.volid ? 1 : 0
const codeIs =
  (code: Parameters<typeof isBackupError>[1]) =>
  (e: unknown): boolean =>
    isBackupError(e, code)

// ---------------------------------------------------------------------------------------------
// Port of pve-storage src/test/prune_backups_test.pm (dry-run prune_backups over mocked
// list_volumes). Entries with non-standard names ("renamed") have no counterpart here: our
// callers only pass parsed backups, so those cases are left out.
// ---------------------------------------------------------------------------------------------

const STORE = 'BackTest123'
const VMIDS = [1234, 9001]
const BASE = 1577881101 // 2020_01_01-12_18_21 UTC

interface ListEntry {
  volid: string
  ctime: number
  vmid: number
  subtype: PruneSubtype
  protected?: true
}

const defaultEntries = (vmid: number): ListEntry[] => [
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2018_05_26-11_18_21.tar.zst`,
    ctime: BASE - 585 * DAY - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_18_21.tar.zst`,
    ctime: BASE - DAY - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_18_51.tar.zst`,
    ctime: BASE - DAY - HOUR + 30,
    vmid,
    subtype: 'qemu',
    protected: true,
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_19_21.tar.zst`,
    ctime: BASE - DAY - HOUR + 60,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2020_01_01-11_18_21.tar.zst`,
    ctime: BASE - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2020_01_01-12_18_21.tar.zst`,
    ctime: BASE,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-lxc-${vmid}-2020_01_01-12_18_21.tar.zst`,
    ctime: BASE,
    vmid,
    subtype: 'lxc',
  },
]

const LISTS: Record<string, ListEntry[]> = {
  default: VMIDS.flatMap(defaultEntries),
  year1970: [
    {
      volid: `${STORE}:backup/vzdump-lxc-321-1970_01_01-00_01_23.tar.zst`,
      ctime: 83,
      vmid: 321,
      subtype: 'lxc',
    },
    {
      volid: `${STORE}:backup/vzdump-lxc-321-2070_01_01-00_01_00.tar.zst`,
      ctime: DAY * (365 * 100 + 25) + 60,
      vmid: 321,
      subtype: 'lxc',
    },
  ],
  threeway: [
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2019_12_25-12_18_21.tar.zst`,
      ctime: BASE - 7 * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2019_12_31-12_18_21.tar.zst`,
      ctime: BASE - DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_01_01-12_18_21.tar.zst`,
      ctime: BASE,
      vmid: 7654,
      subtype: 'qemu',
    },
  ],
  weekboundary: [
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_03-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 2) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_04-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 3) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_07-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 6) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
  ],
}

const toGuestEntries = (list: readonly ListEntry[]): PruneGuestEntry[] =>
  list.map((e) => ({
    volid: e.volid,
    ctime: e.ctime,
    vmid: e.vmid,
    subtype: e.subtype,
    protected: e.protected === true,
  }))

type M = PruneMarkKind | ''

/**
 * generate_expected of the Perl test: marks for the five unprotected qemu backups (oldest first)
 * and the lxc backup of each vmid; the protected qemu backup is always 'protected'.
 */
const generateExpected = (
  vmids: readonly number[],
  type: PruneSubtype | undefined,
  marks: readonly [M, M, M, M, M, M],
): PlannedPruneMark[] => {
  const out: PlannedPruneMark[] = []
  for (const vmid of vmids) {
    const entries = defaultEntries(vmid)
    const qemuMarks = [marks[0], marks[1], 'protected', marks[2], marks[3], marks[4]] as const
    entries.forEach((e, i) => {
      if (e.subtype === 'qemu' && type !== 'lxc') {
        out.push({
          volid: e.volid,
          ctime: e.ctime,
          vmid,
          subtype: 'qemu',
          mark: qemuMarks[i] as PruneMarkKind,
        })
      }
      if (e.subtype === 'lxc' && type !== 'qemu') {
        out.push({
          volid: e.volid,
          ctime: e.ctime,
          vmid,
          subtype: 'lxc',
          mark: marks[5] as PruneMarkKind,
        })
      }
    })
  }
  return out.sort(byVolid)
}

const explicit = (list: string, marks: readonly PruneMarkKind[]): PlannedPruneMark[] => {
  const entries = LISTS[list]!
  assert.equal(entries.length, marks.length)
  return entries.map((e, i) => ({
    volid: e.volid,
    ctime: e.ctime,
    vmid: e.vmid,
    subtype: e.subtype,
    mark: marks[i]!,
  }))
}

interface PveCase {
  description: string
  vmid?: number
  type?: PruneSubtype
  keep: KeepOptions
  list?: string
  expected: PlannedPruneMark[]
}

const PVE_CASES: PveCase[] = [
  {
    description: 'last=3, multiple IDs',
    keep: { 'keep-last': 3 },
    expected: generateExpected(VMIDS, undefined, [
      'remove',
      'remove',
      'keep',
      'keep',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'weekly=2, one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-weekly': 2 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'keep',
      'remove',
      'remove',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'daily=weekly=monthly=1, multiple IDs',
    keep: { 'keep-hourly': 0, 'keep-daily': 1, 'keep-weekly': 1, 'keep-monthly': 1 },
    expected: generateExpected(VMIDS, undefined, [
      'keep',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'hourly=4, one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-hourly': 4, 'keep-daily': 0 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'keep',
      'remove',
      'keep',
      'keep',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'yearly=2, multiple IDs',
    keep: {
      'keep-hourly': 0,
      'keep-daily': 0,
      'keep-weekly': 0,
      'keep-monthly': 0,
      'keep-yearly': 2,
    },
    expected: generateExpected(VMIDS, undefined, [
      'remove',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'last=2,hourly=2 one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-last': 2, 'keep-hourly': 2 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'keep',
      'remove',
      'keep',
      'keep',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'last=1,monthly=2, multiple IDs',
    keep: { 'keep-last': 1, 'keep-monthly': 2 },
    expected: generateExpected(VMIDS, undefined, [
      'keep',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'monthly=3, one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-monthly': 3 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'keep',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'last=daily=weekly=1, multiple IDs',
    keep: { 'keep-last': 1, 'keep-daily': 1, 'keep-weekly': 1 },
    expected: generateExpected(VMIDS, undefined, [
      'keep',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'last=daily=weekly=1, others zero, multiple IDs',
    keep: {
      'keep-hourly': 0,
      'keep-last': 1,
      'keep-daily': 1,
      'keep-weekly': 1,
      'keep-monthly': 0,
      'keep-yearly': 0,
    },
    expected: generateExpected(VMIDS, undefined, [
      'keep',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'daily=2, one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-daily': 2 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'remove',
      'remove',
      'keep',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'weekly=monthly=1, multiple IDs',
    keep: { 'keep-weekly': 1, 'keep-monthly': 1 },
    expected: generateExpected(VMIDS, undefined, [
      'keep',
      'remove',
      'remove',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'weekly=yearly=1, one ID',
    vmid: VMIDS[0]!,
    keep: { 'keep-weekly': 1, 'keep-yearly': 1 },
    expected: generateExpected([VMIDS[0]!], undefined, [
      'keep',
      'remove',
      'remove',
      'remove',
      'keep',
      'keep',
    ]),
  },
  {
    description: 'weekly=yearly=1, one ID, type qemu',
    vmid: VMIDS[0]!,
    type: 'qemu',
    keep: { 'keep-weekly': 1, 'keep-yearly': 1 },
    expected: generateExpected([VMIDS[0]!], 'qemu', [
      'keep',
      'remove',
      'remove',
      'remove',
      'keep',
      '',
    ]),
  },
  {
    description: 'week=yearly=1, one ID, type lxc',
    vmid: VMIDS[0]!,
    type: 'lxc',
    keep: { 'keep-last': 1 },
    expected: generateExpected([VMIDS[0]!], 'lxc', ['', '', '', '', '', 'keep']),
  },
  {
    description: 'yearly=1, year before 2000',
    keep: { 'keep-yearly': 1 },
    list: 'year1970',
    expected: explicit('year1970', ['remove', 'keep']),
  },
  {
    description: 'all missing, multiple IDs',
    keep: {},
    expected: generateExpected(VMIDS, undefined, ['keep', 'keep', 'keep', 'keep', 'keep', 'keep']),
  },
  {
    // The Perl case also carries a misspelled 'keep-monthyl' => 0; unknown keys are rejected
    // here (see 'rejects unknown options'), so the port spells it correctly.
    description: 'all zero, multiple IDs',
    keep: {
      'keep-last': 0,
      'keep-hourly': 0,
      'keep-daily': 0,
      'keep-weekly': 0,
      'keep-monthly': 0,
      'keep-yearly': 0,
    },
    expected: generateExpected(VMIDS, undefined, ['keep', 'keep', 'keep', 'keep', 'keep', 'keep']),
  },
  {
    description: 'some zero, some missing, multiple IDs',
    keep: { 'keep-last': 0, 'keep-hourly': 0, 'keep-daily': 0, 'keep-yearly': 0 },
    expected: generateExpected(VMIDS, undefined, ['keep', 'keep', 'keep', 'keep', 'keep', 'keep']),
  },
  {
    description: 'daily=weekly=monthly=1',
    keep: { 'keep-daily': 1, 'keep-weekly': 1, 'keep-monthly': 1 },
    list: 'threeway',
    // the middle one: its month is already covered by the backup kept by keep-weekly
    expected: explicit('threeway', ['keep', 'remove', 'keep']),
  },
  {
    description: 'daily=weekly=1,weekboundary',
    keep: { 'keep-daily': 1, 'keep-weekly': 1 },
    list: 'weekboundary',
    expected: explicit('weekboundary', ['remove', 'keep', 'keep']),
  },
]

// The Perl test runs in the build machine's time zone; these cases hold in all of these.
const PVE_TIME_ZONES = ['UTC', 'Europe/Vienna', 'America/New_York'] as const

describe('storage/prune: pve-storage prune_backups_test.pm', () => {
  for (const timeZone of PVE_TIME_ZONES) {
    describe(`in ${timeZone}`, () => {
      for (const tc of PVE_CASES) {
        it(tc.description, () => {
          const entries = toGuestEntries(LISTS[tc.list ?? 'default']!)
          const got = planPrune(entries, tc.keep, {
            timeZone,
            ...(tc.vmid === undefined ? {} : { vmid: tc.vmid }),
            ...(tc.type === undefined ? {} : { subtype: tc.type }),
          })
          assert.deepEqual([...got].sort(byVolid), tc.expected)
        })
      }
    })
  }
})

// ---------------------------------------------------------------------------------------------
// Hand-made cases for the details of prune_mark_backup_group.
// ---------------------------------------------------------------------------------------------

const entry = (name: string, ctime: number, isProtected = false): PruneEntry => ({
  volid: `s:backup/${name}`,
  ctime,
  protected: isProtected,
})
const marksOf = (marks: readonly PruneMark[]): Record<string, PruneMarkKind> =>
  Object.fromEntries(marks.map((m) => [m.volid.replace('s:backup/', ''), m.mark]))

describe('storage/prune: markBackupGroup', () => {
  it('returns the marks newest first whatever the input order', () => {
    const got = markBackupGroup(
      [entry('b', 200), entry('c', 300), entry('a', 100)],
      { 'keep-last': 2 },
      { timeZone: 'UTC' },
    )
    assert.deepEqual(got, [
      { volid: 's:backup/c', ctime: 300, mark: 'keep' },
      { volid: 's:backup/b', ctime: 200, mark: 'keep' },
      { volid: 's:backup/a', ctime: 100, mark: 'remove' },
    ])
  })

  it('returns an empty list for an empty group', () => {
    assert.deepEqual(markBackupGroup([], { 'keep-last': 1 }), [])
  })

  it('keeps everything with keep-all, but leaves protected backups protected', () => {
    const got = markBackupGroup([entry('a', 1), entry('p', 2, true)], { 'keep-all': true })
    assert.deepEqual(marksOf(got), { a: 'keep', p: 'protected' })
  })

  it('lets keep-all win over positive counts, like prune_mark_backup_group', () => {
    const got = markBackupGroup([entry('a', 1), entry('b', 2)], {
      'keep-all': true,
      'keep-last': 1,
    })
    assert.deepEqual(marksOf(got), { a: 'keep', b: 'keep' })
  })

  it('applies the counts when keep-all is false', () => {
    const got = markBackupGroup([entry('a', 1), entry('b', 2)], {
      'keep-all': false,
      'keep-last': 1,
    })
    assert.deepEqual(marksOf(got), { a: 'remove', b: 'keep' })
  })

  it('does not count protected backups toward keep-last', () => {
    const got = markBackupGroup(
      [entry('a', 1), entry('b', 2), entry('p1', 3, true), entry('p2', 4, true)],
      { 'keep-last': 1 },
    )
    assert.deepEqual(marksOf(got), { a: 'remove', b: 'keep', p1: 'protected', p2: 'protected' })
  })

  it('does not let a protected backup cover its day', () => {
    const day = utc(2024, 5, 10)
    const got = markBackupGroup(
      [entry('old', day - DAY), entry('early', day + HOUR), entry('p', day + 2 * HOUR, true)],
      { 'keep-daily': 1 },
      { timeZone: 'UTC' },
    )
    assert.deepEqual(marksOf(got), { old: 'remove', early: 'keep', p: 'protected' })
  })

  it('treats backups with the same ctime as one keep-last slot (the later one is removed)', () => {
    const got = markBackupGroup([entry('b', 100), entry('a', 100), entry('c', 50)], {
      'keep-last': 2,
    })
    // ctime ties are ordered by volid; 'a' takes the slot, 'b' has the same id and is removed
    assert.deepEqual(
      got.map((m) => [m.volid, m.mark]),
      [
        ['s:backup/a', 'keep'],
        ['s:backup/b', 'remove'],
        ['s:backup/c', 'keep'],
      ],
    )
  })

  it('lets a later option skip periods already covered by an earlier one', () => {
    // keep-last keeps the two newest (both on day 3); keep-daily=1 then covers day 2, not day 3
    const d = utc(2024, 1, 1)
    const got = markBackupGroup(
      [
        entry('d1', d + 1 * DAY),
        entry('d2-late', d + 2 * DAY + 20 * HOUR),
        entry('d2-early', d + 2 * DAY + 1 * HOUR),
        entry('d3-late', d + 3 * DAY + 20 * HOUR),
        entry('d3-early', d + 3 * DAY + 1 * HOUR),
      ],
      { 'keep-last': 2, 'keep-daily': 1 },
      { timeZone: 'UTC' },
    )
    assert.deepEqual(marksOf(got), {
      'd3-late': 'keep',
      'd3-early': 'keep',
      'd2-late': 'keep',
      'd2-early': 'remove',
      d1: 'remove',
    })
  })

  it('processes hourly before daily before weekly before monthly before yearly', () => {
    const t = (mo: number, d: number, h: number): number => utc(2023, mo, d, h)
    const got = markBackupGroup(
      [
        entry('y2022', utc(2022, 6, 1)),
        entry('mar', t(3, 15, 12)),
        entry('apr', t(4, 14, 12)),
        entry('may-w1', t(5, 2, 12)),
        entry('may-w2-mon', t(5, 8, 12)),
        entry('may-w2-tue', t(5, 9, 12)),
        entry('may-w3-1h', t(5, 16, 1)),
        entry('may-w3-2h', t(5, 16, 2)),
      ],
      { 'keep-hourly': 1, 'keep-daily': 1, 'keep-weekly': 1, 'keep-monthly': 1, 'keep-yearly': 1 },
      { timeZone: 'UTC' },
    )
    assert.deepEqual(marksOf(got), {
      'may-w3-2h': 'keep', // hourly
      'may-w3-1h': 'remove', // same day as the hourly one, so daily moves on
      'may-w2-tue': 'keep', // daily
      'may-w2-mon': 'remove', // same week as the daily one
      'may-w1': 'keep', // weekly
      apr: 'keep', // monthly (May already covered)
      mar: 'remove', // 2023 already covered for yearly
      y2022: 'keep', // yearly
    })
  })

  it('never keeps more than the sum of the counts', () => {
    const many = Array.from({ length: 50 }, (_, i) =>
      entry(`b${i}`, utc(2020, 1, 1) + i * 7 * HOUR),
    )
    const got = markBackupGroup(many, { 'keep-last': 2, 'keep-hourly': 3, 'keep-daily': 4 })
    assert.equal(got.filter((m) => m.mark === 'keep').length, 9)
  })

  it('rejects unknown options instead of removing everything', () => {
    // In Proxmox a misspelled key with a positive value disables the keep-all fallback.
    const keep = { 'keep-monthyl': 3 } as KeepOptions
    assert.throws(() => markBackupGroup([entry('a', 1)], keep), codeIs('CONFIG_INVALID'))
  })

  it('rejects negative, fractional and non-numeric counts', () => {
    for (const keep of [
      { 'keep-last': -1 },
      { 'keep-daily': 1.5 },
      { 'keep-weekly': '2' as unknown as number },
      { 'keep-all': 1 as unknown as boolean },
    ]) {
      assert.throws(() => markBackupGroup([entry('a', 1)], keep), codeIs('CONFIG_INVALID'))
    }
  })

  it('rejects an unknown time zone even if no period option needs it', () => {
    assert.throws(
      () => markBackupGroup([entry('a', 1)], { 'keep-last': 1 }, { timeZone: 'Mars/Olympus' }),
      codeIs('CONFIG_INVALID'),
    )
  })

  it('rejects ctimes that are not integers in the Date range', () => {
    for (const ctime of [Number.NaN, 1.5, Number.POSITIVE_INFINITY, 9e12]) {
      assert.throws(
        () => markBackupGroup([entry('a', ctime)], { 'keep-last': 1 }),
        codeIs('STORE_INVALID'),
      )
    }
  })

  it('does not modify its inputs', () => {
    const entries = [entry('a', 1), entry('b', 2, true)]
    const keep: KeepOptions = { 'keep-last': 1 }
    const before = structuredClone({ entries, keep })
    markBackupGroup(entries, keep)
    assert.deepEqual({ entries, keep }, before)
  })
})

describe('storage/prune: time zones', () => {
  it('uses the process time zone by default (TZ, like localtime)', () => {
    const saved = process.env['TZ']
    try {
      process.env['TZ'] = 'Europe/Vienna'
      // 23:30 UTC is already the next day in Vienna
      const entries = [entry('a', utc(2024, 3, 1, 22, 30)), entry('b', utc(2024, 3, 1, 23, 30))]
      const keep: KeepOptions = { 'keep-daily': 2 }
      assert.deepEqual(
        markBackupGroup(entries, keep),
        markBackupGroup(entries, keep, { timeZone: 'Europe/Vienna' }),
      )
      assert.deepEqual(marksOf(markBackupGroup(entries, keep)), { a: 'keep', b: 'keep' })
      assert.equal(backupPeriods(utc(2024, 3, 1, 23, 30)).day, '2024-03-02')
      process.env['TZ'] = 'UTC'
      assert.equal(backupPeriods(utc(2024, 3, 1, 23, 30)).day, '2024-03-01')
    } finally {
      if (saved === undefined) delete process.env['TZ']
      else process.env['TZ'] = saved
    }
  })

  it('counts days in local time, so the same instants bucket differently per zone', () => {
    // 22:30 and 23:30 UTC on March 1st: one day in UTC, two days in Vienna (UTC+1).
    const entries = [
      entry('c', utc(2024, 2, 29, 12)),
      entry('a', utc(2024, 3, 1, 22, 30)),
      entry('b', utc(2024, 3, 1, 23, 30)),
    ]
    const keep: KeepOptions = { 'keep-daily': 2 }
    assert.deepEqual(marksOf(markBackupGroup(entries, keep, { timeZone: 'UTC' })), {
      b: 'keep',
      a: 'remove',
      c: 'keep',
    })
    assert.deepEqual(marksOf(markBackupGroup(entries, keep, { timeZone: 'Europe/Vienna' })), {
      b: 'keep',
      a: 'keep',
      c: 'remove',
    })
  })

  describe('Europe/Vienna DST change days', () => {
    const tz = { timeZone: 'Europe/Vienna' }

    it('skips 02:00-03:00 local when clocks go forward (2021-03-28)', () => {
      assert.equal(backupPeriods(utc(2021, 3, 28, 0, 59, 59), tz).hour, '2021-03-28T01')
      assert.equal(backupPeriods(utc(2021, 3, 28, 1, 0, 0), tz).hour, '2021-03-28T03')
    })

    it('moves the local midnight from 23:00 UTC to 22:00 UTC across the spring change', () => {
      assert.equal(backupPeriods(utc(2021, 3, 27, 22, 59, 59), tz).day, '2021-03-27')
      assert.equal(backupPeriods(utc(2021, 3, 27, 23, 0, 0), tz).day, '2021-03-28')
      assert.equal(backupPeriods(utc(2021, 3, 28, 21, 59, 59), tz).day, '2021-03-28')
      assert.equal(backupPeriods(utc(2021, 3, 28, 22, 0, 0), tz).day, '2021-03-29')
    })

    it('puts both passes through 02:xx into one hour when clocks go back (2021-10-31)', () => {
      const cest = utc(2021, 10, 31, 0, 15) // 02:15 CEST
      const cet = utc(2021, 10, 31, 1, 15) // 02:15 CET, one hour later
      assert.equal(backupPeriods(cest, tz).hour, '2021-10-31T02')
      assert.equal(backupPeriods(cet, tz).hour, '2021-10-31T02')
      const entries = [
        entry('cest', cest),
        entry('cet', cet),
        entry('before', utc(2021, 10, 30, 23, 30)),
      ]
      assert.deepEqual(marksOf(markBackupGroup(entries, { 'keep-hourly': 2 }, tz)), {
        cet: 'keep',
        cest: 'remove',
        before: 'keep',
      })
      // The same instants are three different hours in UTC.
      assert.deepEqual(
        marksOf(markBackupGroup(entries, { 'keep-hourly': 3 }, { timeZone: 'UTC' })),
        {
          cet: 'keep',
          cest: 'keep',
          before: 'keep',
        },
      )
    })

    it('treats the 25-hour and the 23-hour day as one day each for keep-daily', () => {
      const entries = [
        entry('oct30-late', utc(2021, 10, 30, 21, 59)), // 23:59 CEST
        entry('oct31-first', utc(2021, 10, 30, 22, 0)), // 00:00 CEST
        entry('oct31-last', utc(2021, 10, 31, 22, 59)), // 23:59 CET
        entry('nov1-first', utc(2021, 10, 31, 23, 0)), // 00:00 CET
        entry('mar28-first', utc(2021, 3, 27, 23, 0)), // 00:00 CET
        entry('mar28-last', utc(2021, 3, 28, 21, 59)), // 23:59 CEST
      ]
      assert.deepEqual(marksOf(markBackupGroup(entries, { 'keep-daily': 10 }, tz)), {
        'nov1-first': 'keep',
        'oct31-last': 'keep',
        'oct31-first': 'remove',
        'oct30-late': 'keep',
        'mar28-last': 'keep',
        'mar28-first': 'remove',
      })
    })
  })

  it('handles zones with 30- and 45-minute offsets', () => {
    // Lord Howe moves by 30 minutes for DST; Kathmandu is UTC+05:45.
    assert.equal(
      backupPeriods(utc(2024, 1, 1, 12, 59), { timeZone: 'Australia/Lord_Howe' }).hour,
      '2024-01-01T23',
    )
    assert.equal(
      backupPeriods(utc(2024, 1, 1, 13, 0), { timeZone: 'Australia/Lord_Howe' }).day,
      '2024-01-02',
    )
    assert.equal(
      backupPeriods(utc(2024, 1, 1, 18, 14), { timeZone: 'Asia/Kathmandu' }).day,
      '2024-01-01',
    )
    assert.equal(
      backupPeriods(utc(2024, 1, 1, 18, 15), { timeZone: 'Asia/Kathmandu' }).day,
      '2024-01-02',
    )
  })
})

describe('storage/prune: ISO weeks', () => {
  const utcTz = { timeZone: 'UTC' }
  const weekOf = (y: number, m: number, d: number): string =>
    backupPeriods(utc(y, m, d, 12), utcTz).week

  it('puts 2020-12-31 and 2021-01-01..03 into week 53 of 2020', () => {
    assert.equal(weekOf(2020, 12, 28), '2020-W53')
    assert.equal(weekOf(2020, 12, 31), '2020-W53')
    assert.equal(weekOf(2021, 1, 1), '2020-W53')
    assert.equal(weekOf(2021, 1, 3), '2020-W53')
    assert.equal(weekOf(2021, 1, 4), '2021-W01')
  })

  it('puts 2019-12-30 into week 1 of 2020 and 2018-12-31 into week 1 of 2019', () => {
    assert.equal(weekOf(2019, 12, 29), '2019-W52')
    assert.equal(weekOf(2019, 12, 30), '2020-W01')
    assert.equal(weekOf(2018, 12, 31), '2019-W01')
  })

  it('knows the other 53-week years', () => {
    assert.equal(weekOf(2015, 12, 31), '2015-W53')
    assert.equal(weekOf(2016, 1, 3), '2015-W53')
    assert.equal(weekOf(2026, 12, 31), '2026-W53')
    assert.equal(weekOf(2027, 1, 3), '2026-W53')
    assert.equal(weekOf(2027, 1, 4), '2027-W01')
    assert.equal(weekOf(2004, 12, 31), '2004-W53')
  })

  it('keeps one backup for 2020-12-31 and 2021-01-01 with keep-weekly', () => {
    const got = markBackupGroup(
      [
        entry('dec31', utc(2020, 12, 31, 12)),
        entry('jan1', utc(2021, 1, 1, 12)),
        entry('jan4', utc(2021, 1, 4, 12)),
      ],
      { 'keep-weekly': 5 },
      utcTz,
    )
    assert.deepEqual(marksOf(got), { jan4: 'keep', jan1: 'keep', dec31: 'remove' })
  })

  it('takes the week of the local date, not of the UTC date', () => {
    // Sunday 2021-01-03 23:30 UTC is Monday 2021-01-04 00:30 in Vienna
    const t = utc(2021, 1, 3, 23, 30)
    assert.equal(backupPeriods(t, utcTz).week, '2020-W53')
    assert.equal(backupPeriods(t, { timeZone: 'Europe/Vienna' }).week, '2021-W01')
  })

  it('agrees with an independent ISO week computation for 1900..2100', () => {
    // The textbook algorithm: the week belongs to the year of its Thursday.
    const reference = (ms: number): string => {
      const d = new Date(ms)
      const dow = (d.getUTCDay() + 6) % 7
      d.setUTCDate(d.getUTCDate() - dow + 3)
      const isoYear = d.getUTCFullYear()
      const jan4 = new Date(Date.UTC(isoYear, 0, 4))
      const firstThursday = jan4.getTime() - (((jan4.getUTCDay() + 6) % 7) - 3) * DAY * 1000
      const week = 1 + Math.round((d.getTime() - firstThursday) / (7 * DAY * 1000))
      return `${isoYear}-W${String(week).padStart(2, '0')}`
    }
    for (let ms = Date.UTC(1900, 0, 1, 12); ms <= Date.UTC(2100, 11, 31, 12); ms += DAY * 1000) {
      assert.equal(backupPeriods(ms / 1000, utcTz).week, reference(ms), new Date(ms).toISOString())
    }
  })

  it('formats every period of one backup', () => {
    assert.deepEqual(backupPeriods(BASE, utcTz), {
      hour: '2020-01-01T12',
      day: '2020-01-01',
      week: '2020-W01',
      month: '2020-01',
      year: '2020',
    })
    assert.deepEqual(backupPeriods(83, { timeZone: 'America/New_York' }), {
      hour: '1969-12-31T19',
      day: '1969-12-31',
      week: '1970-W01',
      month: '1969-12',
      year: '1969',
    })
  })
})

describe('storage/prune: planPrune', () => {
  const guest = (
    name: string,
    ctime: number,
    vmid: number,
    subtype: PruneSubtype,
    isProtected = false,
  ): PruneGuestEntry => ({
    volid: `s:backup/${name}`,
    ctime,
    vmid,
    subtype,
    protected: isProtected,
  })

  it('groups by subtype and vmid and orders groups by subtype, then vmid, each newest first', () => {
    const got = planPrune(
      [
        guest('q200-old', 10, 200, 'qemu'),
        guest('l100', 50, 100, 'lxc'),
        guest('q100', 30, 100, 'qemu'),
        guest('q200-new', 20, 200, 'qemu'),
        guest('l20', 5, 20, 'lxc'),
      ],
      { 'keep-last': 1 },
    )
    assert.deepEqual(
      got.map((m) => [m.volid.slice(9), m.subtype, m.vmid, m.mark]),
      [
        ['l20', 'lxc', 20, 'keep'],
        ['l100', 'lxc', 100, 'keep'],
        ['q100', 'qemu', 100, 'keep'],
        ['q200-new', 'qemu', 200, 'keep'],
        ['q200-old', 'qemu', 200, 'remove'],
      ],
    )
  })

  it('leaves backups outside the vmid and subtype filters out of the result', () => {
    const entries = [
      guest('a', 1, 100, 'qemu'),
      guest('b', 2, 100, 'lxc'),
      guest('c', 3, 101, 'qemu'),
    ]
    assert.deepEqual(
      planPrune(entries, { 'keep-last': 1 }, { vmid: 100 }).map((m) => m.volid),
      ['s:backup/b', 's:backup/a'],
    )
    assert.deepEqual(
      planPrune(entries, { 'keep-last': 1 }, { subtype: 'qemu' }).map((m) => m.volid),
      ['s:backup/a', 's:backup/c'],
    )
    assert.deepEqual(
      planPrune(entries, { 'keep-last': 1 }, { vmid: 100, subtype: 'qemu' }).length,
      1,
    )
    assert.deepEqual(planPrune(entries, { 'keep-last': 1 }, { vmid: 999 }), [])
  })

  it('rejects entries with a bad vmid or subtype', () => {
    assert.throws(
      () => planPrune([guest('a', 1, -1, 'qemu')], { 'keep-last': 1 }),
      codeIs('STORE_INVALID'),
    )
    assert.throws(
      () => planPrune([guest('a', 1, 100, 'openvz' as PruneSubtype)], { 'keep-last': 1 }),
      codeIs('STORE_INVALID'),
    )
  })

  it('validates the options even when there is nothing to prune', () => {
    assert.throws(() => planPrune([], { 'keep-last': -1 }), codeIs('CONFIG_INVALID'))
  })
})

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

const TIME_ZONES = [
  'UTC',
  'Europe/Vienna',
  'America/New_York',
  'Australia/Lord_Howe',
  'Asia/Kathmandu',
] as const
const arbTimeZone = fc.constantFrom(...TIME_ZONES)

// Mostly dense backups (so periods collide), sometimes spread over years; DST days included.
const arbCtime = fc.oneof(
  fc.integer({ min: utc(2021, 3, 20), max: utc(2021, 4, 5) }),
  fc.integer({ min: utc(2021, 10, 25), max: utc(2021, 11, 5) }),
  fc.integer({ min: utc(2019, 12, 1), max: utc(2021, 2, 1) }),
  fc.integer({ min: 0, max: utc(2040, 1, 1) }),
)

const arbEntries = (opts: { uniqueCtime?: boolean; protectedRate?: number } = {}) => {
  const rate = opts.protectedRate ?? 0.25
  const arbProtected = fc.double({ min: 0, max: 1, noNaN: true }).map((x) => x < rate)
  const toEntries = (xs: readonly { ctime: number; protected: boolean }[]): PruneEntry[] =>
    xs.map((x, i) => ({ volid: `s:backup/b${String(i).padStart(3, '0')}`, ...x }))
  const arb = fc.record({ ctime: arbCtime, protected: arbProtected })
  return opts.uniqueCtime === true
    ? fc.uniqueArray(arb, { maxLength: 60, selector: (x) => x.ctime }).map(toEntries)
    : fc.array(arb, { maxLength: 60 }).map(toEntries)
}

const arbCount = fc.integer({ min: 0, max: 6 })
const arbKeep: fc.Arbitrary<KeepOptions> = fc
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

const arbPeriodOption = fc.constantFrom(
  ['keep-hourly', 'hour'] as const,
  ['keep-daily', 'day'] as const,
  ['keep-weekly', 'week'] as const,
  ['keep-monthly', 'month'] as const,
  ['keep-yearly', 'year'] as const,
)

const sortedVolids = (xs: readonly { volid: string }[]): string[] => xs.map((x) => x.volid).sort()

describe('storage/prune: properties', () => {
  it('gives every entry exactly one mark, newest first', () => {
    fc.assert(
      fc.property(arbEntries(), arbKeep, arbTimeZone, (entries, keep, timeZone) => {
        const got = markBackupGroup(entries, keep, { timeZone })
        assert.deepEqual(sortedVolids(got), sortedVolids(entries))
        for (const m of got) assert.ok(['keep', 'remove', 'protected'].includes(m.mark))
        for (let i = 1; i < got.length; i++) assert.ok(got[i - 1]!.ctime >= got[i]!.ctime)
      }),
    )
  })

  it('marks exactly the protected entries protected, so they are never removed', () => {
    fc.assert(
      fc.property(arbEntries(), arbKeep, arbTimeZone, (entries, keep, timeZone) => {
        const prot = new Map(entries.map((e) => [e.volid, e.protected]))
        for (const m of markBackupGroup(entries, keep, { timeZone })) {
          assert.equal(m.mark === 'protected', prot.get(m.volid))
        }
      }),
    )
  })

  it('ignores protected entries when marking the others', () => {
    fc.assert(
      fc.property(arbEntries(), arbKeep, arbTimeZone, (entries, keep, timeZone) => {
        const all = markBackupGroup(entries, keep, { timeZone }).filter(
          (m) => m.mark !== 'protected',
        )
        const without = markBackupGroup(
          entries.filter((e) => !e.protected),
          keep,
          { timeZone },
        )
        assert.deepEqual(all, without)
      }),
    )
  })

  it('removes nothing with keep-all or without any positive count', () => {
    const arbNoCounts = fc.record(
      {
        'keep-all': fc.boolean(),
        'keep-last': fc.constant(0),
        'keep-daily': fc.constant(0),
        'keep-yearly': fc.constant(0),
      },
      { requiredKeys: [] },
    )
    fc.assert(
      fc.property(
        arbEntries(),
        fc.oneof(
          arbKeep.map((k) => ({ ...k, 'keep-all': true })),
          arbNoCounts,
        ),
        (entries, keep) => {
          for (const m of markBackupGroup(entries, keep)) {
            assert.notEqual(m.mark, 'remove')
          }
        },
      ),
    )
  })

  it('keeps exactly the min(N, unprotected) newest with keep-last=N alone', () => {
    fc.assert(
      fc.property(
        arbEntries({ uniqueCtime: true }),
        fc.integer({ min: 1, max: 70 }),
        (entries, n) => {
          const got = markBackupGroup(entries, { 'keep-last': n })
          const unprotected = entries.filter((e) => !e.protected).sort((a, b) => b.ctime - a.ctime)
          const expected = unprotected.slice(0, Math.min(n, unprotected.length)).map((e) => e.volid)
          assert.deepEqual(
            got.filter((m) => m.mark === 'keep').map((m) => m.volid),
            expected,
          )
        },
      ),
    )
  })

  it('keeps one backup per distinct ctime with keep-last when ctimes repeat', () => {
    fc.assert(
      fc.property(arbEntries(), fc.integer({ min: 1, max: 70 }), (entries, n) => {
        const got = markBackupGroup(entries, { 'keep-last': n })
        const distinct = new Set(entries.filter((e) => !e.protected).map((e) => e.ctime))
        const kept = got.filter((m) => m.mark === 'keep')
        assert.equal(kept.length, Math.min(n, distinct.size))
        assert.equal(new Set(kept.map((m) => m.ctime)).size, kept.length)
      }),
    )
  })

  it('keeps the newest backup of each of the N newest periods with one period option', () => {
    fc.assert(
      fc.property(
        arbEntries(),
        arbPeriodOption,
        fc.integer({ min: 1, max: 8 }),
        arbTimeZone,
        (entries, [option, period], n, timeZone) => {
          const got = markBackupGroup(entries, { [option]: n }, { timeZone })
          // model: walk unprotected newest first (ties by volid), first entry of a new period
          const walk = entries
            .filter((e) => !e.protected)
            .sort((a, b) => b.ctime - a.ctime || (a.volid < b.volid ? -1 : 1))
          const seen = new Set<string>()
          const expected: string[] = []
          for (const e of walk) {
            const id = backupPeriods(e.ctime, { timeZone })[period]
            if (seen.has(id)) continue
            if (seen.size >= n) break
            seen.add(id)
            expected.push(e.volid)
          }
          assert.deepEqual(
            got.filter((m) => m.mark === 'keep').map((m) => m.volid),
            expected,
          )
        },
      ),
    )
  })

  it('never keeps more unprotected backups than the sum of the counts', () => {
    fc.assert(
      fc.property(arbEntries(), arbKeep, arbTimeZone, (entries, keep, timeZone) => {
        fc.pre(keep['keep-all'] !== true)
        const sum =
          (keep['keep-last'] ?? 0) +
          (keep['keep-hourly'] ?? 0) +
          (keep['keep-daily'] ?? 0) +
          (keep['keep-weekly'] ?? 0) +
          (keep['keep-monthly'] ?? 0) +
          (keep['keep-yearly'] ?? 0)
        fc.pre(sum > 0)
        const kept = markBackupGroup(entries, keep, { timeZone }).filter((m) => m.mark === 'keep')
        assert.ok(kept.length <= sum)
      }),
    )
  })

  it('does not depend on the input order', () => {
    fc.assert(
      fc.property(
        arbEntries()
          .filter((es) => es.length > 0)
          .chain((es) =>
            fc.tuple(
              fc.constant(es),
              fc.shuffledSubarray(es, { minLength: es.length, maxLength: es.length }),
            ),
          ),
        arbKeep,
        arbTimeZone,
        ([entries, shuffled], keep, timeZone) => {
          assert.deepEqual(
            markBackupGroup(shuffled, keep, { timeZone }),
            markBackupGroup(entries, keep, { timeZone }),
          )
        },
      ),
    )
  })

  it('plans each guest like markBackupGroup on its own group, and filters like a pre-filter', () => {
    const arbGuestEntries = fc
      .array(
        fc.record({
          ctime: arbCtime,
          protected: fc.boolean(),
          vmid: fc.constantFrom(100, 101, 9000),
          subtype: fc.constantFrom<PruneSubtype>('qemu', 'lxc'),
        }),
        { maxLength: 60 },
      )
      .map((xs) => xs.map((x, i): PruneGuestEntry => ({ volid: `s:backup/g${i}`, ...x })))
    fc.assert(
      fc.property(
        arbGuestEntries,
        arbKeep,
        fc.option(fc.constantFrom(100, 101, 9000), { nil: undefined }),
        fc.option(fc.constantFrom<PruneSubtype>('qemu', 'lxc'), { nil: undefined }),
        (entries, keep, vmid, subtype) => {
          const filter = {
            ...(vmid === undefined ? {} : { vmid }),
            ...(subtype === undefined ? {} : { subtype }),
          }
          const got = planPrune(entries, keep, { ...filter, timeZone: 'UTC' })
          const selected = entries.filter(
            (e) =>
              (vmid === undefined || e.vmid === vmid) &&
              (subtype === undefined || e.subtype === subtype),
          )
          assert.deepEqual(got, planPrune(selected, keep, { timeZone: 'UTC' }))
          const expected: PlannedPruneMark[] = []
          for (const st of ['lxc', 'qemu'] as const) {
            for (const id of [100, 101, 9000]) {
              const group = selected.filter((e) => e.subtype === st && e.vmid === id)
              for (const m of markBackupGroup(group, keep, { timeZone: 'UTC' })) {
                expected.push({ ...m, vmid: id, subtype: st })
              }
            }
          }
          assert.deepEqual(got, expected)
        },
      ),
    )
  })
})
