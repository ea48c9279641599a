/**
 * Restoring a tar archive with one read of it: Node reads the archive (or the decompressor's
 * output) once, checks every member's headers with {@link TarMemberParser} as they go by, and
 * passes the checked bytes on to `tar -x` on its stdin. A member's bytes reach tar only after
 * its headers passed the check ({@link MemberGate}), so a member the check refuses is never
 * written; the restore then fails.
 */
import { constants } from 'node:fs'
import { open, stat } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { ToolNamespace } from '../io/userns.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { Group, assertEmptyDirectory, stderrLines, stdioOf, writeTo } from './internal.ts'
import { decompressorFor } from './tar-check.ts'
import { MAX_META, TAR_BLOCK, TarMemberParser } from './tar-members.ts'
import type { TarMember } from './tar-members.ts'
import { RESTORE_EXTRACT_ARGS, RESTORE_TAR_FLAGS } from './tar.ts'

/** Size of the reads of the archive file. */
const READ_BYTES = 1024 * 1024

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
  /**
   * Gets the bytes of the archive file read and its size, as they grow (for an uncompressed
   * archive, the bytes passed to tar).
   */
  onProgress?: ((done: number, total: number) => void) | undefined
  /**
   * Run tar in this user namespace, as an unprivileged container's mapped root (pve-container
   * `LXC/Create.pm` `restore_tar_archive_command` uses `userns_command`): nothing is created
   * owned outside the map. tar starts in `target` (chdir'ed as root), so the mapped root needs
   * no search permission on the path to it.
   */
  namespace?: ToolNamespace | undefined
}

/** Result of {@link extractTarArchive}. */
export interface ExtractTarResult {
  /** Members of the archive. */
  members: number
  /** tar's diagnostics (e.g. "Removing leading `/' from member names"). */
  warnings: string[]
}

/**
 * pve-container's `check_tar_archive` rules, applied to each member before tar sees it: no
 * multi-volume member (type `M`). tar itself strips leading `/`, refuses `..` and defers
 * symlinks on extraction.
 */
const checkMember = (archive: string, m: TarMember, flag: string): void => {
  if (flag === 'M') {
    throw new BackupError('ARCHIVE_INVALID', `found multi-volume member in archive ${archive}`, {
      details: { archive, member: m.path },
    })
  }
}

/**
 * The gate between the archive and tar: {@link MemberGate.pass} parses a chunk and returns the
 * bytes whose members were checked; bytes of a member whose headers are still coming are held
 * back (copied: at most a pax header, bounded by `MAX_META`, and a few blocks).
 */
export class MemberGate {
  readonly #parser: TarMemberParser
  /** Held-back bytes: the stream from {@link MemberGate.#heldFrom} on. */
  #held: Buffer = Buffer.alloc(0)
  #heldFrom = 0
  #members = 0
  #ended = false

  constructor(check: (m: TarMember, flag: string) => void) {
    this.#parser = new TarMemberParser({
      digests: false,
      onHeader: (m, flag) => {
        check(m, flag)
        this.#members++
      },
    })
  }

  /** Members whose headers passed. */
  get members(): number {
    return this.#members
  }

  /** True once the end-of-archive blocks went by: nothing after them is passed on. */
  get ended(): boolean {
    return this.#ended
  }

  /**
   * Parse `chunk` (the next bytes of the stream) and return what may go to tar, in order: the
   * parts are valid until the next call (the last one may be a view of `chunk`).
   */
  pass(chunk: Buffer): Buffer[] {
    const start = this.#parser.offset
    if (this.#ended) return []
    this.#parser.push(chunk)
    this.#ended = this.#parser.ended
    const end = this.#parser.offset
    const checked = this.#parser.checked
    const out: Buffer[] = []
    if (this.#held.length > 0 && checked > this.#heldFrom) {
      out.push(this.#held.subarray(0, Math.min(checked, start) - this.#heldFrom))
    }
    if (checked > start) out.push(chunk.subarray(0, checked - start))
    const keepFrom = Math.max(checked, this.#heldFrom)
    if (keepFrom < end && !this.#ended) {
      const fromHeld = keepFrom < start ? this.#held.subarray(keepFrom - this.#heldFrom) : undefined
      const fromChunk = chunk.subarray(Math.max(keepFrom, start) - start)
      if (end - keepFrom > MAX_META + 64 * TAR_BLOCK) {
        throw new BackupError('INTERNAL', 'the tar member gate holds too much')
      }
      this.#held =
        fromHeld === undefined ? Buffer.from(fromChunk) : Buffer.concat([fromHeld, fromChunk])
    } else {
      this.#held = Buffer.alloc(0)
    }
    this.#heldFrom = keepFrom
    return out
  }

  /** The stream ended: `ARCHIVE_INVALID` unless it was a whole archive with members. */
  end(archive: string): void {
    this.#parser.end()
    if (this.#members === 0) {
      throw new BackupError('ARCHIVE_INVALID', `archive ${archive} has no members`, {
        details: { archive },
      })
    }
  }
}

/** The chunks of the archive file, read into one reused buffer, through the limit. */
async function* fileChunks(
  path: string,
  bucket: TokenBucket | undefined,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  const fh = await open(path, constants.O_RDONLY)
  try {
    const buf = Buffer.allocUnsafe(READ_BYTES)
    for (let pos = 0; ;) {
      throwIfAborted(signal)
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
      if (bytesRead === 0) return
      pos += bytesRead
      await bucket?.take(bytesRead, signal)
      yield buf.subarray(0, bytesRead)
    }
  } finally {
    await fh.close()
  }
}

/**
 * The uncompressed tar stream of `archive`: the file itself, or the decompressor's stdout
 * (the decompressor reads the file as its stdin; through Node only with a bandwidth limit).
 */
const tarStream = async (
  archive: string,
  group: Group,
  bucket: TokenBucket | undefined,
  onRead?: (fileBytes: number) => void,
): Promise<AsyncIterable<Buffer>> => {
  const cmd = decompressorFor(archive)
  if (cmd === undefined) return fileChunks(archive, bucket, group.signal)
  const [prog, ...args] = cmd as [string, ...string[]]
  if (bucket === undefined && onRead === undefined) {
    const fh = await open(archive, constants.O_RDONLY)
    try {
      const tool = spawnTool(prog, args, { stdin: fh.fd, signal: group.signal })
      group.addTool(tool)
      return stdioOf(tool.stdout, group) as Readable & AsyncIterable<Buffer>
    } finally {
      await fh.close() // the child has its own copy
    }
  }
  const tool = spawnTool(prog, args, { signal: group.signal })
  group.addTool(tool)
  // The pipe keeps references to what it was given: copies, as the reads reuse their buffer.
  async function* copies(): AsyncGenerator<Buffer> {
    let read = 0
    for await (const c of fileChunks(archive, bucket, group.signal)) {
      read += c.length
      onRead?.(read)
      yield Buffer.from(c)
    }
  }
  const stdin = stdioOf(tool.stdin, group)
  group.add(pipeline(copies, stdin, { signal: group.signal }))
  return stdioOf(tool.stdout, group) as Readable & AsyncIterable<Buffer>
}

/**
 * Restore a container archive into `target`, as pve-container's `restore_tar_archive` does for
 * untrusted (external) archives: every member checked ({@link checkMember}) on its way into
 * `tar xpf - --totals RESTORE_TAR_FLAGS -C TARGET --anchored --exclude ./dev/*`, fed from the
 * file through the bandwidth limit and the decompressor (by name, see `decompressorFor`). The
 * archive is read once.
 *
 * tar itself strips leading `/` and refuses members containing `..`, and defers symlinks, so an
 * archive cannot write outside `target`. Unlike Proxmox, extraction is **not** run in the
 * container's user namespace: as root, tar restores the archived owners, setuid bits and device
 * nodes (except below `./dev/`) as they are.
 *
 * @throws BackupError `USAGE` (archive not a regular file or badly named; target missing, not a
 *   directory or not empty: then nothing is touched), `ARCHIVE_INVALID` (a member failed its
 *   check, a damaged or empty archive: tar got nothing of that member), `ARCHIVE_TOOL_FAILED`
 *   (tar failed, e.g. on a `..` member), `ABORTED`.
 */
export const extractTarArchive = async (opts: ExtractTarOptions): Promise<ExtractTarResult> => {
  throwIfAborted(opts.signal)
  decompressorFor(opts.archive) // USAGE for a name that is no tar archive, before anything runs
  const st = await stat(opts.archive).catch((e: unknown) => {
    throw new BackupError('USAGE', `archive ${opts.archive} is not accessible`, { cause: e })
  })
  if (!st.isFile()) throw new BackupError('USAGE', `archive ${opts.archive} is not a regular file`)
  await assertEmptyDirectory(opts.target, 'restore target')
  const bucket = opts.bandwidth?.limited === true ? opts.bandwidth : undefined
  const progress = opts.onProgress
  const compressed = decompressorFor(opts.archive) !== undefined
  return await extractTarStream(opts, opts.archive, async (group) => {
    // A compressed archive's progress is that of its file, read through Node to count it.
    const onRead =
      compressed && progress
        ? (n: number) => {
            progress(n, st.size)
          }
        : undefined
    const source = await tarStream(opts.archive, group, bucket, onRead)
    if (progress === undefined || compressed) return source
    return (async function* () {
      let done = 0
      for await (const chunk of source) {
        done += chunk.length
        // Before the yield: the consumer stops at the end-of-archive blocks of the last chunk.
        progress(done, st.size)
        yield chunk
      }
    })()
  })
}

/**
 * `tar x` of the tar stream `source` makes (in `group`) into the existing, empty
 * `opts.target`, every member checked on its way (see {@link extractTarArchive}); `label`
 * names the archive in errors. For `tar-select.ts`, which feeds chosen members.
 */
export const extractTarStream = async (
  opts: Pick<ExtractTarOptions, 'target' | 'signal' | 'namespace'>,
  label: string,
  source: (group: Group) => Promise<AsyncIterable<Buffer>>,
): Promise<ExtractTarResult> => {
  const group = new Group(opts.signal)
  const gate = new MemberGate((m, flag) => {
    checkMember(label, m, flag)
  })
  const ns = opts.namespace
  const args = ['xpf', '-', '--totals', ...RESTORE_TAR_FLAGS, '-C', ns ? '.' : opts.target]
  const tar = spawnTool('tar', [...args, ...RESTORE_EXTRACT_ARGS], {
    stdout: 'ignore',
    signal: group.signal,
    namespace: ns,
    ...(ns === undefined ? {} : { cwd: opts.target }),
  })
  group.addTool(tar)
  const stdin = stdioOf(tar.stdin, group)
  stdin.on('error', () => undefined) // each write's callback gets the error
  const feed = async (): Promise<void> => {
    for await (const chunk of await source(group)) {
      for (const part of gate.pass(chunk)) await writeTo(stdin, part)
      if (gate.ended) break
    }
    gate.end(label)
    stdin.end()
  }
  // A refused member fails the feed, which aborts the group: tar is killed at once.
  group.add(feed())
  await group.settle('IO', tar)
  return { members: gate.members, warnings: stderrLines(tar.stderr()) }
}
