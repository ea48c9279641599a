import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { markBackupGroup, planPrune } from '../../src/storage/prune.ts'
import type { PruneGuestEntry, PruneSubtype } from '../../src/storage/prune.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'
import { codeIs, DAY, entry, HOUR, marksOf, utc } from '../helpers/prune.ts'

// ---------------------------------------------------------------------------------------------
// Hand-made cases for the details of prune_mark_backup_group.
// ---------------------------------------------------------------------------------------------

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
