/**
 * Sanity sampling of an incremental backup: read random blocks the dirty bitmap calls clean from
 * the source and from the new backup (where they fall through to the parent chain) and compare
 * them. A lying bitmap (lost writes, a bitmap of another disk, a restored VM image under a kept
 * bitmap) is caught here instead of at restore time.
 */
import { randomInt } from 'node:crypto'
import { BackupError } from '../errors.ts'

/** Options of {@link sampleCleanBlocks}. */
export interface SampleOptions {
  /** Disk size in bytes. */
  size: number
  /** The dirty regions of this backup, increasing (what the bitmap says changed). */
  dirty: AsyncIterable<readonly [number, number]>
  /** Read from the point-in-time source. */
  readSource: (offset: number, length: number) => Promise<Buffer>
  /** Read from the new backup, where clean blocks fall through to the parent chain. */
  readTarget: (offset: number, length: number) => Promise<Buffer>
  /** Blocks to compare. */
  count: number
  /** Block size in bytes. Default 64 KiB. */
  block?: number
  /** Random integer in [0, max) (injected by tests). */
  random?: (max: number) => number
}

/** Result of {@link sampleCleanBlocks}. */
export interface SampleResult {
  /** Blocks compared. */
  checked: number
  /** Offsets of blocks that differed. */
  mismatches: number[]
}

/** Most dirty regions kept in memory for sampling; beyond that sampling is skipped. */
const MAX_REGIONS = 1_000_000

/** Compare `count` random clean blocks of source and backup. */
export const sampleCleanBlocks = async (o: SampleOptions): Promise<SampleResult> => {
  const block = o.block ?? 64 * 1024
  const starts: number[] = []
  const ends: number[] = []
  for await (const [off, len] of o.dirty) {
    if (starts.length >= MAX_REGIONS) return { checked: 0, mismatches: [] }
    starts.push(off)
    ends.push(off + len)
  }
  const isDirty = (off: number, len: number): boolean => {
    // Binary search for the last dirty region starting before off + len.
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
  const blocks = Math.floor(o.size / block)
  const result: SampleResult = { checked: 0, mismatches: [] }
  if (blocks === 0) return result
  for (let tries = 0; result.checked < o.count && tries < o.count * 20; tries++) {
    const off = random(blocks) * block
    if (isDirty(off, block)) continue
    const [a, b] = await Promise.all([o.readSource(off, block), o.readTarget(off, block)])
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
