/**
 * The paths tar's excludes leave out of a tree, found by walking it with tar's matcher
 * (exclude-match.ts), so that a squashfs image can leave out the same ones (excludes.ts
 * {@link squashfsExcludeArgs}).
 */
import type { Dirent } from 'node:fs'
import { readdirSync } from 'node:fs'
import { setImmediate } from 'node:timers/promises'
import { throwIfAborted } from '../errors.ts'
import { localeIsUtf8, tarExcluder } from './exclude-match.ts'
import { tarPatterns } from './excludes.ts'

/** Longest stretch the walk keeps the event loop (ms). */
const SLICE_MS = 10

/** Options of {@link findExcluded}. */
export interface FindExcludedOptions {
  /** tar's locale is UTF-8. Default: {@link localeIsUtf8} of this process's environment. */
  utf8?: boolean | undefined
  signal?: AbortSignal | undefined
}

/**
 * The topmost paths of `directory` (relative, as byte strings: one char per byte) that
 * `tar c --directory=DIR <tarExcludeArgs(patterns)> .` leaves out: an excluded directory is
 * listed, its contents are not. If tar would exclude `.` itself (e.g. the pattern `*`; tar then
 * writes an empty archive), every entry of the root is listed. The walk goes into every
 * directory, on any file system (as mksquashfs does); symbolic links are not followed.
 * Directories that cannot be read are skipped: the archiver reports them. Files created after
 * the walk are not checked.
 *
 * @throws BackupError `USAGE` for invalid patterns, `ABORTED`.
 */
export const findExcluded = async (
  directory: string,
  patterns: readonly string[],
  o: FindExcludedOptions = {},
): Promise<string[]> => {
  throwIfAborted(o.signal)
  const excluded = tarExcluder(tarPatterns(patterns), {
    utf8: o.utf8 ?? localeIsUtf8(process.env),
  })
  const root = Buffer.from(directory, 'utf8')
  const list = (rel: string): Dirent<Buffer>[] => {
    const path = rel === '' ? root : Buffer.concat([root, Buffer.from(`/${rel}`, 'latin1')])
    try {
      return readdirSync(path, { withFileTypes: true, encoding: 'buffer' })
    } catch {
      return []
    }
  }
  const out: string[] = []
  const rootExcluded = excluded('.')
  const dirs = ['']
  let slice = performance.now()
  while (dirs.length > 0) {
    if (performance.now() - slice > SLICE_MS) {
      await setImmediate()
      throwIfAborted(o.signal)
      slice = performance.now()
    }
    const rel = dirs.pop() ?? ''
    for (const d of list(rel)) {
      const name = d.name.toString('latin1')
      const child = rel === '' ? name : `${rel}/${name}`
      if (rootExcluded || excluded(`./${child}`)) out.push(child)
      else if (d.isDirectory()) dirs.push(child)
    }
  }
  return out
}
