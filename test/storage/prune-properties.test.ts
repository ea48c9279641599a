import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { backupPeriods, markBackupGroup, planPrune } from '../../src/storage/prune.ts'
import type { PlannedPruneMark, PruneGuestEntry, PruneSubtype } from '../../src/storage/prune.ts'
import {
  arbCtime,
  arbEntries,
  arbKeep,
  arbPeriodOption,
  arbTimeZone,
  sortedVolids,
} from '../helpers/prune.ts'

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

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
