import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createSquashfs } from '../../src/archive/squashfs.ts'
import { createTarArchive } from '../../src/archive/tar.ts'
import { STD_EXCLUDES } from '../../src/cli/parse-backup.ts'
import { NOT_UTF8, buildParityTree, squashfsNames, tarNames } from './parity-tree.ts'

/** Pattern sets, each with a name that a file must be excluded (proving the set does something). */
const CASES: readonly { patterns: readonly string[]; gone?: string; kept?: string }[] = [
  { patterns: [], gone: 'sub/lost+found', kept: 'keep' },
  { patterns: STD_EXCLUDES, gone: 'tmp/.dot', kept: 'var/run/keep' },
  { patterns: ['var/*.log'], gone: 'var/a/b.log', kept: 'a/b/c.log' },
  { patterns: ['*.log'], gone: '.hidden.log', kept: 'var/log' },
  { patterns: ['/var/log'], gone: 'var/log', kept: 'usr/var/log' },
  { patterns: ['var/log'], gone: 'usr/var/log', kept: 'var/run' },
  { patterns: ['cache'], gone: 'sub/cache', kept: 'sub/keep' },
  { patterns: ['/cache'], gone: 'cache', kept: 'sub/cache' },
  { patterns: ['cache/'], kept: 'cache/f' },
  { patterns: ['**/keep'], gone: 'keep', kept: 'var/run/x.pid' },
  { patterns: ['/var/**'], gone: 'var/run', kept: 'var' },
  { patterns: ['/var/*/*.pid'], gone: 'var/run/sub/y.pid', kept: 'var/run/keep' },
  { patterns: ['?'], gone: 'x.log' },
  { patterns: ['[abc]', 'l?t*'], gone: 'lit?q', kept: '[br]' },
  { patterns: ['[br]'], gone: 'b', kept: '[br]/x' },
  { patterns: ['\\[br]'], gone: '[br]', kept: 'b' },
  { patterns: ['lit\\*star'], gone: 'lit*star', kept: 'lit?q' },
  { patterns: ['/with space'], gone: 'with space', kept: 'x.log' },
  { patterns: ['*é*', '.h*'], gone: 'é', kept: 'x.log' },
  { patterns: ['?.log'], gone: NOT_UTF8, kept: 'a' },
  // In a UTF-8 locale glibc's fnmatch matches é as one character and as two bytes.
  { patterns: ['/?'], gone: 'é', kept: 'keep' },
  { patterns: ['/??'], gone: 'é', kept: 'keep' },
  { patterns: ['/[!a-z]*'], gone: '[br]', kept: 'x.log' },
  // Unanchored, it matches the whole name `.`: tar leaves out everything.
  { patterns: ['[!a-z]*'], gone: 'x.log' },
  { patterns: ['sub/*', '/tmp/'], gone: 'sub/keep', kept: 'tmp/keep' },
]

describe('exclude parity: tar and squashfs leave out the same files', () => {
  let dir: string
  let root: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-excl-parity-'))
    root = join(dir, 'root')
    await buildParityTree(root)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  CASES.forEach(({ patterns, gone, kept }, i) => {
    it(JSON.stringify(patterns), async () => {
      const tar = join(dir, `${i}.tar`)
      const image = join(dir, `${i}.sqfs`)
      await createTarArchive({ directory: root, excludes: patterns, output: tar })
      await createSquashfs({ directory: root, excludes: patterns, output: image })
      const want = tarNames(tar)
      assert.deepEqual(squashfsNames(image), want)
      const latin1 = (s: string): string => (s === NOT_UTF8 ? s : Buffer.from(s).toString('latin1'))
      if (gone !== undefined) assert.ok(!want.includes(latin1(gone)), `${gone} excluded`)
      if (kept !== undefined) assert.ok(want.includes(latin1(kept)), `${kept} kept`)
    })
  })
})
