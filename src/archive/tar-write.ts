/**
 * How tar's output reaches the archive file, each way in one pass with the archive's SHA-256
 * and the members file (tar-digest.ts), chosen by `createTarArchive`:
 *
 * - **direct** (no bandwidth limit, no compression): tar's stdout *is* the archive file, so tar
 *   writes it as `tar -cf FILE` would, and Node reads the file behind it once as it grows
 *   (tar-follow.ts: large reads from the page cache, parsed on the main thread, hashed on
 *   another). No byte is relayed through a pipe.
 * - **relayed** (a bandwidth limit): tar writes to a pipe; Node reads it once into the same
 *   slots (parsed and hashed as above) and per slot takes its tokens and writes it.
 * - **compressed**: Node passes the slots (limit, members) to the compressor, which writes the
 *   file itself: zstd as independent frames (zstd-frames.ts), gzip and lzop as one stream; a
 *   worker thread follows the file for the archive's SHA-256.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { hashFollowing } from '../digest/follow.ts'
import { openFifo } from '../io/fifo.ts'
import { spawnTool } from '../io/spawn.ts'
import type { Tool } from '../io/spawn.ts'
import type { TokenBucket } from '../io/throttle.ts'
import type { ToolNamespace } from '../io/userns.ts'
import { Group, stdioOf, writeTo } from './internal.ts'
import type { MembersSink } from './tar-digest.ts'
import { followTarFile, followTarPipe } from './tar-follow.ts'
import { ZstdFrameWriter } from './zstd-frames.ts'
import type { FrameIndex } from './zstd-frames.ts'

/** What a writer needs: tar's arguments (archive on stdout) and where the bytes go. */
export interface TarWriteInput {
  args: readonly string[]
  /** The archive's partial file, created empty (a `/proc/<pid>/fd/<n>` path). */
  partial: string
  /** Fed the uncompressed stream. */
  members: MembersSink | undefined
  bandwidth: TokenBucket | undefined
  compress: TarCompression | undefined
  signal: AbortSignal | undefined
  /** Gets the bytes of the uncompressed stream passed on so far, as they grow. */
  onBytes?: ((tarBytes: number) => void) | undefined
  /** Called once tar was started. */
  onStarted?: (() => void) | undefined
  /** Run tar in this user namespace (an unprivileged container's mapped root). */
  namespace?: ToolNamespace | undefined
  /** tar's working directory. */
  cwd?: string | undefined
}

/** What tar did. */
export interface TarWriteResult {
  exitCode: number
  stderr: string
  /** Bytes of the uncompressed tar stream. */
  tarBytes: number
  /** SHA-256 (hex) of the archive file. */
  digest: string
  /** zstd: the frames written. */
  frames?: FrameIndex | undefined
}

/** How the tar stream is compressed (vzdump's `compress` and `zstd` options). */
export interface TarCompression {
  type: 'zstd' | 'gzip' | 'lzo'
  /** zstd: threads of each frame's compressor (see `zstdThreads`). */
  threads: number
}

const writeAll = async (fh: FileHandle, data: Buffer): Promise<void> => {
  for (let at = 0; at < data.length;) {
    const { bytesWritten } = await fh.write(data, at, data.length - at)
    at += bytesWritten
  }
}

/** Start tar (exit code 1, files changed while read, is a success) writing to `stdout`, in `group`. */
const startTar = (i: TarWriteInput, group: Group, stdout: number): Tool => {
  const tar = spawnTool('tar', i.args, {
    stdin: 'ignore',
    stdout,
    okExitCodes: [0, 1],
    signal: group.signal,
    namespace: i.namespace,
    ...(i.cwd === undefined ? {} : { cwd: i.cwd }),
  })
  group.addTool(tar)
  i.onStarted?.()
  return tar
}

/**
 * tar with the archive file as its stdout; Node follows the file once for the members and the
 * archive's digest (tar-follow.ts), the hashing on a thread of its own beside tar.
 */
const writeDirect = async (i: TarWriteInput): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  try {
    const tar = startTar(i, group, out.fd)
    const followed = followTarFile(i.partial, {
      writerDone: tar.done,
      signal: group.signal,
      members: i.members,
      onBytes: i.onBytes,
    })
    group.add(followed)
    await group.settle()
    const { digest, bytes } = await followed
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes: bytes, digest }
  } finally {
    await out.close()
  }
}

/**
 * tar into a pipe (io/fifo.ts); Node reads its output once into slots (tar-follow.ts: members parsed on the
 * main thread, hashed on another) and hands each slot, past the limit, to `sink`. `followed`
 * (a part of `group`) has the stream's length and, with `streamDigest`, its SHA-256 (the
 * archive's, when uncompressed).
 */
const relayTar = async (
  i: TarWriteInput,
  group: Group,
  sink: (data: Buffer) => Promise<void>,
  streamDigest: boolean,
): Promise<{ tar: Tool; followed: Promise<{ digest: string | undefined; bytes: number }> }> => {
  const fifo = await openFifo(group.signal).catch(async (e: unknown) => {
    // Whatever the group already runs (a compressor waiting for input) is stopped first.
    group.abort()
    await group.settle().catch(() => undefined)
    throw e
  })
  let tar: Tool
  try {
    tar = startTar(i, group, fifo.writerFd)
  } finally {
    // tar has its own copy once it runs (spawn returns after the exec): the reader sees the
    // end of the stream when tar exits.
    await fifo.closeWriter()
  }
  const bucket = i.bandwidth?.limited === true ? i.bandwidth : undefined
  const followed = followTarPipe(fifo.reader, {
    signal: group.signal,
    members: i.members,
    onBytes: i.onBytes,
    streamDigest,
    sink: async (data) => {
      await bucket?.take(data.length, group.signal)
      await sink(data)
    },
  }).finally(() => fifo.reader.close())
  group.add(followed)
  return { tar, followed }
}

/** tar through Node and the limit into the file, in slot-sized writes. */
const writeRelayed = async (i: TarWriteInput): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  try {
    const { tar, followed } = await relayTar(i, group, (data) => writeAll(out, data), true)
    await group.settle()
    const { digest, bytes } = await followed
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes: bytes, digest: digest ?? '' }
  } finally {
    await out.close()
  }
}

/**
 * tar → Node (limit, members) → seekable zstd frames (zstd-frames.ts), whose compressors write
 * the file themselves; a worker thread follows the file for its SHA-256.
 */
const writeZstdFrames = async (i: TarWriteInput, threads: number): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  try {
    const writer = new ZstdFrameWriter(out, { threads, signal: group.signal })
    const { tar, followed } = await relayTar(i, group, (data) => writer.push(data), false)
    // The last frame's compressor is ended once the relay has passed tar's last byte; a relay
    // that fails stops the whole group, that compressor included.
    const framed = followed.then(
      async (r) => ({ bytes: r.bytes, frames: await writer.end() }),
      (e: unknown) => {
        group.abort()
        throw e
      },
    )
    group.add(framed)
    const hashed = hashFollowing(i.partial, { writerDone: framed, signal: group.signal })
    group.add(hashed)
    await group.settle()
    const [{ bytes, frames }, { digest }] = await Promise.all([framed, hashed])
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes: bytes, digest, frames }
  } finally {
    await out.close()
  }
}

/** The stream compressors by vzdump's names (PVE/VZDump.pm, `compressor_info`). */
const STREAM_COMPRESSORS = {
  gzip: ['gzip', '-6', '-c'],
  lzo: ['lzop', '-c'],
} as const

/**
 * tar → Node (limit, members) → gzip or lzop, which writes the file itself; a worker thread
 * follows the file for its SHA-256.
 */
const writeStream = async (i: TarWriteInput, type: 'gzip' | 'lzo'): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  try {
    const [prog, ...args] = STREAM_COMPRESSORS[type]
    const comp = spawnTool(prog, args, { stdout: out.fd, signal: group.signal })
    group.addTool(comp)
    const stdin = stdioOf(comp.stdin, group)
    const hashed = hashFollowing(i.partial, { writerDone: comp.done, signal: group.signal })
    group.add(hashed)
    const { tar, followed } = await relayTar(i, group, (data) => writeTo(stdin, data), false)
    // The compressor gets its end of input once the relay has passed tar's last byte.
    group.add(followed.finally(() => stdin.end()))
    await group.settle()
    const [{ bytes }, { digest }] = await Promise.all([followed, hashed])
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes: bytes, digest }
  } finally {
    await out.close()
  }
}

/**
 * Run tar into `i.partial` the cheapest way its options allow (see the module comment). The
 * members sink gets headers only; every way hashes the contents beside it (tar-follow.ts).
 */
export const writeTar = (i: TarWriteInput): Promise<TarWriteResult> => {
  const c = i.compress
  if (c?.type === 'zstd') return writeZstdFrames(i, c.threads)
  if (c !== undefined) return writeStream(i, c.type)
  if (i.bandwidth?.limited === true) return writeRelayed(i)
  return writeDirect(i)
}
