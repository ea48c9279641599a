/**
 * The requests of a copy, in increasing order. Without digests: the source's regions cut by its
 * allocation map into data requests of at most `chunk` bytes and zero ranges. With digests:
 * one request per digest block the regions touch (alignRegions widens them to whole blocks),
 * a whole block read at once so that its SHA-256 is computed in one call off the main thread
 * (`src/digest/hasher.ts`), and only the regions' bytes written; a block the allocation map
 * says is all zero is not read.
 */
import { alignRegions } from '../digest/align.ts'
import type { Segment } from '../digest/align.ts'
import type { CopySource, Piece } from './copy.ts'

/** One request of a copy. */
export interface Job {
  kind: 'data' | 'zero'
  offset: number
  length: number
  /** Absolute `[start, end)` ranges inside the job to write; none: read only to be hashed. */
  writes: readonly (readonly [number, number])[]
  /** The digest block this job is, or starts at (with digests), else undefined. */
  block: number | undefined
  /**
   * Digest blocks the job covers from `block` on: 1, or more for a zero job that spans whole
   * blocks of one zero piece (a hole of 1 TiB is a few jobs, not 262144).
   */
  blocks?: number
}

/** Largest single WRITE_ZEROES (NBD lengths are 32-bit). */
const MAX_ZERO_REQ = 1024 * 1024 * 1024

/** A run of adjacent segments is cut at a block boundary once it holds this many. */
const MAX_RUN_SEGMENTS = 4096

const piecesOf = (
  src: CopySource,
  offset: number,
  length: number,
  signal: AbortSignal,
): AsyncIterable<Piece> =>
  src.allocation
    ? src.allocation(offset, length, signal)
    : (async function* () {
        await Promise.resolve()
        yield { offset, length, zero: false }
      })()

/** Jobs without digests; `onRegion` gets the bytes of every region (to copy). */
export async function* chunkJobs(
  src: CopySource,
  chunk: number,
  onRegion: (bytes: number) => void,
  signal: AbortSignal,
): AsyncGenerator<Job> {
  for await (const [rOff, rLen] of src.regions(signal)) {
    onRegion(rLen)
    for await (const p of piecesOf(src, rOff, rLen, signal)) {
      const end = p.offset + p.length
      const step = p.zero ? MAX_ZERO_REQ : chunk
      for (let o = p.offset; o < end; o += step) {
        const length = Math.min(step, end - o)
        const writes = [[o, o + length]] as const
        yield { kind: p.zero ? 'zero' : 'data', offset: o, length, writes, block: undefined }
      }
    }
  }
}

/**
 * Jobs with digests of `blockSize`: one per block the regions touch, in order. `write` false:
 * nothing is written (verification). `onRegion` gets the bytes of every region.
 */
export async function* blockJobs(
  src: CopySource,
  blockSize: number,
  write: boolean,
  onRegion: (bytes: number) => void,
  signal: AbortSignal,
): AsyncGenerator<Job> {
  let run: Segment[] = []
  for await (const s of alignRegions(src.regions(signal), blockSize, src.size)) {
    if (s.write) onRegion(s.length)
    const last = run.at(-1)
    const runEnd = last === undefined ? s.offset : last.offset + last.length
    const cut = run.length >= MAX_RUN_SEGMENTS && runEnd % blockSize === 0
    if (run.length > 0 && (s.offset !== runEnd || cut)) {
      yield* runJobs(src, run, blockSize, write, signal)
      run = []
    }
    run.push(s)
  }
  if (run.length > 0) yield* runJobs(src, run, blockSize, write, signal)
}

/** The jobs of a run of adjacent segments, which starts and ends on block boundaries. */
async function* runJobs(
  src: CopySource,
  run: readonly Segment[],
  blockSize: number,
  write: boolean,
  signal: AbortSignal,
): AsyncGenerator<Job> {
  const first = run[0]
  const last = run.at(-1)
  if (first === undefined || last === undefined) return
  const start = first.offset
  const end = last.offset + last.length
  const pieces = piecesOf(src, start, end - start, signal)[Symbol.asyncIterator]()
  let piece = (await pieces.next()).value as Piece | undefined
  let seg = 0
  for (let b = start; b < end;) {
    let blockEnd = Math.min(b + blockSize, end)
    let zero = true
    while (piece !== undefined && piece.offset < blockEnd) {
      if (!piece.zero) zero = false
      if (piece.offset + piece.length > blockEnd) break
      piece = (await pieces.next()).value as Piece | undefined
    }
    // A zero block followed by more of the same zero pieces: whole blocks join it, up to one
    // WRITE_ZEROES; the run's last block may be short, and joins when it is zero too.
    const limit = b + Math.floor(MAX_ZERO_REQ / blockSize) * blockSize
    while (zero && piece?.zero === true && piece.offset <= blockEnd && blockEnd < end) {
      const pEnd = piece.offset + piece.length
      const to = Math.min(pEnd, end, limit)
      const whole =
        to === end ? end : blockEnd + Math.floor((to - blockEnd) / blockSize) * blockSize
      if (whole <= blockEnd) break
      blockEnd = whole
      if (pEnd > blockEnd) break
      piece = (await pieces.next()).value as Piece | undefined
    }
    const writes: [number, number][] = []
    while (seg < run.length) {
      const s = run[seg]
      if (s === undefined || s.offset >= blockEnd) break
      const sEnd = s.offset + s.length
      if (s.write && write) writes.push([Math.max(s.offset, b), Math.min(sEnd, blockEnd)])
      if (sEnd > blockEnd) break
      seg++
    }
    yield {
      kind: zero ? 'zero' : 'data',
      offset: b,
      length: blockEnd - b,
      writes,
      block: b / blockSize,
      blocks: Math.ceil((blockEnd - b) / blockSize),
    }
    b = blockEnd
  }
  await pieces.return?.(undefined)
}
