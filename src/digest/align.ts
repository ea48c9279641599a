/**
 * Regions of a copy widened to whole digest blocks. An incremental copies only dirty regions,
 * but a block's digest needs all of its bytes: the rest of every block a dirty region touches
 * is read for hashing only (never written: it is the parent's content already). Pure.
 */

/** A stretch to read: `write` false for bytes read only to be hashed. */
export interface Segment {
  offset: number
  length: number
  write: boolean
}

/**
 * Widen `regions` (sorted, non-overlapping, inside `[0, size)`) to the blocks of `blockSize`
 * they touch: the regions come out with `write`, the rest of their blocks without, in order,
 * adjacent and never overlapping.
 */
export async function* alignRegions(
  regions: AsyncIterable<readonly [number, number]>,
  blockSize: number,
  size: number,
): AsyncGenerator<Segment> {
  const blockStart = (o: number): number => Math.floor(o / blockSize) * blockSize
  const blockEnd = (o: number): number => Math.min(Math.ceil(o / blockSize) * blockSize, size)
  /** End of the last region emitted, and the end of its last block (the pending tail). */
  let done = 0
  let tailEnd = 0
  for await (const [offset, length] of regions) {
    if (length <= 0) continue
    const end = offset + length
    if (offset < tailEnd) {
      // Same block as the previous region's tail: the gap between them is read for hashing.
      if (offset > done) yield { offset: done, length: offset - done, write: false }
    } else {
      if (tailEnd > done) yield { offset: done, length: tailEnd - done, write: false }
      const head = blockStart(offset)
      if (head < offset) yield { offset: head, length: offset - head, write: false }
    }
    yield { offset, length, write: true }
    done = end
    tailEnd = Math.max(tailEnd, blockEnd(end))
  }
  if (tailEnd > done) yield { offset: done, length: tailEnd - done, write: false }
}
