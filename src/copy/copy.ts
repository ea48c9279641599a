/**
 * The block copy engine: moves the regions of a disk that matter (dirty regions, or the whole
 * disk) from a source to a target, reading only data, turning zero ranges into holes (fresh
 * target) or explicit WRITE_ZEROES (target with a backing file, where a hole would let older data
 * show through: the qcow2 spec's "zero" cluster flag, QEMU docs/interop/qcow2.txt), with a bounded number of requests in flight, a shared
 * bandwidth limit and progress reports. Memory use is `inFlight × chunk` at most.
 */
import type { DiskHasher } from '../digest/hasher.ts'
import { HashPool, sharedBuffer } from '../digest/pool.ts'
import { BackupError, throwIfAborted } from '../errors.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { alignWrites } from './align-writes.ts'
import { blockJobs, chunkJobs } from './jobs.ts'
import type { Job } from './jobs.ts'

/** A region `[offset, offset + length)` in bytes, with whether it reads as zero. */
export interface Piece {
  offset: number
  length: number
  /** The source guarantees these bytes read as zero. */
  zero: boolean
}

/** Where data comes from. */
export interface CopySource {
  /** Size of the disk in bytes; progress is the position of the copy over it. */
  readonly size: number
  /**
   * Regions to copy, in increasing order, non-overlapping. Iterated once, while copying: a
   * dirty map is walked a single time, and never held in memory.
   */
  regions(signal: AbortSignal): AsyncIterable<readonly [number, number]>
  /**
   * Allocation inside one region (`base:allocation`). Optional: without it every byte is read
   * and all-zero chunks are detected in memory.
   */
  allocation?(offset: number, length: number, signal: AbortSignal): AsyncIterable<Piece>
  /**
   * Read `length` bytes at `offset`. With `into` (exactly `length` bytes), fill and return it:
   * the engine reuses one buffer per request in flight, so no memory is allocated per chunk.
   */
  read(offset: number, length: number, signal: AbortSignal, into?: Buffer): Promise<Buffer>
  /** Called after a region piece was written to the target (e.g. discard in a fleecing image). */
  done?(offset: number, length: number): Promise<void>
}

/** Where data goes. */
export interface CopyTarget {
  write(offset: number, data: Buffer, signal: AbortSignal): Promise<void>
  writeZeroes(offset: number, length: number, signal: AbortSignal): Promise<void>
  flush(signal: AbortSignal): Promise<void>
}

/** Options of {@link copyBlocks}. */
export interface CopyOptions {
  /**
   * The target reads as zero everywhere (a fresh image without backing file): zero ranges are
   * skipped. Otherwise they are written as WRITE_ZEROES.
   */
  targetIsZero: boolean
  /**
   * Largest read, bytes. Default {@link COPY_CHUNK} (the least CPU for client and servers
   * together, bench/copy-sweep.ts); with digests always one digest block.
   */
  chunk?: number
  /** Requests in flight. Default {@link COPY_IN_FLIGHT}. */
  inFlight?: number
  /** Shared bandwidth limit on source reads. */
  bucket?: TokenBucket | undefined
  /**
   * Called after every piece with the position of the copy (every byte of the disk before it is
   * copied or clean) and the disk size. Positions only grow; the last call reports the size.
   * Clean stretches of an incremental pass at once, so this is a fraction of the disk walked,
   * not of the bytes to copy (which are only known once the dirty map was walked). `stats`
   * are the counts so far (pieces written, which may lie past `position` while jobs before
   * them still run), so `position - dataBytes` is what the walk skipped.
   */
  onProgress?: ((position: number, size: number, stats: Readonly<CopyStats>) => void) | undefined
  /**
   * Hash every block of the disk the copy touches, in the same pass: the regions are widened to
   * whole blocks (the widening read for hashing only), so a full copy hashes the whole disk and
   * an incremental its dirty blocks.
   */
  hasher?: DiskHasher | undefined
  /** Only hash (with `hasher`): nothing is written, the target is not used. */
  hashOnly?: boolean | undefined
  /**
   * The target takes only whole, aligned units of this many bytes, each written once (a
   * compressed qcow2 image, `src/qemu/compress.ts`: its cluster size). Every write and zero
   * write is widened to whole units inside its job, with the bytes the job read; the disk size
   * must be a multiple. A power of two dividing 64 KiB. Default: any write.
   */
  writeAlign?: number | undefined
  signal: AbortSignal
}

/** What {@link copyBlocks} did. */
export interface CopyStats {
  /** Bytes of regions considered (dirty or whole disk). */
  totalBytes: number
  /** Bytes read from the source and written as data. */
  dataBytes: number
  /** Bytes of zero ranges (skipped or written as zeroes). */
  zeroBytes: number
}

/**
 * Default job size and jobs in flight: 4 MiB × 8 over 4 connections per server cost the least
 * CPU of client plus both qemu-nbd in bench/copy-sweep.ts (~0.8 CPU-s per GiB, against ~1.4 at
 * 1 MiB × 16 and ~1.6 for nbdcopy's 256 KiB × 64), at the same or better wall time.
 */
export const COPY_CHUNK = 4 * 1024 * 1024
/** See {@link COPY_CHUNK}. */
export const COPY_IN_FLIGHT = 8

/** Threads hashing blocks (`src/digest/pool.ts`). */
const HASH_THREADS = 2

/**
 * Granularity of zero detection in data reads (the qcow2 cluster size). `Buffer.equals` is a
 * memcmp that stops at the first differing byte: measured here ~11 ms per GiB of random data
 * and ~18 ms per GiB of zeroes, under 2 % of the copy's CPU.
 */
const ZERO_BLOCK = 64 * 1024
const ZEROES = Buffer.alloc(ZERO_BLOCK)
/** True if `b` (at most {@link ZERO_BLOCK} bytes) is all zero. */
const isZero = (b: Buffer): boolean => b.equals(ZEROES.subarray(0, b.length))

/**
 * Copy buffers left by earlier copies of this process, by kind (shared ones for a hash pool):
 * a backup's read-back and the disks after the first reuse them instead of allocating anew
 * while the old ones still wait for the garbage collector (peak RSS). At most
 * {@link COPY_IN_FLIGHT} × 2 of each kind are kept.
 */
const spare = { shared: [] as Buffer[], plain: [] as Buffer[] }

const takeBuffer = (size: number, shared: boolean): Buffer => {
  const list = shared ? spare.shared : spare.plain
  const i = list.findIndex((b) => b.length === size)
  const [reused] = i >= 0 ? list.splice(i, 1) : []
  return reused ?? (shared ? sharedBuffer(size) : Buffer.allocUnsafe(size))
}

const giveBack = (buf: Buffer, shared: boolean): void => {
  const list = shared ? spare.shared : spare.plain
  if (list.length < COPY_IN_FLIGHT * 2) list.push(buf)
}

/** Copy the source's regions into the target; flushes the target at the end. */
export const copyBlocks = async (
  src: CopySource,
  dst: CopyTarget,
  opts: CopyOptions,
): Promise<CopyStats> => {
  const { signal, hasher } = opts
  // With digests every data request is one whole block (hasher.ts).
  const chunk = hasher?.blockSize ?? opts.chunk ?? COPY_CHUNK
  const inFlight = opts.inFlight ?? COPY_IN_FLIGHT
  const stats: CopyStats = { totalBytes: 0, dataBytes: 0, zeroBytes: 0 }
  const align = opts.writeAlign
  if (align !== undefined) checkAlign(align, chunk, src.size)
  // An aligned target's zero units are found one by one (it would store a zero unit as data).
  const zeroBlock = align ?? ZERO_BLOCK
  // Jobs are handed out in increasing order but finish in any order: the position reported is
  // the end of the lowest job still running, or of the last one handed out when none runs.
  const running = new Set<number>()
  let handedOut = 0
  let reported = 0
  const report = (): void => {
    let position = handedOut
    for (const o of running) position = Math.min(position, o)
    if (position > reported) {
      reported = position
      opts.onProgress?.(position, src.size, stats)
    }
  }
  const hashOnly = opts.hashOnly === true
  const onRegion = (bytes: number): void => {
    if (!hashOnly) stats.totalBytes += bytes
  }
  // Aligned writes need jobs on aligned boundaries that read whole units: block jobs do.
  const gen =
    hasher === undefined && align === undefined
      ? chunkJobs(src, chunk, onRegion, signal)
      : blockJobs(src, hasher?.blockSize ?? chunk, !hashOnly, onRegion, signal)
  const writesOf = (job: Job): readonly (readonly [number, number])[] =>
    align === undefined
      ? job.writes
      : alignWrites(job.writes, align, job.offset, job.offset + job.length)
  const zero = async (job: Pick<Job, 'offset' | 'length'>): Promise<void> => {
    stats.zeroBytes += job.length
    if (!opts.targetIsZero) await dst.writeZeroes(job.offset, job.length, signal)
  }
  // Write a data chunk, turning all-zero blocks inside it into holes or zeroes, so a source
  // without an allocation map (file-handle) still yields a sparse backup.
  const writeSparse = async (offset: number, buf: Buffer): Promise<void> => {
    let runStart = 0
    let runZero: boolean | undefined
    const flushRun = async (end: number): Promise<void> => {
      if (runZero === undefined || end === runStart) return
      const len = end - runStart
      if (runZero) {
        await zero({ offset: offset + runStart, length: len })
      } else {
        await dst.write(offset + runStart, buf.subarray(runStart, end), signal)
        stats.dataBytes += len
      }
    }
    for (let o = 0; o < buf.length; o += zeroBlock) {
      const z = isZero(buf.subarray(o, Math.min(o + zeroBlock, buf.length)))
      if (z !== runZero) {
        await flushRun(o)
        runStart = o
        runZero = z
      }
    }
    await flushRun(buf.length)
  }
  // The threads and the buffers are made at the first block read: starting two threads costs
  // ~70 ms of CPU each, and an incremental with nothing dirty, or an empty disk, reads nothing.
  let pool: HashPool | undefined
  const poolOf = (): HashPool | undefined =>
    hasher === undefined ? undefined : (pool ??= new HashPool(HASH_THREADS))
  let stop = false
  const worker = async (): Promise<void> => {
    try {
      await work()
    } catch (e) {
      stop = true
      throw e
    }
  }
  const work = async (): Promise<void> => {
    // One buffer per worker, taken at its first read (none for a copy that reads nothing) and
    // reused for every chunk: the write completes before the next read.
    const held: { own?: Buffer } = {}
    await copyJobs(held)
    // Only after a clean end: a failed or aborted read may still have a reply on its way into it.
    if (held.own !== undefined) giveBack(held.own, hasher !== undefined)
  }
  const copyJobs = async (held: { own?: Buffer }): Promise<void> => {
    for (;;) {
      throwIfAborted(signal)
      if (stop) return
      const next = await gen.next()
      if (next.done === true) return
      const job = next.value
      running.add(job.offset)
      handedOut = job.offset + job.length
      if (job.kind === 'zero') {
        if (job.block !== undefined && hasher !== undefined) {
          for (let i = 0; i < (job.blocks ?? 1); i++) hasher.zeroBlock(job.block + i)
        }
        for (const [a, b] of writesOf(job)) await zero({ offset: a, length: b - a })
      } else {
        await opts.bucket?.take(job.length, signal)
        const hashPool = poolOf()
        held.own ??= takeBuffer(chunk, hashPool !== undefined)
        const own = held.own
        const buf = await src.read(job.offset, job.length, signal, own.subarray(0, job.length))
        if (buf.length !== job.length) {
          throw new BackupError('IO', `short read at ${job.offset}: ${buf.length}/${job.length}`)
        }
        // The hash has its own copy of the bytes: it runs on while they are written and the
        // next block is read; at most MAX_HASHING copies wait for the thread pool.
        const hashed = job.block === undefined ? undefined : hasher?.block(job.block, buf, hashPool)
        // Observed at once: a hash failing while the writes run must not go unhandled.
        hashed?.catch(() => undefined)
        try {
          for (const [a, b] of writesOf(job)) {
            await writeSparse(a, buf.subarray(a - job.offset, b - job.offset))
          }
        } finally {
          // The pool hashes the buffer in place: it is reused only once the digest is in.
          await hashed
        }
      }
      // Only what was copied: bytes read for a digest alone may still be read again (the
      // clean-block sample of an incremental), and `done` may discard them at the source.
      for (const [a, b] of job.writes) await src.done?.(a, b - a)
      running.delete(job.offset)
      report()
    }
  }
  const workers = Array.from({ length: inFlight }, () => worker())
  const results = await Promise.allSettled(workers)
  await pool?.close()
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) {
    await gen.return(undefined)
    throw failed.reason
  }
  if (!hashOnly) await dst.flush(signal)
  handedOut = src.size
  report()
  return stats
}

/** An aligned target's unit must fit the engine's jobs and zero detection, and the disk. */
const checkAlign = (align: number, chunk: number, size: number): void => {
  const pow2 = Number.isSafeInteger(align) && align > 0 && (align & (align - 1)) === 0
  if (!pow2 || ZERO_BLOCK % align !== 0 || chunk % align !== 0 || size % align !== 0) {
    throw new BackupError(
      'INTERNAL',
      `write alignment ${align} does not fit chunk ${chunk}, ${ZERO_BLOCK} and disk size ${size}`,
    )
  }
}
