/** A small tree of awkward names for comparing tar's and mksquashfs' excludes. */
import { execFileSync } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'

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

/** A file name that is not UTF-8 (a byte string), at the root of the corpus. */
export const NOT_UTF8 = '\xff.log'

/** Build {@link PARITY_TREE} (and {@link NOT_UTF8}) in `root`. */
export const buildParityTree = async (root: string): Promise<void> => {
  for (const p of PARITY_TREE) {
    if (p.endsWith('/')) await mkdir(join(root, p), { recursive: true })
    else {
      await mkdir(dirname(join(root, p)), { recursive: true })
      await writeFile(join(root, p), p)
    }
  }
  await writeFile(Buffer.from(`${root}/${NOT_UTF8}`, 'latin1'), 'x')
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
