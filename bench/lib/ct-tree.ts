/**
 * A container-like directory tree for the container scenarios, generated once (untimed) from a
 * seeded PRNG: many small text files, some medium and MB-size binaries, a few sparse files, hard
 * links, symbolic links, owners, a few xattrs and ACLs. Binary content comes from AES-128-CTR
 * with a fixed key (fast and deterministic: every file differs, so mksquashfs finds no
 * duplicates); text is cut at random offsets out of one generated corpus.
 */
import { createCipheriv } from 'node:crypto'
import { chownSync, closeSync, ftruncateSync, linkSync, mkdirSync, openSync } from 'node:fs'
import { symlinkSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { run } from './procs.ts'

/** What the tree holds. */
export interface TreeStats {
  files: number
  dirs: number
  symlinks: number
  hardlinks: number
  sparse: number
  /** Bytes of file data (sparse files: their data extents only; hard links once). */
  dataBytes: number
  /** Apparent bytes of the sparse files. */
  sparseBytes: number
}

const KiB = 1024
const MiB = 1024 * KiB

/** mulberry32: a small seeded PRNG, good enough to pick sizes and names. */
const prng = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const WORDS = (
  'the of and to in is that for it as with was on be by at this have from or one had not but ' +
  'what all were when we there can an your which their said if do will each about how up out ' +
  'them then she many some so these would other into has more her two like him see time could ' +
  'no make than first been its who now people my made over did down only way find use may ' +
  'water long little very after words called just where most know get through back much go ' +
  'config server root usr lib bin etc var log daemon service network interface address kernel'
).split(' ')

/**
 * Generate the tree into `root` (an existing, empty directory); needs root (chown) and
 * setfattr/setfacl. About 20 000 files and 700 MiB; takes a few seconds. `scale` (0 < scale ≤ 1)
 * multiplies every count (files, links, directories per top level, sparse files), for short
 * check runs of the benchmark.
 */
export const makeContainerTree = async (root: string, seed = 42, scale = 1): Promise<TreeStats> => {
  if (!(scale > 0 && scale <= 1)) throw new Error(`bad tree scale ${scale}`)
  const count = (n: number): number => Math.max(1, Math.round(n * scale))
  const rnd = prng(seed)
  const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1))
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, seed & 0xff))
  const zeroes = Buffer.alloc(4 * MiB)
  const randomBytes = (n: number): Buffer => cipher.update(zeroes.subarray(0, n))
  const words: string[] = []
  for (let i = 0; i < 1_000_000; i++) {
    words.push(WORDS[int(0, WORDS.length - 1)] ?? 'x', i % 12 === 11 ? '\n' : ' ')
  }
  const corpus = Buffer.from(words.join(''), 'latin1')
  const stats: TreeStats = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    sparse: 0,
    dataBytes: 0,
    sparseBytes: 0,
  }
  const dirs: string[] = []
  for (const top of ['etc', 'usr/bin', 'usr/lib', 'usr/share/doc', 'var/lib', 'home', 'opt']) {
    for (let i = 0; i < count(40); i++) {
      for (let j = 0; j < 5; j++) {
        const d = join(top, `d${i}`, `s${j}`)
        mkdirSync(join(root, d), { recursive: true })
        dirs.push(d)
      }
    }
  }
  stats.dirs = dirs.length
  const pickDir = (): string => dirs[int(0, dirs.length - 1)] ?? 'etc'
  const write = (rel: string, data: Buffer): void => {
    writeFileSync(join(root, rel), data, { mode: 0o644 })
    stats.files++
    stats.dataBytes += data.length
  }
  const files: string[] = []
  // 18 000 text files of 100 B … 16 KiB.
  for (let i = 0; i < count(18_000); i++) {
    const n = Math.floor(100 * Math.pow(160, rnd()))
    const at = int(0, corpus.length - n)
    const rel = join(pickDir(), `f${i}.conf`)
    write(rel, corpus.subarray(at, at + n))
    files.push(rel)
  }
  // 1 600 binaries of 16 … 256 KiB, 60 of 1 … 8 MiB.
  for (let i = 0; i < count(1600); i++)
    write(join(pickDir(), `lib${i}.so`), randomBytes(int(16, 256) * KiB))
  for (let i = 0; i < count(60); i++) {
    const rel = join(pickDir(), `big${i}.bin`)
    const fd = openSync(join(root, rel), 'w', 0o644)
    for (let left = int(1, 8) * MiB; left > 0; left -= zeroes.length) {
      const b = randomBytes(Math.min(left, zeroes.length))
      writeSync(fd, b)
      stats.dataBytes += b.length
    }
    closeSync(fd)
    stats.files++
  }
  // 4 sparse images of 64 MiB with 16 extents of 256 KiB.
  for (let i = 0; i < count(4); i++) {
    const fd = openSync(join(root, `var/lib/disk${i}.img`), 'w', 0o644)
    for (let e = 0; e < 16; e++) writeSync(fd, randomBytes(256 * KiB), 0, 256 * KiB, e * 4 * MiB)
    ftruncateSync(fd, 64 * MiB)
    closeSync(fd)
    stats.files++
    stats.sparse++
    stats.dataBytes += 16 * 256 * KiB
    stats.sparseBytes += 64 * MiB
  }
  // 500 hard links and 1 000 symbolic links to text files.
  for (let i = 0; i < count(500); i++) {
    linkSync(join(root, files[int(0, files.length - 1)] ?? ''), join(root, pickDir(), `hl${i}`))
    stats.hardlinks++
  }
  for (let i = 0; i < count(1000); i++) {
    symlinkSync(`/${files[int(0, files.length - 1)] ?? ''}`, join(root, pickDir(), `ln${i}`))
    stats.symlinks++
  }
  // Owners: every home directory's files belong to a user; xattrs and ACLs on a few files.
  for (const f of files.filter((f) => f.startsWith('home/'))) chownSync(join(root, f), 1000, 1000)
  const some = files.filter((_, i) => i % 500 === 0).map((f) => join(root, f))
  await run('setfattr', ['-n', 'user.bench', '-v', 'x', ...some])
  await run('setfacl', ['-m', 'u:1234:r', ...some])
  return stats
}
