import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { copyBlocks } from '../../src/copy/copy.ts'
import type { CopySource, CopyTarget, Piece } from '../../src/copy/copy.ts'
import { BlockDigests, zeroDigest } from '../../src/digest/blocks.ts'
import { DiskHasher } from '../../src/digest/hasher.ts'

const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest()

/** The digests of `disk` computed directly, block by block. */
const direct = (disk: Buffer, blockSize: number): BlockDigests => {
  const d = BlockDigests.empty(disk.length, blockSize)
  for (let i = 0; i < d.count; i++) d.set(i, sha(disk.subarray(i * blockSize, (i + 1) * blockSize)))
  return d
}

/** An in-memory disk: its regions, and an allocation map where it has zero runs. */
const memSource = (
  disk: Buffer,
  regions: readonly (readonly [number, number])[],
  zeroRuns: readonly (readonly [number, number])[],
): CopySource & { readBytes: number } => {
  const src = {
    readBytes: 0,
    size: disk.length,
    async *regions() {
      await Promise.resolve()
      yield* regions
    },
    async *allocation(offset: number, length: number): AsyncGenerator<Piece> {
      await Promise.resolve()
      const end = offset + length
      let o = offset
      for (const [zo, zl] of zeroRuns) {
        const s = Math.max(zo, o)
        const e = Math.min(zo + zl, end)
        if (e <= s) continue
        if (s > o) yield { offset: o, length: s - o, zero: false }
        yield { offset: s, length: e - s, zero: true }
        o = e
      }
      if (o < end) yield { offset: o, length: end - o, zero: false }
    },
    async read(offset: number, length: number, _s: AbortSignal, into?: Buffer) {
      // Finish in a shuffled order, as NBD replies do.
      for (let i = (offset * 7) % 3; i > 0; i--) await Promise.resolve()
      src.readBytes += length
      const b = into ?? Buffer.alloc(length)
      disk.copy(b, 0, offset, offset + length)
      return b
    },
  }
  return src
}

const memTarget = (size: number): CopyTarget & { buf: Buffer } => {
  const t = {
    buf: Buffer.alloc(size, 0xee),
    write(offset: number, d: Buffer) {
      d.copy(t.buf, offset)
      return Promise.resolve()
    },
    writeZeroes(offset: number, length: number) {
      t.buf.fill(0, offset, offset + length)
      return Promise.resolve()
    },
    flush: () => Promise.resolve(),
  }
  return t
}

const diskArb = fc.record({
  blockSize: fc.integer({ min: 1, max: 64 }),
  // Runs of zeroes and data: zero extents, partly zero blocks and whole zero blocks occur.
  runs: fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 100 })), {
    minLength: 1,
    maxLength: 12,
  }),
  cuts: fc.uniqueArray(fc.integer({ min: 0, max: 1300 }), { maxLength: 12 }),
  mapped: fc.boolean(),
})

describe('digest: DiskHasher in the copy engine', () => {
  it('gives every block its SHA-256 and writes exactly the regions, whatever the layout', async () => {
    await fc.assert(
      fc.asyncProperty(diskArb, async ({ blockSize, runs, cuts, mapped }) => {
        const zeroRuns: [number, number][] = []
        let at = 0
        const disk = Buffer.concat(
          runs.map(([zero, n], i) => {
            if (zero) zeroRuns.push([at, n])
            at += n
            return zero ? Buffer.alloc(n) : Buffer.alloc(n, (i % 255) + 1)
          }),
        )
        // The regions of an incremental: pairs of cut points (sorted, non-overlapping).
        const points = [...new Set(cuts.map((c) => c % (disk.length + 1)))].sort((a, b) => a - b)
        const regions: [number, number][] = []
        for (let i = 0; i + 1 < points.length; i += 2) {
          const [a, b] = [points[i] ?? 0, points[i + 1] ?? 0]
          if (b > a) regions.push([a, b - a])
        }
        // The parent's digests are those of an older disk: the untouched blocks keep them.
        const older = Buffer.alloc(disk.length, 0x5a)
        const parent = direct(older, blockSize)
        const expected = direct(older, blockSize)
        const now = direct(disk, blockSize)
        for (const [o, l] of regions) {
          for (let b = Math.floor(o / blockSize); b * blockSize < o + l; b++) {
            expected.set(b, now.get(b))
          }
        }
        const src = memSource(disk, regions, mapped ? zeroRuns : [])
        const dst = memTarget(disk.length)
        const hasher = new DiskHasher(
          BlockDigests.from(disk.length, blockSize, parent.bytes(), 'p'),
        )
        const stats = await copyBlocks(src, dst, {
          targetIsZero: false,
          hasher,
          inFlight: 3,
          signal: new AbortController().signal,
        })
        assert.equal(hasher.finish().content(), expected.content())
        // Only the regions are written, every byte of them.
        const want = Buffer.alloc(disk.length, 0xee)
        for (const [o, l] of regions) disk.copy(want, o, o, o + l)
        assert.deepEqual(dst.buf, want)
        assert.equal(
          stats.totalBytes,
          regions.reduce((n, [, l]) => n + l, 0),
        )
      }),
    )
  })

  it('hashes a whole disk and reads no block the allocation map calls zero', async () => {
    const disk = Buffer.concat([Buffer.alloc(40, 3), Buffer.alloc(80), Buffer.alloc(5, 4)])
    const src = memSource(disk, [[0, disk.length]], [[40, 80]])
    const hasher = new DiskHasher(BlockDigests.empty(disk.length, 20))
    await copyBlocks(src, memTarget(disk.length), {
      targetIsZero: true,
      hasher,
      hashOnly: true,
      signal: new AbortController().signal,
    })
    assert.equal(hasher.finish().content(), direct(disk, 20).content())
    // Blocks 0, 1 and the last one are read; the four zero blocks between are not.
    assert.equal(src.readBytes, 40 + 5)
    assert.deepEqual(hasher.digests.get(3), zeroDigest(20))
  })

  it('refuses to finish with a block never hashed, naming it', async () => {
    const hasher = new DiskHasher(BlockDigests.empty(30, 10))
    await hasher.block(0, Buffer.alloc(10, 1))
    hasher.zeroBlock(2)
    assert.throws(() => hasher.finish(), /block 1 \(offset 10\) of the disk was not hashed/)
  })

  it('refuses bytes that are not a whole block', () => {
    const hasher = new DiskHasher(BlockDigests.empty(30, 10))
    assert.throws(() => hasher.block(1, Buffer.alloc(9)), /block 1 hashed with 9 bytes, not 10/)
  })

  it('covers a hole of many blocks with one zero job: one WRITE_ZEROES, every digest set', async () => {
    // 1000 whole blocks and a short last one, all a hole; and a data block amid a second hole.
    const disk = Buffer.alloc(10_005)
    disk.fill(9, 5000, 5010)
    const src = memSource(
      disk,
      [[0, disk.length]],
      [
        [0, 5000],
        [5010, 4995],
      ],
    )
    const dst = memTarget(disk.length)
    let zeroCalls = 0
    const write = dst.writeZeroes.bind(dst)
    dst.writeZeroes = (o, l, sig) => {
      zeroCalls++
      return write(o, l, sig)
    }
    const hasher = new DiskHasher(BlockDigests.empty(disk.length, 10))
    await copyBlocks(src, dst, {
      targetIsZero: false,
      hasher,
      inFlight: 3,
      signal: new AbortController().signal,
    })
    assert.equal(hasher.finish().content(), direct(disk, 10).content())
    assert.equal(zeroCalls, 2, 'the zero blocks before and after the data block, one call each')
    assert.equal(src.readBytes, 10)
    assert.deepEqual(dst.buf, disk)
  })
})
