import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { isBackupError } from '../../src/errors.ts'
import {
  KEEP_ALL_CONFLICT_MESSAGE,
  KEEP_COUNT_KEYS,
  KEEP_OPTION_KEYS,
  MAX_PROTECTED_UNLIMITED,
  assertKeepOptions,
  formatPruneBackups,
  parseMaxProtected,
  parsePruneBackups,
  validatePruneBackups,
} from '../../src/storage/prune-options.ts'
import type { KeepOptions } from '../../src/storage/prune-options.ts'

const configInvalid =
  (message?: RegExp | string) =>
  (e: unknown): boolean =>
    isBackupError(e, 'CONFIG_INVALID') &&
    (message === undefined ||
      (typeof message === 'string' ? e.message === message : message.test(e.message)))

describe('storage/prune-options: parsePruneBackups', () => {
  const valid: [string, KeepOptions][] = [
    ['keep-last=3', { 'keep-last': 3 }],
    ['keep-last=3,keep-daily=7', { 'keep-last': 3, 'keep-daily': 7 }],
    [
      'keep-yearly=1,keep-monthly=2,keep-weekly=3,keep-daily=4,keep-hourly=5,keep-last=6',
      {
        'keep-last': 6,
        'keep-hourly': 5,
        'keep-daily': 4,
        'keep-weekly': 3,
        'keep-monthly': 2,
        'keep-yearly': 1,
      },
    ],
    ['keep-all=1', { 'keep-all': true }],
    // validate_prune_backups: nothing positive means keep-all, whatever keep-all said
    ['keep-all=0', { 'keep-all': true }],
    ['', { 'keep-all': true }],
    ['keep-last=0', { 'keep-all': true }],
    ['keep-last=0,keep-hourly=0,keep-daily=0', { 'keep-all': true }],
    // zero counts stay when another count is positive; keep-all=0 is dropped
    ['keep-last=0,keep-daily=7', { 'keep-last': 0, 'keep-daily': 7 }],
    ['keep-all=0,keep-weekly=2', { 'keep-weekly': 2 }],
    // property-string details of PVE::JSONSchema
    ['keep-last=1,,keep-daily=2,', { 'keep-last': 1, 'keep-daily': 2 }],
    [' ,keep-last=1, ', { 'keep-last': 1 }],
    ['keep-last=+3', { 'keep-last': 3 }],
    ['keep-last=03', { 'keep-last': 3 }],
    ['keep-last=-0,keep-daily=1', { 'keep-last': 0, 'keep-daily': 1 }],
    ['keep-all=true', { 'keep-all': true }],
    ['keep-all=Yes', { 'keep-all': true }],
    ['keep-all=on', { 'keep-all': true }],
    ['keep-all=off,keep-last=1', { 'keep-last': 1 }],
    ['keep-all=FALSE,keep-last=1', { 'keep-last': 1 }],
    ['keep-last=9007199254740991', { 'keep-last': Number.MAX_SAFE_INTEGER }],
  ]
  for (const [input, expected] of valid) {
    it(`parses '${input}'`, () => {
      const got = parsePruneBackups(input)
      assert.deepEqual(got, expected)
      if (got['keep-last'] !== undefined) assert.ok(!Object.is(got['keep-last'], -0))
    })
  }

  const invalid: [string, RegExp | string][] = [
    ['keep-all=1,keep-last=1', KEEP_ALL_CONFLICT_MESSAGE],
    ['keep-daily=7,keep-all=yes', KEEP_ALL_CONFLICT_MESSAGE],
    ['keep-last=1,keep-last=2', /duplicate option 'keep-last'/],
    ['keep-last=1,keep-last=1', /duplicate option 'keep-last'/],
    ['keep-all=1,keep-all=1', /duplicate option 'keep-all'/],
    ['keep-monthyl=3', /unknown option 'keep-monthyl'/],
    ['keep-minutely=3', /unknown option 'keep-minutely'/],
    ['maxfiles=3', /unknown option 'maxfiles'/],
    [' keep-last=3', /unknown option ' keep-last'/],
    ['keep-last =3', /unknown option 'keep-last '/],
    ['KEEP-LAST=3', /unknown option 'KEEP-LAST'/],
    ['keep-last=-1', /'keep-last' must be a non-negative integer, got '-1'/],
    ['keep-last=1.5', /'keep-last' must be a non-negative integer/],
    ['keep-last=1e3', /'keep-last' must be a non-negative integer/],
    ['keep-last=0x10', /'keep-last' must be a non-negative integer/],
    ['keep-last= 3', /'keep-last' must be a non-negative integer/],
    ['keep-last=three', /'keep-last' must be a non-negative integer/],
    ['keep-last=9007199254740992', /'keep-last' must be a non-negative integer/],
    ['keep-daily=3=4', /'keep-daily' must be a non-negative integer, got '3=4'/],
    ['keep-all=2', /'keep-all' must be a boolean \(0 or 1\), got '2'/],
    ['keep-all=maybe', /'keep-all' must be a boolean/],
    ['keep-last', /expected key=value, got 'keep-last'/],
    ['3', /expected key=value/],
    ['keep-last=', /missing key or value in 'keep-last='/],
    ['=3', /missing key or value/],
  ]
  for (const [input, message] of invalid) {
    it(`rejects '${input}'`, () => {
      assert.throws(() => parsePruneBackups(input), configInvalid(message))
    })
  }

  it('puts the input and the offending key into the error details', () => {
    try {
      parsePruneBackups('keep-last=1,keep-daily=x')
      assert.fail('no error')
    } catch (e) {
      assert.ok(isBackupError(e, 'CONFIG_INVALID'))
      assert.deepEqual(e.details, {
        input: 'keep-last=1,keep-daily=x',
        key: 'keep-daily',
        value: 'x',
      })
    }
  })

  it('only ever throws CONFIG_INVALID on arbitrary input', () => {
    const arbPiece = fc.oneof(
      fc.constantFrom(
        ...KEEP_OPTION_KEYS,
        'keep-monthyl',
        '',
        ' ',
        '=',
        ',',
        '-1',
        '1',
        'yes',
        '0',
      ),
      fc.string({ maxLength: 6 }),
    )
    fc.assert(
      fc.property(fc.array(arbPiece, { maxLength: 10 }), (pieces) => {
        const s = pieces.join('')
        try {
          const k = parsePruneBackups(s)
          // whatever parses is already normalized
          assert.deepEqual(validatePruneBackups(k), k)
        } catch (e) {
          assert.ok(isBackupError(e, 'CONFIG_INVALID'), String(e))
        }
      }),
    )
  })
})

describe('storage/prune-options: validatePruneBackups', () => {
  it('turns no positive count into keep-all', () => {
    assert.deepEqual(validatePruneBackups({}), { 'keep-all': true })
    assert.deepEqual(validatePruneBackups({ 'keep-all': false }), { 'keep-all': true })
    assert.deepEqual(validatePruneBackups({ 'keep-last': 0, 'keep-yearly': 0 }), {
      'keep-all': true,
    })
  })

  it('rejects keep-all together with a positive count, word for word like Proxmox', () => {
    assert.throws(
      () => validatePruneBackups({ 'keep-all': true, 'keep-yearly': 1 }),
      configInvalid('keep-all cannot be set together with other options.'),
    )
  })

  it('allows keep-all together with zero counts', () => {
    assert.deepEqual(validatePruneBackups({ 'keep-all': true, 'keep-last': 0 }), {
      'keep-all': true,
    })
  })

  it('returns a copy without keep-all=false', () => {
    const input: KeepOptions = { 'keep-all': false, 'keep-last': 2, 'keep-daily': 0 }
    const got = validatePruneBackups(input)
    assert.deepEqual(got, { 'keep-last': 2, 'keep-daily': 0 })
    assert.notEqual(got, input)
    assert.deepEqual(input, { 'keep-all': false, 'keep-last': 2, 'keep-daily': 0 })
  })

  it('treats keys with an undefined value as missing', () => {
    const keep = { 'keep-last': undefined, 'keep-daily': 1 } as unknown as KeepOptions
    assert.deepEqual(validatePruneBackups(keep), { 'keep-daily': 1 })
  })
})

describe('storage/prune-options: assertKeepOptions', () => {
  it('accepts valid options including keep-all with counts', () => {
    assertKeepOptions({})
    assertKeepOptions({ 'keep-all': true, 'keep-last': 3 })
    assertKeepOptions({ 'keep-hourly': 0, 'keep-yearly': 1_000_000 })
  })

  const bad: [string, unknown][] = [
    ['null', null],
    ['an array', []],
    ['a string', 'keep-last=1'],
    ['an unknown key', { 'keep-monthyl': 1 }],
    ['a negative count', { 'keep-last': -1 }],
    ['a fractional count', { 'keep-daily': 0.5 }],
    ['NaN', { 'keep-daily': Number.NaN }],
    ['Infinity', { 'keep-daily': Number.POSITIVE_INFINITY }],
    ['a string count', { 'keep-daily': '1' }],
    ['a numeric keep-all', { 'keep-all': 1 }],
    ['a string keep-all', { 'keep-all': 'true' }],
  ]
  for (const [what, value] of bad) {
    it(`rejects ${what}`, () => {
      assert.throws(() => {
        assertKeepOptions(value as KeepOptions)
      }, configInvalid())
    })
  }
})

describe('storage/prune-options: formatPruneBackups', () => {
  it('prints keys in canonical order', () => {
    assert.equal(
      formatPruneBackups({ 'keep-yearly': 1, 'keep-last': 3, 'keep-daily': 7 }),
      'keep-last=3,keep-daily=7,keep-yearly=1',
    )
  })

  it('prints keep-all as 1', () => {
    assert.equal(formatPruneBackups({ 'keep-all': true }), 'keep-all=1')
  })

  it('normalizes like validate_prune_backups', () => {
    assert.equal(formatPruneBackups({}), 'keep-all=1')
    assert.equal(formatPruneBackups({ 'keep-last': 0 }), 'keep-all=1')
    assert.equal(
      formatPruneBackups({ 'keep-all': false, 'keep-last': 0, 'keep-daily': 7 }),
      'keep-last=0,keep-daily=7',
    )
  })

  it('rejects invalid options', () => {
    assert.throws(
      () => formatPruneBackups({ 'keep-all': true, 'keep-last': 1 }),
      configInvalid(KEEP_ALL_CONFLICT_MESSAGE),
    )
    assert.throws(() => formatPruneBackups({ 'keep-last': -3 }), configInvalid())
  })

  const arbCount = fc.oneof(fc.integer({ min: 0, max: 10 }), fc.nat())
  const arbKeep: fc.Arbitrary<KeepOptions> = fc
    .tuple(
      fc.option(fc.boolean(), { nil: undefined }),
      fc.array(fc.option(arbCount, { nil: undefined }), {
        minLength: KEEP_COUNT_KEYS.length,
        maxLength: KEEP_COUNT_KEYS.length,
      }),
    )
    .map(([all, counts]) => {
      const k: KeepOptions = {}
      if (all !== undefined) k['keep-all'] = all
      KEEP_COUNT_KEYS.forEach((key, i) => {
        const n = counts[i]
        if (n !== undefined) k[key] = n
      })
      return k
    })
    .filter((k) => k['keep-all'] !== true || KEEP_COUNT_KEYS.every((key) => !(k[key]! > 0)))

  it('round-trips: parse(format(k)) equals validate(k)', () => {
    fc.assert(
      fc.property(arbKeep, (k) => {
        assert.deepEqual(parsePruneBackups(formatPruneBackups(k)), validatePruneBackups(k))
      }),
    )
  })

  it('round-trips: format(parse(s)) is a fixed point', () => {
    fc.assert(
      fc.property(arbKeep, (k) => {
        const s = formatPruneBackups(k)
        assert.equal(formatPruneBackups(parsePruneBackups(s)), s)
      }),
    )
  })
})

describe('storage/prune-options: parseMaxProtected', () => {
  const valid: [string, number][] = [
    ['-1', MAX_PROTECTED_UNLIMITED],
    ['0', 0],
    ['-0', 0],
    ['5', 5],
    ['+7', 7],
    ['0010', 10],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ]
  for (const [input, expected] of valid) {
    it(`parses '${input}'`, () => {
      assert.ok(Object.is(parseMaxProtected(input), expected))
    })
  }

  for (const input of ['-2', '', ' 5', '5 ', '1.0', '1e2', 'unlimited', '9007199254740992']) {
    it(`rejects '${input}'`, () => {
      assert.throws(
        () => parseMaxProtected(input),
        configInvalid(/max-protected-backups must be an integer >= -1/),
      )
    })
  }
})
