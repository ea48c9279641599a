import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import fc from 'fast-check'
import {
  fnmatchLeadingDir,
  hasWildcards,
  localeIsUtf8,
  tarExcluder,
  toByteString,
} from '../../src/archive/exclude-match.ts'
import { findExcluded } from '../../src/archive/exclude-walk.ts'
import { tarExcludeArgs, tarPatterns } from '../../src/archive/excludes.ts'
import { buildParityTree } from './parity-tree.ts'

const utf8 = { utf8: true }
const bytes = { utf8: false }

describe('tar exclude matching', () => {
  it('fnmatch without FNM_PATHNAME/FNM_PERIOD: * ? and brackets match / and leading dots', () => {
    assert.ok(fnmatchLeadingDir('var/*.log', 'var/a/b.log', bytes))
    assert.ok(fnmatchLeadingDir('a?b', 'a/b', bytes))
    assert.ok(fnmatchLeadingDir('a[/]b', 'a/b', bytes))
    assert.ok(fnmatchLeadingDir('*.log', '.x.log', bytes))
    assert.ok(!fnmatchLeadingDir('*.log', 'x.logs', bytes))
  })

  it('FNM_LEADING_DIR: a match up to a / is a match', () => {
    assert.ok(fnmatchLeadingDir('./v?r', './var/log', bytes))
    assert.ok(!fnmatchLeadingDir('./v?r', './vars', bytes))
  })

  it('brackets: negation, ranges, classes, a leading ], an unterminated [', () => {
    assert.ok(fnmatchLeadingDir('[!a]b', 'xb', bytes))
    assert.ok(fnmatchLeadingDir('[^a]b', 'xb', bytes))
    assert.ok(!fnmatchLeadingDir('[!a]b', 'ab', bytes))
    assert.ok(fnmatchLeadingDir('[a-c]', 'b', bytes))
    assert.ok(fnmatchLeadingDir('[]]', ']', bytes))
    assert.ok(fnmatchLeadingDir('[a-]', '-', bytes))
    assert.ok(fnmatchLeadingDir('[[:digit:]]', '7', bytes))
    assert.ok(!fnmatchLeadingDir('[[:foo:]]', 'f', bytes), 'an unknown class matches nothing')
    assert.ok(fnmatchLeadingDir('*[x', 'a[x', bytes), 'an unterminated [ is itself')
    assert.ok(!fnmatchLeadingDir('a*\\', 'a\\', bytes), 'a trailing backslash loses')
  })

  it('UTF-8 locale: character-wise or byte-wise (glibc 2.36 as measured)', () => {
    const e = toByteString('é')
    assert.ok(fnmatchLeadingDir('?', e, utf8))
    assert.ok(!fnmatchLeadingDir('?', e, bytes))
    assert.ok(fnmatchLeadingDir('??', e, utf8))
    assert.ok(fnmatchLeadingDir('[[:alpha:]]', e, utf8))
    assert.ok(fnmatchLeadingDir('*.log', '\xff.log', utf8), 'not UTF-8: bytes')
  })

  it('patterns without wildcards are compared literally, backslashes removed', () => {
    assert.ok(!hasWildcards('q\\*'))
    assert.ok(hasWildcards('a]'))
    const ex = tarExcluder(tarPatterns(['q\\*', 'a\\', '/var/log']), bytes)
    assert.ok(ex('./x/q*'))
    assert.ok(!ex('./x/qq'))
    assert.ok(ex('./a\\'), 'a trailing backslash stays in a literal')
    assert.ok(ex('./var/log/x'))
    assert.ok(!ex('./usr/var/log'), 'anchored')
    assert.ok(ex('./sub/lost+found'))
  })

  it('unanchored patterns are tried on the whole name: * and ? exclude the root', () => {
    assert.ok(tarExcluder(tarPatterns(['?']), bytes)('.'))
    assert.ok(tarExcluder(tarPatterns(['.']), bytes)('.'))
    assert.ok(!tarExcluder(tarPatterns(['/?']), bytes)('.'))
  })

  it('reads the locale as setlocale(3) does', () => {
    assert.ok(localeIsUtf8({ LANG: 'C.UTF-8' }))
    assert.ok(localeIsUtf8({ LC_CTYPE: 'de_DE.utf8', LANG: 'C' }))
    assert.ok(!localeIsUtf8({ LC_ALL: 'C', LANG: 'C.UTF-8' }))
    assert.ok(!localeIsUtf8({ LC_ALL: '', LANG: 'POSIX' }))
    assert.ok(!localeIsUtf8({}))
  })
})

describe('property: the matcher leaves out what real GNU tar leaves out', () => {
  let dir: string
  let root: string
  let all: string[]
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-excl-match-'))
    root = join(dir, 'root')
    await buildParityTree(root)
    all = tarList([])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** What `tar c` archives with these patterns (names relative, root left out). */
  const tarList = (patterns: readonly string[]): string[] =>
    execFileSync(
      'sh',
      [
        '-c',
        'tar -cf - -C "$0" "$@" . | tar -t --quoting-style=literal',
        root,
        ...tarExcludeArgs(patterns).args,
      ],
      { encoding: 'latin1' },
    )
      .split('\n')
      .map((l) => l.replace(/^\.\/?/, '').replace(/\/$/, ''))
      .filter((l) => l !== '')
      .sort()

  const piece = fc.constantFrom(
    ...[
      'a',
      'b',
      'c',
      'x',
      'log',
      'var',
      'run',
      'keep',
      '.',
      '/',
      '*',
      '**',
      '?',
      '[',
      ']',
      '!',
      '^',
    ],
    ...['-', '\\', ' ', 'é', '[:alpha:]', '+', 'lost'],
  )
  const pattern = fc
    .tuple(fc.boolean(), fc.array(piece, { minLength: 1, maxLength: 6 }))
    .map(([anchored, parts]) => (anchored ? '/' : '') + parts.join(''))

  it('on the corpus tree, for generated patterns', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(pattern, { minLength: 1, maxLength: 2 }), async (patterns) => {
        const excluded = await findExcluded(root, patterns)
        const model = all.filter((p) => !excluded.some((e) => p === e || p.startsWith(`${e}/`)))
        // tar leaves out everything when it excludes the root; mksquashfs keeps an empty root.
        assert.deepEqual(model, tarList(patterns))
      }),
      { numRuns: 300 },
    )
  })
})
