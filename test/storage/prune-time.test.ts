import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { backupPeriods, markBackupGroup } from '../../src/storage/prune.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'
import { DAY, entry, marksOf, utc } from '../helpers/prune.ts'
import { BASE } from '../helpers/prune-pve.ts'

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
