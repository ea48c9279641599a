/**
 * How tar's output reaches the archive file, each way in one pass with the archive's SHA-256
 * and the members file (tar-digest.ts), chosen by `createTarArchive`:
 *
 * - **direct** (no bandwidth limit, no compression): tar's stdout *is* the archive file, so tar
 *   writes it as `tar -cf FILE` would, and Node reads the file behind it once as it grows
 *   (tar-follow.ts: large reads from the page cache, parsed on the main thread, hashed on
 *   another). No byte is relayed through a pipe.
 * - **relayed** (a bandwidth limit): tar writes to a pipe; Node gathers its output into one
 *   reused 1 MiB buffer, and per full buffer takes its tokens, parses, hashes and writes it.
 * - **compressed**: Node relays tar's output (limit, members) to the compressor: zstd as
 *   independent frames (zstd-frames.ts) that Node writes and hashes; gzip and lzop writing the
 *   file themselves, followed by a hashing worker as in the direct way.
 */
import type { Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { once } from 'node:events'
import { hashFollowing } from '../digest/follow.ts'
import { BackupError } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { Tool } from '../io/spawn.ts'
import type { TokenBucket } from '../io/throttle.ts'
import type { ToolNamespace } from '../io/userns.ts'
import { Group, stdioOf } from './internal.ts'
import type { MembersSink } from './tar-digest.ts'
import { followTarFile } from './tar-follow.ts'
import { ZstdFrameWriter } from './zstd-frames.ts'
import type { FrameIndex } from './zstd-frames.ts'

/** Size of the relay's buffer. */
const RELAY_BYTES = 1024 * 1024

/** What a writer needs: tar's arguments (archive on stdout) and where the bytes go. */
export interface TarWriteInput {
  args: readonly string[]
  /** The archive's partial file, created empty (a `/proc/<pid>/fd/<n>` path). */
  partial: string
  /** Fed the uncompressed stream. */
  members: MembersSink | undefined
  /** Fed the bytes of the archive file. */
  hash: Hash
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
  /** SHA-256 (hex) of the archive file, when taken apart from `hash` (which then got nothing). */
  digest?: string | undefined
  /** zstd: the frames written. */
  frames?: FrameIndex | undefined
}

/** How the tar stream is compressed (vzdump's `compress` and `zstd` options). */
export interface TarCompression {
  type: 'zstd' | 'gzip' | 'lzo'
  /** zstd: compressors at once (see `zstdThreads`). */
  threads: number
}

const writeAll = async (fh: FileHandle, data: Buffer): Promise<void> => {
  for (let at = 0; at < data.length;) {
    const { bytesWritten } = await fh.write(data, at, data.length - at)
    at += bytesWritten
  }
}

/**
 * tar with the archive file as its stdout; Node follows the file once for the members and the
 * archive's digest (tar-follow.ts), the hashing on a thread of its own beside tar.
 */
const writeDirect = async (i: TarWriteInput): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  try {
    const tar = spawnTool('tar', i.args, {
      stdin: 'ignore',
      stdout: out.fd,
      okExitCodes: [0, 1],
      signal: group.signal,
      namespace: i.namespace,
      ...(i.cwd === undefined ? {} : { cwd: i.cwd }),
    })
    group.addTool(tar)
    i.onStarted?.()
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
 * tar into a pipe; Node gathers its output into one reused 1 MiB buffer and hands each full
 * buffer, past the limit, the members parser and the byte count, to `sink`.
 */
const relayTar = (
  i: TarWriteInput,
  group: Group,
  sink: (data: Buffer) => Promise<void>,
): { tar: Tool; relayed: Promise<void> } => {
  const tar = spawnTool('tar', i.args, {
    stdin: 'ignore',
    okExitCodes: [0, 1],
    signal: group.signal,
    namespace: i.namespace,
    ...(i.cwd === undefined ? {} : { cwd: i.cwd }),
  })
  group.addTool(tar)
  i.onStarted?.()
  // Nothing is awaited between tar's start and the first read of its stdout: when a child
  // exits, Node drains any of its stdio streams nobody reads yet and drops their data
  // (lib/internal/child_process.js, `flushStdio`), so a fast tar would leave an empty archive.
  const stdout = stdioOf(tar.stdout, group)
  const bucket = i.bandwidth?.limited === true ? i.bandwidth : undefined
  let passed = 0
  const relay = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(RELAY_BYTES)
    let fill = 0
    const flush = async (): Promise<void> => {
      const data = buf.subarray(0, fill)
      await bucket?.take(fill, group.signal)
      await i.members?.push(data)
      await sink(data)
      passed += fill
      i.onBytes?.(passed)
      fill = 0
    }
    for await (const chunk of stdout as AsyncIterable<Buffer>) {
      for (let at = 0; at < chunk.length;) {
        const n = chunk.copy(buf, fill, at)
        fill += n
        at += n
        if (fill === buf.length) await flush()
      }
    }
    if (fill > 0) await flush()
  }
  const relayed = relay()
  group.add(relayed)
  return { tar, relayed }
}

/** tar through Node and the limit into the file, in 1 MiB writes. */
const writeRelayed = async (i: TarWriteInput): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  let tarBytes = 0
  try {
    const { tar } = relayTar(i, group, async (data) => {
      tarBytes += data.length
      i.hash.update(data)
      await writeAll(out, data)
    })
    await group.settle()
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes }
  } finally {
    await out.close()
  }
}

/** tar → Node (limit, members) → seekable zstd frames (zstd-frames.ts) → the file. */
const writeZstdFrames = async (i: TarWriteInput, threads: number): Promise<TarWriteResult> => {
  const group = new Group(i.signal)
  const out = await open(i.partial, constants.O_WRONLY)
  let tarBytes = 0
  try {
    const writer = new ZstdFrameWriter(out, i.hash, { threads, signal: group.signal })
    const { tar } = relayTar(i, group, async (data) => {
      tarBytes += data.length
      await writer.push(data)
    })
    await group.settle()
    const frames = await writer.end()
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes, frames }
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
  let tarBytes = 0
  try {
    const [prog, ...args] = STREAM_COMPRESSORS[type]
    const comp = spawnTool(prog, args, { stdout: out.fd, signal: group.signal })
    group.addTool(comp)
    const stdin = comp.stdin
    if (stdin === null) throw new BackupError('INTERNAL', `${prog} has no stdin`)
    const hashed = hashFollowing(i.partial, { writerDone: comp.done, signal: group.signal })
    group.add(hashed)
    const { tar, relayed } = relayTar(i, group, async (data) => {
      tarBytes += data.length
      if (!stdin.write(data)) await once(stdin, 'drain', { signal: group.signal })
    })
    // Once the relay has passed tar's last byte, the compressor gets its end of input.
    group.add(
      relayed.then(async () => {
        await new Promise<void>((resolve) => stdin.end(resolve))
      }),
    )
    await group.settle()
    const { digest } = await hashed
    return { exitCode: await tar.done, stderr: tar.stderr(), tarBytes, digest }
  } finally {
    await out.close()
  }
}

/**
 * Whether {@link writeTar} takes the direct way for these options: its members sink must then be
 * opened with `deferContent` (the contents are hashed beside the archive, tar-follow.ts).
 */
export const writesDirect = (i: Pick<TarWriteInput, 'compress' | 'bandwidth'>): boolean =>
  i.compress === undefined && i.bandwidth?.limited !== true

/** Run tar into `i.partial` the cheapest way its options allow (see the module comment). */
export const writeTar = (i: TarWriteInput): Promise<TarWriteResult> => {
  const c = i.compress
  if (c?.type === 'zstd') return writeZstdFrames(i, c.threads)
  if (c !== undefined) return writeStream(i, c.type)
  if (!writesDirect(i)) return writeRelayed(i)
  return writeDirect(i)
}
