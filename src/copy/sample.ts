/**
 * Sanity sampling of an incremental backup: read random blocks the dirty bitmap calls clean from
 * the source and from the new backup (where they fall through to the parent chain) and compare
 * them. A lying bitmap (lost writes, a bitmap of another disk, a restored VM image under a kept
 * bitmap) is caught here instead of at restore time.
 */
import { randomInt } from 'node:crypto'
import { BackupError } from '../errors.ts'
import type { NbdClient } from '../nbd/client.ts'
import { walkExtents } from '../nbd/extents.ts'

/** Options of {@link sampleCleanBlocks}. */
export interface SampleOptions {
  /** The point-in-time export, with the dirty bitmap context negotiated. */
  source: NbdClient
  /** The freshly written backup image (data falls through to its backing chain). */
  target: NbdClient
  dirtyContext: string
  /** Blocks to compare. */
  count: number
  /** Block size in bytes. Default 64 KiB. */
  block?: number
  /** Random integer in [0, max) (injected by tests). */
  random?: (max: number) => number
  signal: AbortSignal
}

/** Result of {@link sampleCleanBlocks}. */
export interface SampleResult {
  /** Blocks compared. */
  checked: number
  /** Offsets of blocks that differed. */
  mismatches: number[]
}

/** Most dirty extents we keep in memory for sampling; beyond that sampling is skipped. */
const MAX_EXTENTS = 1_000_000

/** Compare `count` random clean blocks of source and backup. */
export const sampleCleanBlocks = async (o: SampleOptions): Promise<SampleResult> => {
  const block = o.block ?? 64 * 1024
  const size = o.source.size
  const starts: number[] = []
  const ends: number[] = []
  for await (const e of walkExtents(o.source, o.dirtyContext, { signal: o.signal })) {
    if ((e.flags & 1) === 0) continue
    if (starts.length >= MAX_EXTENTS) return { checked: 0, mismatches: [] }
    starts.push(e.offset)
    ends.push(e.offset + e.length)
  }
  const isDirty = (off: number, len: number): boolean => {
    // Binary search for the last dirty extent starting before off + len.
    let lo = 0
    let hi = starts.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((starts[mid] ?? 0) < off + len) lo = mid + 1
      else hi = mid
    }
    return lo > 0 && (ends[lo - 1] ?? 0) > off
  }
  const random = o.random ?? ((max: number) => randomInt(max))
  const blocks = Math.floor(size / block)
  const result: SampleResult = { checked: 0, mismatches: [] }
  if (blocks === 0) return result
  for (let tries = 0; result.checked < o.count && tries < o.count * 20; tries++) {
    const off = random(blocks) * block
    if (isDirty(off, block)) continue
    const [a, b] = await Promise.all([
      o.source.read(off, block, { signal: o.signal }),
      o.target.read(off, block, { signal: o.signal }),
    ])
    result.checked++
    if (!a.equals(b)) result.mismatches.push(off)
  }
  return result
}

/** Throw `VERIFY_FAILED` when sampling found differences. */
export const assertSampleClean = (device: string, r: SampleResult): void => {
  if (r.mismatches.length > 0) {
    throw new BackupError(
      'VERIFY_FAILED',
      `${device}: ${r.mismatches.length} of ${r.checked} blocks the dirty bitmap calls clean differ from the previous backup (first at offset ${r.mismatches[0] ?? 0}): the bitmap missed writes; the next backup will be full`,
      { details: { device, mismatches: r.mismatches.slice(0, 16) } },
    )
  }
}
