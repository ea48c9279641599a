import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import type { CopySource } from '../../src/copy/copy.ts'
import {
  assertSampleClean,
  BlockChecker,
  CleanBlockSampler,
  compareBlocks,
} from '../../src/copy/sample.ts'
import { isBackupError } from '../../src/errors.ts'

const K = 64 * 1024
const signal = new AbortController().signal

/** A source that only has regions; `walk` drains them as the copy engine would. */
const sourceOf = (size: number, rs: readonly (readonly [number, number])[]): CopySource => ({
  size,
  async *regions() {
    await Promise.resolve()
    yield* rs
  },
  read: () => Promise.reject(new Error('unused')),
})
const walk = async (src: CopySource): Promise<[number, number][]> => {
  const out: [number, number][] = []
  for await (const [o, l] of src.regions(signal)) out.push([o, l])
  return out
}

describe('copy/sample', () => {
  it('passes the regions through unchanged', async () => {
    const rs: [number, number][] = [
      [0, K],
      [3 * K, 5],
    ]
    const sampler = new CleanBlockSampler({ size: 16 * K, count: 4 })
    assert.deepEqual(await walk(sampler.tap(sourceOf(16 * K, rs))), rs)
  })

  it('picks only whole blocks that no dirty region touches, inside the disk', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 64 }).chain((blocks) =>
          fc.record({
            size: fc.integer({ min: blocks * 512, max: blocks * 512 + 511 }),
            // Sorted, disjoint regions at byte granularity (bitmaps need not be block aligned).
            cuts: fc.uniqueArray(fc.integer({ min: 0, max: blocks * 512 }), { maxLength: 16 }),
            count: fc.integer({ min: 1, max: 8 }),
          }),
        ),
        async ({ size, cuts, count }) => {
          const points = [...cuts].sort((a, b) => a - b)
          const rs: [number, number][] = []
          for (let i = 0; i + 1 < points.length; i += 2) {
            const [a, b] = [points[i] ?? 0, points[i + 1] ?? 0]
            if (b > a) rs.push([a, b - a])
          }
          const sampler = new CleanBlockSampler({ size, count, block: 512 })
          await walk(sampler.tap(sourceOf(size, rs)))
          const picks = sampler.picks()
          const clean = (o: number) => rs.every(([ro, rl]) => ro + rl <= o || ro >= o + 512)
          for (const p of picks) {
            assert.equal(p % 512, 0)
            assert.ok(p + 512 <= size, `${p} reaches past ${size}`)
            assert.ok(clean(p), `${p} overlaps a dirty region of ${JSON.stringify(rs)}`)
          }
          const anyClean = Array.from({ length: Math.floor(size / 512) }, (_, i) => i * 512).some(
            clean,
          )
          assert.equal(picks.length > 0, anyClean)
        },
      ),
    )
  })

  it('spreads the picks over every clean stretch', async () => {
    // Two clean stretches of 1 and 3 blocks: over many draws the second gets about 3/4.
    const rs: [number, number][] = [
      [K, K],
      [2 * K, K],
    ]
    let second = 0
    const runs = 400
    for (let i = 0; i < runs; i++) {
      const sampler = new CleanBlockSampler({ size: 6 * K, count: 1 })
      await walk(sampler.tap(sourceOf(6 * K, rs)))
      if ((sampler.picks()[0] ?? 0) >= 3 * K) second++
    }
    assert.ok(second > runs * 0.6 && second < runs * 0.9, String(second))
  })

  it('picks nothing when everything is dirty, and refuses to answer before the walk ends', async () => {
    const sampler = new CleanBlockSampler({ size: 4 * K, count: 5 })
    assert.throws(
      () => sampler.picks(),
      (e: unknown) => isBackupError(e, 'INTERNAL'),
    )
    await walk(sampler.tap(sourceOf(4 * K, [[0, 4 * K]])))
    assert.deepEqual(sampler.picks(), [])
  })

  it('catches a clean block that changed and fails with VERIFY_FAILED', async () => {
    const source = Buffer.alloc(64 * K, 1)
    const target = Buffer.from(source)
    target[40 * K] = 7
    const read = (b: Buffer) => (off: number, len: number) =>
      Promise.resolve(b.subarray(off, off + len))
    const r = await compareBlocks({
      offsets: [10 * K, 40 * K, 50 * K],
      readSource: read(source),
      readTarget: read(target),
    })
    assert.equal(r.checked, 3)
    assert.deepEqual(r.mismatches, [40 * K])
    assert.throws(
      () => {
        assertSampleClean('drive-scsi0', r)
      },
      (e: unknown) =>
        isBackupError(e, 'VERIFY_FAILED') && e.message.includes('1 of 3 blocks the dirty bitmap'),
    )
  })

  it('announces the picks known clean while the walk goes on, each once, all among the picks', async () => {
    // 64 blocks, dirty: block 1 and blocks 40-41. Draws land on clean blocks 3 and 10 (twice)
    // before the first region ends the stretch they are in, on dirty block 40, and on 50.
    const draws = [10, 3, 40, 10, 50]
    const random = (max: number): number => (draws.length > 0 ? (draws.shift() ?? 0) : max - 1)
    const announced: number[] = []
    const sampler = new CleanBlockSampler({
      size: 64 * K,
      count: 5,
      random,
      onPick: (off) => announced.push(off),
    })
    const seen: number[][] = []
    for await (const [o] of sampler
      .tap(
        sourceOf(64 * K, [
          [K, K],
          [12 * K, K],
          [40 * K, 2 * K],
        ]),
      )
      .regions(signal)) {
      seen.push([o, announced.length])
    }
    // When the region after block 10 arrives, blocks 3 and 10 are known clean (announced);
    // when the region at block 40 arrives, nothing more; 50 only once the walk ended.
    assert.deepEqual(seen, [
      [K, 0],
      [12 * K, 2],
      [40 * K, 2],
    ])
    assert.deepEqual(announced, [3 * K, 10 * K, 50 * K])
    const picks = sampler.picks()
    for (const a of announced) assert.ok(picks.includes(a), `${a} not among ${picks.join(' ')}`)
    // The draw on dirty block 40 was made up for by one reservoir draw among the clean blocks.
    assert.equal(picks.length, 4)
  })

  it('compares each named block once, a bounded number at a time', async () => {
    let active = 0
    let most = 0
    const reads: number[] = []
    const read = async (off: number, len: number): Promise<Buffer> => {
      active++
      most = Math.max(most, active)
      reads.push(off)
      await new Promise((r) => setTimeout(r, 2))
      active--
      return Buffer.alloc(len, off === 5 * K ? 1 : 0)
    }
    const checker = new BlockChecker({
      inFlight: 2,
      readSource: read,
      readTarget: (off, len) => Promise.resolve(Buffer.alloc(len)),
    })
    for (const off of [0, K, 2 * K, K]) checker.add(off)
    const r = await checker.finish([0, K, 5 * K])
    assert.deepEqual(r, { checked: 3, mismatches: [5 * K] })
    assert.deepEqual(
      reads.sort((a, b) => a - b),
      [0, K, 2 * K, 5 * K],
    )
    assert.equal(most, 2)
  })
})
