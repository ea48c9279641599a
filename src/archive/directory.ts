/**
 * The 'directory' restore mechanism: copy a tree (usually a mounted squashfs image) into the new
 * root with a tar pipe, as pve-container does.
 */
import { realpath } from 'node:fs/promises'
import { Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { ToolNamespace } from '../io/userns.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { Group, assertDirectory, assertEmptyDirectory, stderrLines, stdioOf } from './internal.ts'
import { readMounts } from './mountinfo.ts'
import { RESTORE_EXTRACT_ARGS, RESTORE_TAR_FLAGS } from './tar.ts'
import { estimateTarBytes } from './tree-size.ts'

/** Options of {@link extractDirectory}. */
export interface ExtractDirectoryOptions {
  /** The directory to copy (typically a `SquashfsMount.path`). */
  source: string
  /** Existing, empty directory to restore into. */
  target: string
  /** Shared bandwidth limit on the tar stream. Default: unlimited. */
  bandwidth?: TokenBucket | undefined
  /** Kills the tools. The target may then hold a partial copy; the caller discards it. */
  signal?: AbortSignal | undefined
  /**
   * Gets the bytes of the tar stream passed on and an estimate of its size (a pre-walk of
   * `source`, tree-size.ts), as they grow.
   */
  onProgress?: ((done: number, total: number) => void) | undefined
  /**
   * Run the extracting tar in this user namespace (the reading one stays root, as
   * pve-container's directory restore pipes `tar c` into a `tar x` under `userns_command`).
   */
  namespace?: ToolNamespace | undefined
}

/** The file system type of the mount that holds `path` (longest mount point prefix). */
const fsTypeOf = async (path: string): Promise<string | undefined> => {
  const real = await realpath(path)
  let best: { mountPoint: string; fsType: string } | undefined
  for (const m of await readMounts()) {
    const inside =
      m.mountPoint === '/' || real === m.mountPoint || real.startsWith(`${m.mountPoint}/`)
    if (inside && (best === undefined || m.mountPoint.length >= best.mountPoint.length)) best = m
  }
  return best?.fsType
}

/**
 * Copy the file capabilities (`security.capability`) of the tree below `source` onto the same
 * names below `target`. squashfuse 0.1.104 lists `security.capability` as `trusted.capability`, so tar's
 * `--xattrs-include=security.capability` misses file capabilities (ping, …). Getting the xattr by
 * its real name works, so read `security.capability` of every entry with getfattr and restore
 * the dump with setfattr. Harmless where tar already copied them (fixed squashfuse versions).
 * Also used after `unsquashfs -user-xattrs` (squashfs-extract.ts). Returns setfattr's complaints.
 */
export const reapplyCapabilities = async (
  source: string,
  target: string,
  signal: AbortSignal | undefined,
): Promise<string[]> => {
  const group = new Group(signal)
  const dumpArgs = ['-R', '-P', '-h', '-n', 'security.capability', '-e', 'hex', '.']
  // getfattr exits 1 because most entries have no capability.
  const opts = { okExitCodes: [0, 1], signal: group.signal } as const
  const dump = spawnTool('getfattr', dumpArgs, { ...opts, cwd: source, stdin: 'ignore' })
  const restore = spawnTool('setfattr', ['--restore=-'], { ...opts, cwd: target, stdout: 'ignore' })
  group.addTool(dump)
  group.addTool(restore)
  const streams = [stdioOf(dump.stdout, group), stdioOf(restore.stdin, group)]
  group.add(pipeline(streams, { signal: group.signal }))
  await group.settle('IO', restore)
  return stderrLines(restore.stderr()).map((l) => `restoring file capabilities: ${l}`)
}

/**
 * Copy a directory tree into `target` with a tar pipe, as pve-container restores the
 * 'directory' mechanism: `tar cpf - RESTORE_TAR_FLAGS --directory=SOURCE .` |
 * `tar xpf - --totals RESTORE_TAR_FLAGS -C TARGET --anchored --exclude ./dev/*`.
 * `--one-file-system` is left out so that providers may mount sub-volumes inside `source`.
 * When `source` is on a squashfuse mount, file capabilities are then re-applied (see
 * `reapplyCapabilities`). Copies of sparse files from squashfuse are fully allocated.
 * Returns tar's diagnostics as warnings (exit code 1 of the reading tar is a warning).
 *
 * @throws BackupError `USAGE` (source not a directory; target missing, not a directory or not
 *   empty: then nothing is touched), `ARCHIVE_TOOL_FAILED`, `ABORTED`.
 */
export const extractDirectory = async (
  opts: ExtractDirectoryOptions,
): Promise<{ warnings: string[] }> => {
  throwIfAborted(opts.signal)
  await assertDirectory(opts.source, 'source')
  await assertEmptyDirectory(opts.target, 'restore target')
  const total =
    opts.onProgress === undefined
      ? 0
      : await estimateTarBytes({ directory: opts.source, signal: opts.signal })
  const group = new Group(opts.signal)
  const createArgs = ['cpf', '-', ...RESTORE_TAR_FLAGS, `--directory=${opts.source}`, '.']
  const reader = spawnTool('tar', createArgs, {
    stdin: 'ignore',
    okExitCodes: [0, 1],
    signal: group.signal,
  })
  group.addTool(reader)
  const ns = opts.namespace
  const extractArgs = ['xpf', '-', '--totals', ...RESTORE_TAR_FLAGS, '-C', ns ? '.' : opts.target]
  const writer = spawnTool('tar', [...extractArgs, ...RESTORE_EXTRACT_ARGS], {
    stdout: 'ignore',
    signal: group.signal,
    namespace: ns,
    ...(ns === undefined ? {} : { cwd: opts.target }),
  })
  group.addTool(writer)
  const stages: NodeJS.ReadWriteStream[] = []
  if (opts.bandwidth?.limited === true) stages.push(opts.bandwidth.transform(group.signal))
  const onProgress = opts.onProgress
  if (onProgress !== undefined) {
    let done = 0
    stages.push(
      new Transform({
        transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
          done += chunk.length
          onProgress(done, Math.max(total, done))
          cb(null, chunk)
        },
      }),
    )
  }
  const streams = [stdioOf(reader.stdout, group), ...stages, stdioOf(writer.stdin, group)]
  group.add(pipeline(streams, { signal: group.signal }))
  await group.settle('IO', writer)
  const warnings = [...stderrLines(reader.stderr()), ...stderrLines(writer.stderr())]
  // The reader may have been stopped by a broken pipe after the writer saw the end of archive.
  if ((await reader.done.catch(() => undefined)) === 1)
    warnings.push('tar exit code 1: some files changed while copied')
  if ((await fsTypeOf(opts.source))?.startsWith('fuse.squashfuse') === true) {
    warnings.push(...(await reapplyCapabilities(opts.source, opts.target, opts.signal)))
  }
  return { warnings }
}
