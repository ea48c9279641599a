import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  LOST_AND_FOUND,
  parseExcludes,
  squashfsExcludeArgs,
  tarExcludeArgs,
  tarPatterns,
} from '../../src/archive/excludes.ts'
import { toByteString } from '../../src/archive/exclude-match.ts'
import { isBackupError } from '../../src/errors.ts'

const usage = (e: unknown) => isBackupError(e, 'USAGE')

/** A valid pattern: non-empty, no NUL, no newline; about half of them anchored. */
const validPattern = fc.oneof(
  fc.string({ minLength: 1 }).filter((s) => !/[\0\n]/.test(s)),
  fc.string().map((s) => `/${s.replace(/[\0\n]/g, '_')}`),
  fc.constantFrom('*.tmp', '/var/log', '/tmp/*', 'cache/', '-rf', '--exclude=x', '/'),
)

describe('exclude patterns', () => {
  it('maps the Proxmox examples to tar arguments', () => {
    assert.deepEqual(tarExcludeArgs([]), {
      args: ['--no-anchored', '--exclude=lost+found'],
      warnings: [],
    })
    const r = tarExcludeArgs(['/var/log', '*.tmp', '/tmp/*', 'cache/'])
    assert.deepEqual(r.args, [
      '--no-anchored',
      '--exclude=lost+found',
      '--exclude=*.tmp',
      '--exclude=cache/',
      '--anchored',
      '--exclude=./var/log',
      '--exclude=./tmp/*',
    ])
    assert.equal(r.warnings.length, 1)
    assert.match(r.warnings[0]!, /'cache\/' ends with '\/' and will never match/)
  })

  it('hands mksquashfs each excluded path as a line that matches only that name', () => {
    const r = squashfsExcludeArgs(['var/log', 'a b/[x]*?', ' #lead', toByteString('é')])
    assert.deepEqual(r.args, ['-wildcards', '-ef', '/dev/stdin'])
    assert.equal(
      r.input.toString('latin1'),
      '\\var/log\n\\a\\ b/\\[x\\]\\*\\?\n\\\\ \\#lead\n\\' +
        Buffer.from('é').toString('latin1') +
        '\n',
    )
  })

  it('passes names with a newline after -e, and refuses them when not UTF-8', () => {
    const r = squashfsExcludeArgs(['ok', 'a\nb'])
    assert.deepEqual(r.args, ['-wildcards', '-ef', '/dev/stdin', '-e', 'a\\\nb'])
    assert.equal(r.input.toString(), '\\ok\n')
    assert.throws(
      () => squashfsExcludeArgs(['\xff\n']),
      (e: unknown) =>
        isBackupError(e, 'UNSUPPORTED') && String(e).includes('newline that is not UTF-8'),
    )
  })

  it('lists lost+found, the unanchored and then the anchored patterns for the matcher', () => {
    assert.deepEqual(tarPatterns(['/var/log', '*.tmp']), [
      { pattern: LOST_AND_FOUND, anchored: false },
      { pattern: '*.tmp', anchored: false },
      { pattern: './var/log', anchored: true },
    ])
  })

  it('passes option-like patterns as values, never as options', () => {
    assert.deepEqual(tarExcludeArgs(['-rf', '--to-command=sh']).args.slice(2), [
      '--exclude=-rf',
      '--exclude=--to-command=sh',
    ])
  })

  it('rejects empty patterns and patterns with NUL or newline', () => {
    for (const bad of ['', 'a\nb', 'a\0b', '/x\n', '\0']) {
      assert.throws(() => tarExcludeArgs(['ok', bad]), usage)
      assert.throws(() => tarPatterns([bad]), usage)
    }
  })

  it('property: every pattern appears once, in order, anchored ones after --anchored', () => {
    fc.assert(
      fc.property(fc.array(validPattern, { maxLength: 12 }), (patterns) => {
        const { args } = tarExcludeArgs(patterns)
        assert.deepEqual(args.slice(0, 2), ['--no-anchored', `--exclude=${LOST_AND_FOUND}`])
        const anchoredAt = args.indexOf('--anchored')
        const unanchored = patterns.filter((p) => !p.startsWith('/'))
        const anchored = patterns.filter((p) => p.startsWith('/'))
        assert.equal(anchoredAt >= 0, anchored.length > 0)
        assert.equal(args.filter((a) => a === '--anchored').length, anchored.length > 0 ? 1 : 0)
        assert.ok(!args.slice(1).includes('--no-anchored'))
        const before = anchoredAt < 0 ? args.slice(2) : args.slice(2, anchoredAt)
        const after = anchoredAt < 0 ? [] : args.slice(anchoredAt + 1)
        assert.deepEqual(
          before,
          unanchored.map((p) => `--exclude=${p}`),
        )
        assert.deepEqual(
          after,
          anchored.map((p) => `--exclude=.${p}`),
        )
      }),
    )
  })

  it('property: one warning per pattern with a trailing slash', () => {
    fc.assert(
      fc.property(fc.array(validPattern, { maxLength: 12 }), (patterns) => {
        const { warnings, anchored, unanchored } = parseExcludes(patterns)
        assert.equal(warnings.length, patterns.filter((p) => p.endsWith('/')).length)
        assert.equal(anchored.length + unanchored.length, patterns.length)
      }),
    )
  })

  it('property: any NUL or newline anywhere is a USAGE error', () => {
    fc.assert(
      fc.property(
        fc.array(validPattern, { maxLength: 5 }),
        fc.string(),
        fc.constantFrom('\0', '\n'),
        fc.string(),
        (good, a, bad, b) => {
          assert.throws(() => parseExcludes([...good, a + bad + b]), usage)
        },
      ),
    )
  })
})
