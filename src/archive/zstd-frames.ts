/**
 * Seekable zstd archives: the tar stream cut into independent zstd frames of
 * {@link FRAME_BYTES} uncompressed bytes each, written back to back. Concatenated frames are
 * one valid zstd file (RFC 8878 §3.1: "a Zstandard compressed stream is made of one or more
 * frames"), so `zstd -d`, `tar -I zstd` and pve-container's restore read it unchanged; the
 * frame index (`archive.frames`, {@link FrameIndexSchema}) lets a reader start decompressing at
 * the frame holding a given offset of the tar stream instead of at the start.
 *
 * Frames are compressed by `zstd` processes, up to `threads` at once (vzdump's `zstd` option:
 * `0` is half of the cores), each on its own frame, and written in order. Memory: at most
 * `threads + 1` frames of input and `threads` of output.
 */
import { availableParallelism } from 'node:os'
import type { Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import * as z from 'zod'
import { BackupError } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'

/** Uncompressed bytes per frame: a single-file restore decompresses at most this much extra. */
export const FRAME_BYTES = 16 * 1024 * 1024

/** The frame index file beside a seekable `.tar.zst` archive. */
export const FRAMES_FILE = 'archive.frames'

/** Schema of the frame index: per frame, its compressed and uncompressed sizes, in order. */
export const FrameIndexSchema = z.strictObject({
  version: z.literal(1),
  /** Uncompressed bytes of every frame but the last (which holds the rest). */
  frameBytes: z.number().int().positive(),
  /** `[compressed, uncompressed]` bytes of each frame. */
  frames: z.array(z.tuple([z.number().int().positive(), z.number().int().positive()])),
})

/** A frame index. */
export type FrameIndex = z.infer<typeof FrameIndexSchema>

/** One frame located in both streams. */
export interface FrameSpan {
  /** Offset of its first byte in the compressed file. */
  compressedOffset: number
  compressedBytes: number
  /** Offset of its first byte in the uncompressed stream. */
  offset: number
  bytes: number
}

/**
 * The frames that hold the uncompressed range `[start, end)`, in order (none for an empty
 * range). Throws `ARCHIVE_INVALID` when the index does not reach `end`.
 */
export const framesFor = (index: FrameIndex, start: number, end: number): FrameSpan[] => {
  const out: FrameSpan[] = []
  let c = 0
  let u = 0
  for (const [cb, ub] of index.frames) {
    if (u + ub > start && u < end) {
      out.push({ compressedOffset: c, compressedBytes: cb, offset: u, bytes: ub })
    }
    c += cb
    u += ub
    if (u >= end) return out
  }
  if (end > u) {
    throw new BackupError('ARCHIVE_INVALID', `the frame index ends at ${u}, before ${end}`)
  }
  return out
}

/** Number of compressors for vzdump's `zstd` value: `0` is half of the cores (at least one). */
export const zstdThreads = (n: number): number => {
  if (!Number.isInteger(n) || n < 0 || n > 256) {
    throw new BackupError('USAGE', `invalid zstd thread count ${n} (0 to 256, 0: half the cores)`)
  }
  return n === 0 ? Math.max(1, Math.floor(availableParallelism() / 2)) : n
}

/** Options of {@link ZstdFrameWriter}. */
export interface ZstdFrameOptions {
  /** Compressors running at once (see {@link zstdThreads}). */
  threads: number
  /** zstd level, 1 to 19. Default 3 (zstd's and vzdump's). */
  level?: number
  /** Uncompressed bytes per frame. Default {@link FRAME_BYTES}. */
  frameBytes?: number
  signal: AbortSignal
}

const writeAll = async (fh: FileHandle, data: Buffer): Promise<void> => {
  for (let at = 0; at < data.length;) {
    const { bytesWritten } = await fh.write(data, at, data.length - at)
    at += bytesWritten
  }
}

/** Compress one frame with a `zstd` process; resolves with its output. */
const compressFrame = async (data: Buffer, level: number, signal: AbortSignal): Promise<Buffer> => {
  const tool = spawnTool('zstd', ['-q', '-c', `-${level}`, '-T1', '-'], { signal })
  const parts: Buffer[] = []
  tool.stdout?.on('data', (b: Buffer) => parts.push(b))
  const fed = new Promise<void>((resolve, reject) => {
    tool.stdin?.once('error', reject)
    tool.stdin?.end(data, resolve)
  })
  await Promise.all([tool.done, fed])
  return Buffer.concat(parts)
}

/**
 * Writes the uncompressed stream pushed into it as zstd frames to `fh` (at its position, from
 * the file's start), feeding every compressed byte to `hash`.
 */
export class ZstdFrameWriter {
  readonly #fh: FileHandle
  readonly #hash: Hash
  readonly #o: Required<ZstdFrameOptions>
  #buf: Buffer
  #fill = 0
  readonly #pending: { done: Promise<Buffer>; bytes: number; input: Buffer }[] = []
  /** Frame buffers whose compressor has finished, for the next frames (no fresh 16 MiB each). */
  readonly #free: Buffer[] = []
  readonly #frames: [number, number][] = []
  #written = 0

  constructor(fh: FileHandle, hash: Hash, o: ZstdFrameOptions) {
    const level = o.level ?? 3
    if (!Number.isInteger(level) || level < 1 || level > 19) {
      throw new BackupError('USAGE', `invalid zstd level ${level}`)
    }
    this.#fh = fh
    this.#hash = hash
    this.#o = {
      level,
      frameBytes: o.frameBytes ?? FRAME_BYTES,
      threads: Math.max(1, o.threads),
      signal: o.signal,
    }
    this.#buf = Buffer.allocUnsafe(this.#o.frameBytes)
  }

  /** Bytes of the compressed file written so far. */
  get written(): number {
    return this.#written
  }

  /** Take `data` (copied: the caller may reuse it once this resolves). */
  async push(data: Buffer): Promise<void> {
    for (let at = 0; at < data.length;) {
      const n = data.copy(this.#buf, this.#fill, at)
      this.#fill += n
      at += n
      if (this.#fill === this.#buf.length) await this.#dispatch()
    }
  }

  /** Compress the rest, write every frame and return the index. */
  async end(): Promise<FrameIndex> {
    if (this.#fill > 0) await this.#dispatch()
    while (this.#pending.length > 0) await this.#writeOldest()
    return { version: 1, frameBytes: this.#o.frameBytes, frames: this.#frames }
  }

  async #dispatch(): Promise<void> {
    const data = this.#buf.subarray(0, this.#fill)
    const done = compressFrame(data, this.#o.level, this.#o.signal)
    // Observed at once: a failure is seen by the write that awaits it, or by end().
    done.catch(() => undefined)
    this.#pending.push({ done, bytes: this.#fill, input: this.#buf })
    this.#buf = this.#free.pop() ?? Buffer.allocUnsafe(this.#o.frameBytes)
    this.#fill = 0
    // `threads` frames compress while the caller fills the next one.
    while (this.#pending.length > this.#o.threads) await this.#writeOldest()
  }

  async #writeOldest(): Promise<void> {
    const next = this.#pending.shift()
    if (next === undefined) return
    const out = await next.done
    // The compressor has read all of its input and exited: the buffer can take a new frame.
    this.#free.push(next.input)
    this.#hash.update(out)
    await writeAll(this.#fh, out)
    this.#written += out.length
    this.#frames.push([out.length, next.bytes])
  }
}
