import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createSquashfs } from '../../src/archive/squashfs.ts'
import { createTarArchive } from '../../src/archive/tar.ts'
import { STD_EXCLUDES } from '../../src/cli/parse-backup.ts'

/** The corpus: files, and directories ending in `/`. */
export const PARITY_TREE: readonly string[] = [
  'a/b/c.log',
  'x.log',
  '.hidden.log',
  'cache/f',
  'sub/cache/g',
  'sub/keep',
  'keep',
  'tmp/keep',
  'tmp/.dot',
  'tmp/empty/',
  'var/run/x.pid',
  'var/run/sub/y.pid',
  'var/run/keep',
  'var/tmp/t',
  'var/log/a.log',
  'var/a/b.log',
  'usr/var/log/k',
  'with space/file name',
  '[br]/x',
  'b',
  'lit*star',
  'lit?q',
  'lost+found/z',
  'sub/lost+found/z',
  'é/ü',
]

/** Build {@link PARITY_TREE} in `root`. */
export const buildParityTree = async (root: string): Promise<void> => {
  for (const p of PARITY_TREE) {
    if (p.endsWith('/')) await mkdir(join(root, p), { recursive: true })
    else {
      await mkdir(dirname(join(root, p)), { recursive: true })
      await writeFile(join(root, p), p)
    }
  }
}

/** Member names of a tar file, without `./` and trailing `/`, the root left out. */
export const tarNames = (file: string): string[] =>
  execFileSync('tar', ['-tf', file, '--quoting-style=literal'], { encoding: 'latin1' })
    .split('\n')
    .map((l) => l.replace(/^\.\/?/, '').replace(/\/$/, ''))
    .filter((l) => l !== '')
    .sort()

/** Entry names of a squashfs image, relative to its root, the root left out. */
export const squashfsNames = (image: string): string[] =>
  execFileSync('unsquashfs', ['-l', '-d', 'R', image], { encoding: 'latin1' })
    .split('\n')
    .filter((l) => l.startsWith('R/'))
    .map((l) => l.slice(2))
    .sort()

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
      const latin1 = (s: string): string => Buffer.from(s).toString('latin1')
      if (gone !== undefined) assert.ok(!want.includes(latin1(gone)), `${gone} excluded`)
      if (kept !== undefined) assert.ok(want.includes(latin1(kept)), `${kept} kept`)
    })
  })
})
