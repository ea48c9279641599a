import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { planPrune } from '../../src/storage/prune.ts'
import type { PlannedPruneMark, PruneSubtype } from '../../src/storage/prune.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'
import { byVolid } from '../helpers/prune.ts'
import { explicit, generateExpected, LISTS, toGuestEntries, VMIDS } from '../helpers/prune-pve.ts'

// ---------------------------------------------------------------------------------------------
// Port of pve-storage src/test/prune_backups_test.pm (dry-run prune_backups over mocked
// list_volumes). Entries with non-standard names ("renamed") have no counterpart here: our
// callers only pass parsed backups, so those cases are left out.
// ---------------------------------------------------------------------------------------------

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
