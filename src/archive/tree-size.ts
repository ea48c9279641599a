/**
 * A cheap estimate of the uncompressed tar stream a container backup will write: a pre-walk
 * of the tree with one `lstat` per entry (what `du` does), no file read. It is the total a
 * progress display counts the archive's bytes against; the archive's real size replaces it at
 * the end.
 *
 * Per entry: a 512-byte header and a pax extended header of two blocks (`--acls` and
 * `--xattrs` make GNU tar write the POSIX format, which records each entry's atime, ctime and
 * mtime there), plus a regular file's data rounded up to 512 bytes, counted once per inode
 * (tar stores further hard links as link entries) and at most its allocated
 * bytes (`--sparse` stores a sparse file's data only); the stream ends with two zero blocks,
 * padded to tar's 10240-byte records (GNU tar manual, "Blocking"). Like tar with
 * `--one-file-system`, the walk stays on the root's file system. `lost+found` and exclude
 * patterns without wildcards are left out (by name anywhere, or anchored with a leading `/`);
 * patterns with wildcards are not applied, nor are the longer pax headers of long names, ACLs
 * and xattrs counted, so this may be somewhat off either way.
 */
import type { Stats } from 'node:fs'
import { lstatSync, readdirSync } from 'node:fs'
import { setImmediate } from 'node:timers/promises'
import { join } from 'node:path'
import { throwIfAborted } from '../errors.ts'
import { LOST_AND_FOUND, parseExcludes } from './excludes.ts'

const BLOCK = 512
/** The entry's header and its pax extended header (header block and one data block). */
const ENTRY = 3 * BLOCK
const RECORD = 20 * BLOCK
/** Longest stretch the walk keeps the event loop (ms). */
const SLICE_MS = 2

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to

/** Options of {@link estimateTarBytes}. */
export interface TreeSizeOptions {
  /** The directory archived (tar's `--directory`). */
  directory: string
  /** Names in it to archive (default `['.']`). */
  sources?: readonly string[] | undefined
  /** vzdump exclude patterns (excludes.ts). */
  excludes?: readonly string[] | undefined
  signal?: AbortSignal | undefined
  /** Gets every entry counted (its path relative to `directory`, `''` for the root) and stat. */
  onEntry?: ((rel: string, st: Stats) => void) | undefined
}

/**
 * Estimate the bytes of `tar c` over the tree (see the module comment). Entries that vanish or
 * cannot be read while walking are skipped: tar will report them, this only estimates.
 */
export const estimateTarBytes = async (o: TreeSizeOptions): Promise<number> => {
  throwIfAborted(o.signal)
  const rules = parseExcludes(o.excludes ?? [])
  const literal = (p: string): boolean => !/[*?[\\]/.test(p) && !p.endsWith('/')
  const skipNames = new Set([
    LOST_AND_FOUND,
    ...rules.unanchored.filter((p) => literal(p) && !p.includes('/')),
  ])
  const anchored = new Set(rules.anchored.filter(literal).map((p) => p.replace(/\/+$/, '')))
  const seen = new Set<string>()
  let bytes = 0
  let dev: number | undefined
  /** Count one entry; returns whether it is a directory to descend into. */
  const count = (rel: string, st: Stats | undefined): boolean => {
    if (st === undefined) return false
    o.onEntry?.(rel, st)
    dev ??= st.dev
    bytes += ENTRY
    if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`
      if (st.nlink > 1 && seen.has(key)) return false
      if (st.nlink > 1) seen.add(key)
      bytes += roundUp(Math.min(st.size, st.blocks * BLOCK), BLOCK)
      return false
    }
    return st.isDirectory() && st.dev === dev
  }
  const stat = (rel: string): Stats | undefined => {
    try {
      return lstatSync(join(o.directory, rel), { throwIfNoEntry: false })
    } catch {
      return undefined
    }
  }
  const list = (rel: string): string[] => {
    try {
      return readdirSync(join(o.directory, rel))
    } catch {
      return []
    }
  }
  // Depth first with an explicit stack (no recursion limit). The walk makes synchronous calls
  // (a few µs each; through fs.promises each waits a thread-pool round trip, ten times the
  // time and CPU) and yields to the event loop every SLICE_MS, so that what runs beside it
  // (the archiver's follower) is held up for at most that long.
  const dirs: string[] = []
  for (const s of o.sources ?? ['.']) {
    const rel = s.replace(/^\.\/?/, '')
    if (count(rel, stat(rel))) dirs.push(rel)
  }
  let slice = performance.now()
  while (dirs.length > 0) {
    if (performance.now() - slice > SLICE_MS) {
      await setImmediate()
      throwIfAborted(o.signal)
      slice = performance.now()
    }
    const rel = dirs.pop() ?? ''
    for (const name of list(rel)) {
      const child = rel === '' ? name : `${rel}/${name}`
      if (skipNames.has(name) || anchored.has(child)) continue
      if (count(child, stat(child))) dirs.push(child)
    }
  }
  return roundUp(bytes + 2 * BLOCK, RECORD)
}
