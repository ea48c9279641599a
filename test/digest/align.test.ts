import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { alignRegions } from '../../src/digest/align.ts'
import type { Segment } from '../../src/digest/align.ts'

const collect = async (
  regions: (readonly [number, number])[],
  blockSize: number,
  size: number,
): Promise<Segment[]> => {
  const out: Segment[] = []
  const src = (async function* () {
    await Promise.resolve()
    yield* regions
  })()
  for await (const s of alignRegions(src, blockSize, size)) out.push(s)
  return out
}

/** Sorted, non-overlapping regions inside [0, size). */
const regionsArb = fc
  .record({
    size: fc.integer({ min: 1, max: 2000 }),
    blockSize: fc.integer({ min: 1, max: 300 }),
    cuts: fc.uniqueArray(fc.integer({ min: 0, max: 2000 }), { maxLength: 20 }),
  })
  .map(({ size, blockSize, cuts }) => {
    const points = [...new Set(cuts.map((c) => c % (size + 1)))].sort((a, b) => a - b)
    const regions: [number, number][] = []
    for (let i = 0; i + 1 < points.length; i += 2) {
      const [a, b] = [points[i] ?? 0, points[i + 1] ?? 0]
      if (b > a) regions.push([a, b - a])
    }
    return { size, blockSize, regions }
  })

describe('digest: alignRegions', () => {
  it('writes exactly the regions and reads the rest of every block they touch, once', async () => {
    await fc.assert(
      fc.asyncProperty(regionsArb, async ({ size, blockSize, regions }) => {
        const segs = await collect(regions, blockSize, size)
        // The written segments are the regions, unchanged and in order.
        assert.deepEqual(
          segs.filter((s) => s.write).map((s) => [s.offset, s.length]),
          regions,
        )
        // Ordered, adjacent or apart, never overlapping, never empty.
        for (let i = 1; i < segs.length; i++) {
          const [p, s] = [segs[i - 1], segs[i]]
          assert.ok(p && s && p.offset + p.length <= s.offset && s.length > 0)
        }
        // Covered bytes are exactly the blocks some region touches.
        const touched = new Set<number>()
        for (const [o, l] of regions) {
          for (let b = Math.floor(o / blockSize); b * blockSize < o + l; b++) touched.add(b)
        }
        const covered = new Set<number>()
        for (const s of segs) for (let x = s.offset; x < s.offset + s.length; x++) covered.add(x)
        for (let x = 0; x < size; x++) {
          assert.equal(covered.has(x), touched.has(Math.floor(x / blockSize)), `byte ${x}`)
        }
      }),
    )
  })

  it('joins two regions in one block with a hash-only gap', async () => {
    assert.deepEqual(
      await collect(
        [
          [2, 1],
          [5, 2],
        ],
        10,
        25,
      ),
      [
        { offset: 0, length: 2, write: false },
        { offset: 2, length: 1, write: true },
        { offset: 3, length: 2, write: false },
        { offset: 5, length: 2, write: true },
        { offset: 7, length: 3, write: false },
      ],
    )
  })

  it('ends the last block at the disk size', async () => {
    assert.deepEqual(await collect([[21, 1]], 10, 25), [
      { offset: 20, length: 1, write: false },
      { offset: 21, length: 1, write: true },
      { offset: 22, length: 3, write: false },
    ])
  })
})
