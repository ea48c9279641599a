/**
 * Seekable zstd archives: the tar stream cut into independent zstd frames of
 * {@link FRAME_BYTES} uncompressed bytes each, written back to back. Concatenated frames are
 * one valid zstd file (RFC 8878 §3.1: "a Zstandard compressed stream is made of one or more
 * frames"), so `zstd -d`, `tar -I zstd` and pve-container's restore read it unchanged; the
 * frame index (`archive.frames`, {@link FrameIndexSchema}) lets a reader start decompressing at
 * the frame holding a given offset of the tar stream instead of at the start.
 *
 * Frames are compressed by `zstd` processes, one per frame and one after another, each with
 * `threads` threads (vzdump's `zstd` option: `0` is half of the cores) and writing its frame to
 * the archive file itself (see {@link ZstdFrameWriter}).
 */
import { availableParallelism } from 'node:os'
import type { FileHandle } from 'node:fs/promises'
import type { Writable } from 'node:stream'
import * as z from 'zod'
import { BackupError, throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { Tool } from '../io/spawn.ts'
import { writeTo } from './internal.ts'

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

/** Threads of the compressor for vzdump's `zstd` value: `0` is half of the cores (at least one). */
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

/** The frame being compressed: its `zstd` process and the uncompressed bytes given so far. */
interface OpenFrame {
  tool: Tool
  stdin: Writable
  bytes: number
}

/**
 * Writes the uncompressed stream pushed into it as zstd frames to the end of the file `fh`
 * (opened for writing at offset 0, no `O_APPEND` needed). Each frame is one `zstd` process whose
 * stdout is the file itself, so no compressed byte passes through Node: the processes run one
 * after another and share the file's offset, each appending its frame; a frame's compressed size
 * is the growth of the file while its process ran. Parallelism is zstd's own (`-T`, within a
 * frame). Memory: none of Node's beyond what a caller pushes (taken in place, not copied).
 */
export class ZstdFrameWriter {
  readonly #fh: FileHandle
  readonly #o: Required<ZstdFrameOptions>
  #open: OpenFrame | undefined
  readonly #frames: [number, number][] = []
  #written = 0

  constructor(fh: FileHandle, o: ZstdFrameOptions) {
    const level = o.level ?? 3
    if (!Number.isInteger(level) || level < 1 || level > 19) {
      throw new BackupError('USAGE', `invalid zstd level ${level}`)
    }
    this.#fh = fh
    this.#o = {
      level,
      frameBytes: o.frameBytes ?? FRAME_BYTES,
      threads: Math.max(1, o.threads),
      signal: o.signal,
    }
  }

  /** Bytes of the compressed file written so far (by the frames ended). */
  get written(): number {
    return this.#written
  }

  /**
   * Take `data`, the stream's next bytes, cut into frames by size. `data` is written as it is:
   * the caller keeps it unchanged until this resolves. Calls must not overlap.
   */
  async push(data: Buffer): Promise<void> {
    throwIfAborted(this.#o.signal)
    for (let at = 0; at < data.length;) {
      const frame = this.#open ?? this.#start()
      const n = Math.min(data.length - at, this.#o.frameBytes - frame.bytes)
      const part = data.subarray(at, at + n)
      const written = writeTo(frame.stdin, part).catch(async (e: unknown) => {
        // A broken pipe is the compressor's failure (a full file system, a kill): its exit
        // status and stderr say why, so that is what is thrown when it failed.
        await frame.tool.done
        throw e
      })
      // A compressor that is gone (killed by an abort) may leave the write's callback pending
      // for good: its end settles the write too.
      await Promise.race([written, frame.tool.done.then(() => written)])
      frame.bytes += n
      at += n
      if (frame.bytes === this.#o.frameBytes) await this.#finish()
    }
  }

  /** Compress the rest, and return the index once every frame is in the file. */
  async end(): Promise<FrameIndex> {
    if (this.#open !== undefined) await this.#finish()
    return { version: 1, frameBytes: this.#o.frameBytes, frames: this.#frames }
  }

  #start(): OpenFrame {
    // One thread: `--single-thread`, not `-T1`, whose extra I/O thread and job buffers (tens
    // of MiB of fresh memory) cost more than they overlap when the process lives for one frame
    // (zstd(1), "--single-thread").
    const threads = this.#o.threads === 1 ? '--single-thread' : `-T${this.#o.threads}`
    const tool = spawnTool('zstd', ['-q', '-c', `-${this.#o.level}`, threads, '-'], {
      stdout: this.#fh.fd,
      signal: this.#o.signal,
    })
    // Observed at once: a failure is seen by the write that awaits it, or by #finish.
    tool.done.catch(() => undefined)
    const stdin = tool.stdin
    if (stdin === null) throw new BackupError('INTERNAL', 'zstd has no stdin')
    // A compressor that failed breaks its pipe: its exit status, awaited below, says why.
    stdin.on('error', () => undefined)
    this.#open = { tool, stdin, bytes: 0 }
    return this.#open
  }

  async #finish(): Promise<void> {
    const frame = this.#open
    if (frame === undefined) return
    this.#open = undefined
    // The process's end, not `end()`'s callback (which a stream destroyed under it may never
    // call), says that the frame is complete.
    frame.stdin.end()
    await frame.tool.done
    const { size } = await this.#fh.stat()
    const compressed = size - this.#written
    if (compressed <= 0) {
      throw new BackupError('ARCHIVE_TOOL_FAILED', `zstd wrote no frame for ${frame.bytes} bytes`)
    }
    this.#written = size
    this.#frames.push([compressed, frame.bytes])
  }
}
