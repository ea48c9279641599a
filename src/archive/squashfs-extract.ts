/**
 * Restoring a squashfs image with `unsquashfs` itself, which writes the files straight into the
 * target (sparse files stay sparse: unsquashfs seeks over the image's sparse blocks) instead
 * of a `tar c | tar x` of the squashfuse mount relayed through Node. The image's listing is
 * checked first (squashfs-check.ts); only the capabilities come from the mount.
 */
import { lstat, lutimes, unlink } from 'node:fs/promises'
import { resolve } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import { extractDirectory, reapplyCapabilities } from './directory.ts'
import {
  Group,
  assertDirectory,
  assertEmptyDirectory,
  followProcIo,
  stderrLines,
  stdioOf,
} from './internal.ts'
import { MAX_LISTING_LINE, SquashfsListingCheck } from './squashfs-check.ts'

/**
 * unsquashfs exclude patterns (with `-excludes`, relative to the root, `fnmatch` per
 * component with `FNM_PERIOD`, `unsquashfs.c`): everything below `./dev/`, dot names included,
 * as the tar path's `--anchored --exclude ./dev/*` (tar.ts, `RESTORE_EXTRACT_ARGS`).
 */
export const UNSQUASHFS_EXCLUDES: readonly string[] = ['dev/*', 'dev/.*']

/** Options of {@link extractSquashfs}. */
export interface ExtractSquashfsOptions {
  /** The image file (a pinned `/proc/<pid>/fd/<n>` path works). */
  image: string
  /** The image mounted with squashfuse (`SquashfsMount.path`): capabilities are read there. */
  mount: string
  /** Existing, empty directory to restore into. */
  target: string
  /** Kills unsquashfs. The target may then hold a partial restore; the caller discards it. */
  signal?: AbortSignal | undefined
  /**
   * Bytes written so far of the regular files' total (the listing's sizes): unsquashfs'
   * `wchar` (proc(5)), about twice a second, and the total once it is done.
   */
  onProgress?: ((done: number, total: number) => void) | undefined
}

/** Result of {@link extractSquashfs}. */
export interface ExtractSquashfsResult {
  /** Members listed in the image (its root included). */
  members: number
  /** Diagnostics, and a note when the listing could not be checked (see below). */
  warnings: string[]
}

/**
 * Remove the sockets unsquashfs created (`rels`: listed paths, latin1), as tar never restores
 * one, and give each parent directory back the times unsquashfs set. Members below `dev/` were
 * not extracted. A listed path that is not a socket in the target is left alone; unsquashfs
 * refused any path through a symlink (see {@link extractSquashfs}).
 */
const dropSockets = async (target: string, rels: readonly string[]): Promise<void> => {
  const root = resolve(target)
  for (const rel of rels) {
    if (rel.startsWith('dev/')) continue
    const path = Buffer.concat([Buffer.from(`${root}/`), Buffer.from(rel, 'latin1')])
    const slash = path.lastIndexOf('/')
    const parent = path.subarray(0, slash)
    const st = await lstat(path).catch(() => undefined)
    if (st?.isSocket() !== true) continue
    const p = await lstat(parent)
    await unlink(path)
    await lutimes(parent, p.atime, p.mtime)
  }
}

/** List `image` with `unsquashfs -lln`, each line through the check. */
const checkListing = async (
  image: string,
  signal: AbortSignal | undefined,
): Promise<ReturnType<SquashfsListingCheck['end']>> => {
  const group = new Group(signal)
  const lister = spawnTool('unsquashfs', ['-lln', '-UTC', resolve(image)], {
    stdin: 'ignore',
    errorCode: 'ARCHIVE_INVALID',
    signal: group.signal,
  })
  group.addTool(lister)
  const check = new SquashfsListingCheck(image)
  const stdout = stdioOf(lister.stdout, group)
  stdout.setEncoding('latin1') // names are bytes; latin1 keeps each one and their order
  const consume = async (source: AsyncIterable<string>): Promise<void> => {
    let carry = ''
    for await (const chunk of source) {
      const parts = (carry + chunk).split('\n')
      // An over-long line is cut one past the limit, so the check still sees it as too long.
      carry = (parts.pop() ?? '').slice(0, MAX_LISTING_LINE + 1)
      for (const line of parts) check.line(line)
    }
    if (carry !== '') check.line(carry)
  }
  group.add(pipeline(stdout, consume, { signal: group.signal }))
  await group.settle('ARCHIVE_INVALID', lister)
  return check.end()
}

/**
 * Restore the squashfs image `image` into `target`: check its `unsquashfs -lln` listing (no
 * absolute or `..` name, no member through a symlink or a duplicate name:
 * `SquashfsListingCheck`), then `unsquashfs -user-xattrs -excludes -quiet -no-progress -dest
 * TARGET IMAGE 'dev/*' 'dev/.*'`, then copy the file capabilities from `mount` (as
 * {@link extractDirectory} does). This keeps what the tar copy of the mount keeps (tar.ts,
 * `RESTORE_TAR_FLAGS`: `user.*` and `security.capability`; no `trusted.*`, no other
 * `security.*`; squashfs stores no ACLs) and skips `./dev/*` the same way; sparse files stay
 * sparse; sockets are removed again, as tar never restores one. squashfs-tools 4.5.1 (Debian 12) has no `-xattrs-include`, hence `-user-xattrs` and
 * the capabilities from the mount. As root, unsquashfs restores the archived owners, setuid
 * bits and device nodes (except below `./dev/`), as tar does.
 *
 * The image is read twice (listing, extraction); unsquashfs applies the same name rules at
 * extraction (`check_name()`, `check_directory()`), so an image changed in between cannot
 * write outside `target` either. When the listing cannot be read unambiguously (a newline in
 * a name), the tree is copied from `mount` with {@link extractDirectory} instead, and a
 * warning says so.
 *
 * @throws BackupError `USAGE` (mount not a directory; target missing, not a directory or not
 *   empty: then nothing is touched), `ARCHIVE_INVALID` (not a squashfs image, a member refused:
 *   nothing was extracted), `ARCHIVE_TOOL_FAILED` (unsquashfs failed, including its non-fatal
 *   errors such as a file it could not create), `ABORTED`.
 */
export const extractSquashfs = async (
  opts: ExtractSquashfsOptions,
): Promise<ExtractSquashfsResult> => {
  throwIfAborted(opts.signal)
  await assertDirectory(opts.mount, 'mount')
  await assertEmptyDirectory(opts.target, 'restore target')
  const listing = await checkListing(opts.image, opts.signal)
  if (listing.unverifiable !== undefined) {
    const r = await extractDirectory({
      source: opts.mount,
      target: opts.target,
      signal: opts.signal,
      onProgress: opts.onProgress,
    })
    const note = `squashfs listing line ${JSON.stringify(listing.unverifiable)} is ambiguous: copied the tree from the mount instead`
    return { members: listing.members, warnings: [note, ...r.warnings] }
  }
  // unsquashfs queues 256 MiB of data blocks and as much of fragments by default (unsquashfs(1),
  // "-da", "-fr"): a peak RSS near 380 MiB. 32 MiB each bound it near 75 MiB; the extraction
  // waits on the file system's writes, not on these queues, so it takes no longer (bench/).
  const args = [
    '-da',
    '32',
    '-fr',
    '32',
    '-user-xattrs',
    '-excludes',
    '-quiet',
    '-no-progress',
    '-dest',
    resolve(opts.target),
  ]
  const tool = spawnTool('unsquashfs', [...args, resolve(opts.image), ...UNSQUASHFS_EXCLUDES], {
    stdin: 'ignore',
    stdout: 'ignore',
    signal: opts.signal,
    dieWithParent: true, // it writes into the target: it must not outlive a killed restore
  })
  const onProgress = opts.onProgress
  if (onProgress === undefined) await tool.done
  else {
    const total = listing.bytes
    await followProcIo(tool.child.pid, tool.done, 'wchar', (n) => {
      onProgress(Math.min(n, total), total)
    })
    onProgress(total, total)
  }
  const warnings = stderrLines(tool.stderr())
  await dropSockets(opts.target, listing.sockets)
  warnings.push(...(await reapplyCapabilities(opts.mount, opts.target, opts.signal)))
  return { members: listing.members, warnings }
}
