import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { InvalidArgumentError } from 'commander'
import { LOCK_WAIT_DEFAULTS, parseLockWait, parseRate } from '../../src/cli/parse.ts'

describe('cli/parse: --lock-wait', () => {
  it("reads a bare number as minutes, as vzdump's lockwait", () => {
    assert.equal(parseLockWait('180'), 180 * 60_000)
    assert.equal(parseLockWait('1'), 60_000)
    assert.equal(parseLockWait('0'), 0)
  })

  it('reads s, m and h suffixes', () => {
    assert.equal(parseLockWait('30s'), 30_000)
    assert.equal(parseLockWait('5m'), 5 * 60_000)
    assert.equal(parseLockWait('2h'), 2 * 3_600_000)
    assert.equal(parseLockWait('0s'), 0)
    assert.equal(parseLockWait(' 10s '), 10_000)
  })

  it('refuses anything else with one usage message', () => {
    for (const bad of [
      '',
      '-1',
      '1.5',
      '10 s',
      '10sec',
      '5d',
      'm',
      '1e3',
      '0x10',
      '168h1',
      '169h',
    ]) {
      assert.throws(
        () => parseLockWait(bad),
        (e: unknown) =>
          e instanceof InvalidArgumentError &&
          e.message ===
            "expected a time: minutes as vzdump's lockwait (180), or with a unit (30s, 5m, 2h)",
        `accepted '${bad}'`,
      )
    }
    assert.equal(parseLockWait('168h'), 7 * 24 * 3_600_000)
  })

  it("defaults: vzdump's 180 minutes for backup, 10 minutes for prune and remove", () => {
    assert.deepEqual(LOCK_WAIT_DEFAULTS, { backup: 180 * 60_000, other: 10 * 60_000 })
  })
})

describe('cli/parse: --bwlimit', () => {
  it("reads a bare number as KiB/s, as vzdump's bwlimit, and gives bytes/s", () => {
    assert.equal(parseRate('10000'), 10000 * 1024)
    assert.equal(parseRate('0'), 0)
  })

  it('reads K, M, G (binary) and B for bytes', () => {
    assert.equal(parseRate('500K'), 500 * 1024)
    assert.equal(parseRate('50M'), 50 * 1024 ** 2)
    assert.equal(parseRate('50MiB/s'), 50 * 1024 ** 2)
    assert.equal(parseRate('1G'), 1024 ** 3)
    assert.equal(parseRate('65536B'), 65536)
  })

  it('refuses anything else', () => {
    for (const bad of ['', '-1', '1.5', '10T', 'K', '10 M', '9999999999999999']) {
      assert.throws(
        () => parseRate(bad),
        (e: unknown) => e instanceof InvalidArgumentError && e.message.startsWith('expected KiB/s'),
        bad,
      )
    }
  })
})
