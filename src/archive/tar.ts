/**
 * Container archives in GNU tar format, created and restored like Proxmox VE does for external
 * backup providers (pve-container `VZDump/LXC.pm`, `LXC/Create.pm`). Everything streams through
 * `pipeline()`; an archive is never held in memory.
 */
import { rm, stat } from 'node:fs/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import type { TokenBucket } from '../io/throttle.ts'
import type { ToolNamespace } from '../io/userns.ts'
import { writeAtomically } from '../io/fs.ts'
import { tarExcludeArgs } from './excludes.ts'
import { stderrLines } from './internal.ts'
import { MembersSink } from './tar-digest.ts'
import type { MembersResult } from './tar-digest.ts'
import { writeTar } from './tar-write.ts'
import type { TarCompression } from './tar-write.ts'
import type { FrameIndex } from './zstd-frames.ts'

/**
 * Proxmox's `COMMON_TAR_FLAGS`: stay on one file system, keep permissions, sparse files, numeric
 * owners, POSIX ACLs and the `user.*` and `security.capability` xattrs (no `trusted.*`, no
 * `security.selinux`), and do not warn about sockets or failed xattr writes.
 */
export const COMMON_TAR_FLAGS: readonly string[] = [
  '--one-file-system',
  '-p',
  '--sparse',
  '--numeric-owner',
  '--acls',
  '--xattrs',
  '--xattrs-include=user.*',
  '--xattrs-include=security.capability',
  '--warning=no-file-ignored',
  '--warning=no-xattr-write',
]

/**
 * {@link COMMON_TAR_FLAGS} without `--one-file-system`: used when restoring and when copying a
 * directory, so that a provider may mount sub-volumes inside a restore directory (pve-container
 * commit `28d46ab`).
 */
export const RESTORE_TAR_FLAGS: readonly string[] = COMMON_TAR_FLAGS.filter(
  (f) => f !== '--one-file-system',
)

/**
 * Arguments that make `tar x` skip everything below `./dev/`, as pve-container does. Unlike
 * pve-container we do not pass `--skip-old-files`: our targets are empty, and with it tar would
 * not restore the mode, owner and mtime of the root directory (`./`).
 */
export const RESTORE_EXTRACT_ARGS: readonly string[] = ['--anchored', '--exclude', './dev/*']

/** Options of {@link createTarArchive}. */
export interface CreateTarOptions {
  /** The directory the archive is taken from (`tar --directory`). */
  directory: string
  /**
   * Names to archive, relative to `directory` (Proxmox passes `.` or `./<mountpoint>` per
   * volume). Must be relative and must not contain `..`. Default `['.']`.
   */
  sources?: readonly string[] | undefined
  /** vzdump exclude patterns, see `excludes.ts`. `lost+found` is always excluded. */
  excludes?: readonly string[] | undefined
  /** Final archive path; written as `output + '.partial'` first. Must not exist. */
  output: string
  /**
   * Shared bandwidth limit, applied to the **uncompressed** tar stream (as vzdump places
   * `cstream` before the compressor). Default: unlimited.
   */
  bandwidth?: TokenBucket | undefined
  /**
   * Compress the tar stream (name the output `*.tar.zst`, `*.tar.gz`, `*.tar.lzo`): zstd as
   * seekable frames (zstd-frames.ts, the result's `frames`), gzip or lzop as one stream.
   * Default none.
   */
  compress?: TarCompression | undefined
  /**
   * Path of the members file to write beside the archive: one JSON line per member
   * (`TarMember`, see `tar-members.ts`), parsed from the uncompressed tar stream in the same
   * pass. Written like `output` (as `members + '.partial'`, fsynced, renamed); must not exist.
   * Default: none.
   */
  members?: string | undefined
  /** Kills tar (and zstd) and removes the partial file. */
  signal?: AbortSignal | undefined
  /**
   * Gets the bytes of the uncompressed tar stream written so far (past the bandwidth limit),
   * as they grow: the bytes of the tree read, headers included.
   */
  onBytes?: ((tarBytes: number) => void) | undefined
  /** Called once tar was started (what should not compete with the set-up before it waits). */
  onStarted?: (() => void) | undefined
  /**
   * Run tar in this user namespace, as an unprivileged container's mapped root (pve-container
   * `VZDump/LXC.pm` runs `backup_container` so): the archive holds the container's view of the
   * owners, and a file the mapped root cannot read fails the archive. Default: as ourselves.
   */
  namespace?: ToolNamespace | undefined
}

/** Result of {@link createTarArchive}. */
export interface CreateTarResult {
  /** Size of the archive file in bytes (compressed size with `compress`). */
  bytes: number
  /** Size of the uncompressed tar stream in bytes. */
  tarBytes: number
  /** SHA-256 (hex) of the archive file's bytes (with `compress`, of the compressed file). */
  digest: string
  /** The members file's SHA-256 and its number of members, when `members` was given. */
  members?: MembersResult | undefined
  /** zstd: the frame index of the archive. */
  frames?: FrameIndex | undefined
  /**
   * tar's diagnostics, including "file changed as we read it" (tar exit code 1, which is a
   * warning, not a failure: the archive is complete but that file may be inconsistent) and
   * warnings about exclude patterns.
   */
  warnings: string[]
}

/** Validate source names: relative, no `..` component, no NUL/newline. */
const checkSources = (sources: readonly string[]): void => {
  if (sources.length === 0) throw new BackupError('USAGE', 'no sources to archive')
  for (const s of sources) {
    const bad =
      s === '' ||
      s.startsWith('/') ||
      /[\0\n]/.test(s) ||
      s.split('/').some((part) => part === '..')
    if (bad) {
      throw new BackupError('USAGE', `invalid archive source ${JSON.stringify(s)}`, {
        details: { source: s },
      })
    }
  }
}

/**
 * Archive `directory` into the tar file `output`, as Proxmox's `backup_container` tar mode does:
 * `tar cpf - --totals COMMON_TAR_FLAGS --directory=DIR <excludes> -- <sources>` into
 * `output + '.partial'` (tar writes the file itself; with a bandwidth limit or a compressor,
 * Node passes the stream on: tar-write.ts), which is fsynced and renamed to `output` on success.
 * Called once per container volume set during a backup. In the same pass Node hashes the bytes
 * of the file (the result's `digest`) and, with `members`, parses the uncompressed tar stream
 * into the members file (`tar-digest.ts`).
 *
 * @throws BackupError `USAGE` for invalid sources/excludes or an existing output or members
 *   file, `ARCHIVE_INVALID` when the members parser cannot read tar's output,
 *   `ARCHIVE_TOOL_FAILED` with tar's stderr when tar fails (exit code ≥ 2, e.g. a missing
 *   directory), `ABORTED`, `NO_SPACE`, `IO`. No output or partial file is left behind.
 */
export const createTarArchive = async (opts: CreateTarOptions): Promise<CreateTarResult> => {
  throwIfAborted(opts.signal)
  const sources = opts.sources ?? ['.']
  checkSources(sources)
  const excl = tarExcludeArgs(opts.excludes ?? [])
  const args = [
    'cpf',
    '-',
    '--totals',
    ...COMMON_TAR_FLAGS,
    // In a namespace tar starts in the directory (chdir'ed as root: nsenter keeps the working
    // directory), so the mapped root needs no search permission on the path to it.
    `--directory=${opts.namespace === undefined ? opts.directory : '.'}`,
    ...excl.args,
    '--',
    ...sources,
  ]
  const write = async (partial: string, members: MembersSink | undefined) => {
    const r = await writeTar({
      args,
      partial,
      members,
      bandwidth: opts.bandwidth,
      compress: opts.compress,
      signal: opts.signal,
      onBytes: opts.onBytes,
      onStarted: opts.onStarted,
      namespace: opts.namespace,
      cwd: opts.namespace === undefined ? undefined : opts.directory,
    })
    return { ...r, members: await members?.finish() }
  }
  const membersPath = opts.members
  let membersNamed = false
  const { exitCode, stderr, tarBytes, members, digest, frames } = await writeAtomically(
    opts.output,
    async (partial) => {
      if (membersPath === undefined) return await write(partial, undefined)
      const r = await writeAtomically(membersPath, async (m) => {
        await using sink = await MembersSink.open(m)
        return await write(partial, sink)
      })
      membersNamed = true
      return r
    },
  ).catch(async (e: unknown) => {
    // The members file got its name, then the archive failed to get its own.
    if (membersNamed && membersPath !== undefined) await rm(membersPath, { force: true })
    throw e
  })
  const warnings = [...excl.warnings, ...stderrLines(stderr)]
  if (exitCode === 1) {
    warnings.push('tar exit code 1: some files changed while they were archived')
  }
  const { size } = await stat(opts.output)
  return {
    bytes: size,
    tarBytes,
    digest,
    ...(members ? { members } : {}),
    ...(frames ? { frames } : {}),
    warnings,
  }
}
