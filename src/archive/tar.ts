/**
 * Container archives in GNU tar format, created and restored like Proxmox VE does for external
 * backup providers (pve-container `VZDump/LXC.pm`, `LXC/Create.pm`). Everything streams through
 * `pipeline()`; an archive is never held in memory.
 */
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm, stat } from 'node:fs/promises'
import { Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { writeAtomically } from '../io/fs.ts'
import { tarExcludeArgs } from './excludes.ts'
import { Group, assertEmptyDirectory, stderrLines, stdioOf, toolStage } from './internal.ts'
import { archiveStages, checkTarArchive, decompressorFor } from './tar-check.ts'
import { hashStage, membersStage } from './tar-digest.ts'
import type { MembersResult } from './tar-digest.ts'

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
  /** `'zstd'` pipes the stream through `zstd -T0 -3`; name the output `*.tar.zst`. Default none. */
  compress?: 'zstd' | undefined
  /**
   * Path of the members file to write beside the archive: one JSON line per member
   * (`TarMember`, see `tar-members.ts`), parsed from the uncompressed tar stream in the same
   * pass. Written like `output` (as `members + '.partial'`, fsynced, renamed); must not exist.
   * Default: none.
   */
  members?: string | undefined
  /** Kills tar (and zstd) and removes the partial file. */
  signal?: AbortSignal | undefined
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

/** A pass-through stream that counts bytes. */
const counter = (onBytes: (n: number) => void): Transform =>
  new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      onBytes(chunk.length)
      cb(null, chunk)
    },
  })

/**
 * Archive `directory` into the tar file `output`, as Proxmox's `backup_container` tar mode does:
 * `tar cpf - --totals COMMON_TAR_FLAGS --directory=DIR <excludes> -- <sources>`, through the
 * bandwidth limit and optionally `zstd -T0 -3`, into `output + '.partial'`, which is fsynced and
 * renamed to `output` on success. Called once per container volume set during a backup.
 * In the same pass the relay hashes the bytes written to the file (the result's `digest`) and,
 * with `members`, parses the uncompressed tar stream into the members file (`tar-digest.ts`).
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
    `--directory=${opts.directory}`,
    ...excl.args,
    '--',
    ...sources,
  ]
  let tarBytes = 0
  const hash = createHash('sha256')
  const relay = async (partial: string, membersPartial: string | undefined) => {
    // Nothing is awaited between tar's start and its pipeline: when a child exits, Node drains
    // any of its stdio streams nobody reads yet and drops their data (lib/internal/
    // child_process.js, `flushStdio`), so a fast tar would leave an empty archive.
    const parsed = membersPartial === undefined ? undefined : await membersStage(membersPartial)
    const group = new Group(opts.signal)
    const tar = spawnTool('tar', args, {
      stdin: 'ignore',
      okExitCodes: [0, 1],
      signal: group.signal,
    })
    const zstd =
      opts.compress === 'zstd'
        ? spawnTool('zstd', ['-T0', '-3', '-q', '-c', '-'], { signal: group.signal })
        : undefined
    group.addTool(tar)
    if (zstd) group.addTool(zstd)
    try {
      const stages: NodeJS.ReadWriteStream[] = [counter((n) => (tarBytes += n))]
      if (parsed) stages.push(parsed.stage)
      if (opts.bandwidth?.limited === true) stages.push(opts.bandwidth.transform(group.signal))
      if (zstd) stages.push(toolStage(zstd, group))
      stages.push(hashStage(hash))
      const out = createWriteStream(partial, { flags: 'w', mode: 0o600 })
      group.add(pipeline([stdioOf(tar.stdout, group), ...stages, out], { signal: group.signal }))
      await group.settle()
    } finally {
      await parsed?.close()
    }
    return { exitCode: await tar.done, stderr: tar.stderr(), members: parsed?.result() }
  }
  const membersPath = opts.members
  let membersNamed = false
  const { exitCode, stderr, members } = await writeAtomically(opts.output, async (partial) => {
    if (membersPath === undefined) return await relay(partial, undefined)
    const r = await writeAtomically(membersPath, (m) => relay(partial, m))
    membersNamed = true
    return r
  }).catch(async (e: unknown) => {
    // The members file got its name, then the archive failed to get its own.
    if (membersNamed && membersPath !== undefined) await rm(membersPath, { force: true })
    throw e
  })
  const warnings = [...excl.warnings, ...stderrLines(stderr)]
  if (exitCode === 1) {
    warnings.push('tar exit code 1: some files changed while they were archived')
  }
  const { size } = await stat(opts.output)
  const digest = hash.digest('hex')
  return { bytes: size, tarBytes, digest, ...(members ? { members } : {}), warnings }
}

/** Options of {@link extractTarArchive}. */
export interface ExtractTarOptions {
  /** The archive file: `*.tar`, `*.tar.zst` (also `.tar.gz|bz2|xz|lzo`), decompressed by name. */
  archive: string
  /** Existing, empty directory to restore into (the container's root). */
  target: string
  /** Shared bandwidth limit, applied to the archive file as read. Default: unlimited. */
  bandwidth?: TokenBucket | undefined
  /** Kills tar. The target may then hold a partial restore; the caller discards it. */
  signal?: AbortSignal | undefined
}

/** Result of {@link extractTarArchive}. */
export interface ExtractTarResult {
  /** Members listed by {@link checkTarArchive}. */
  members: number
  /** tar's diagnostics (e.g. "Removing leading `/' from member names"). */
  warnings: string[]
}

/**
 * Restore a container archive into `target`, as pve-container's `restore_tar_archive` does for
 * untrusted (external) archives: {@link checkTarArchive} first, then
 * `tar xpf - --totals RESTORE_TAR_FLAGS -C TARGET --anchored --exclude ./dev/*`, fed from the
 * file through the bandwidth limit and the decompressor (by name, see `decompressorFor`).
 *
 * tar itself strips leading `/` and refuses members containing `..`, and defers symlinks, so an
 * archive cannot write outside `target`. Unlike Proxmox, extraction is **not** run in the
 * container's user namespace: as root, tar restores the archived owners, setuid bits and device
 * nodes (except below `./dev/`) as they are.
 *
 * @throws BackupError `USAGE` (archive not a regular file or badly named; target missing, not a
 *   directory or not empty: then nothing is touched), `ARCHIVE_INVALID` (check failed),
 *   `ARCHIVE_TOOL_FAILED` (tar failed, e.g. on a `..` member), `ABORTED`.
 */
export const extractTarArchive = async (opts: ExtractTarOptions): Promise<ExtractTarResult> => {
  throwIfAborted(opts.signal)
  decompressorFor(opts.archive) // USAGE for a name that is no tar archive, before anything runs
  const st = await stat(opts.archive).catch((e: unknown) => {
    throw new BackupError('USAGE', `archive ${opts.archive} is not accessible`, { cause: e })
  })
  if (!st.isFile()) throw new BackupError('USAGE', `archive ${opts.archive} is not a regular file`)
  await assertEmptyDirectory(opts.target, 'restore target')
  const check = await checkTarArchive(opts.archive, { signal: opts.signal })

  const group = new Group(opts.signal)
  const args = ['xpf', '-', '--totals', ...RESTORE_TAR_FLAGS, '-C', opts.target]
  const tar = spawnTool('tar', [...args, ...RESTORE_EXTRACT_ARGS], {
    stdout: 'ignore',
    signal: group.signal,
  })
  group.addTool(tar)
  const input = archiveStages(opts.archive, group, { bandwidth: opts.bandwidth })
  group.add(pipeline([...input, stdioOf(tar.stdin, group)], { signal: group.signal }))
  await group.settle('IO', tar)
  return { members: check.members, warnings: [...check.warnings, ...stderrLines(tar.stderr())] }
}
