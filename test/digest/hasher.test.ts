import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { BlockDigests, zeroDigest } from '../../src/digest/blocks.ts'
import { DiskHasher } from '../../src/digest/hasher.ts'

const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest()

/** The digests of `disk` computed directly, block by block. */
const direct = (disk: Buffer, blockSize: number): BlockDigests => {
  const d = BlockDigests.empty(disk.length, blockSize)
  for (let i = 0; i < d.count; i++) d.set(i, sha(disk.subarray(i * blockSize, (i + 1) * blockSize)))
  return d
}

const diskArb = fc.record({
  blockSize: fc.integer({ min: 1, max: 64 }),
  // Runs of zeroes and data, so that zero pieces, partly zero blocks and whole zero blocks occur.
  runs: fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 100 })), {
    minLength: 1,
    maxLength: 12,
  }),
  cuts: fc.array(fc.integer({ min: 1, max: 50 }), { maxLength: 40 }),
  seed: fc.integer(),
})

describe('digest: DiskHasher', () => {
  it('gives every block its SHA-256 whatever the pieces and the order they finish in', async () => {
    await fc.assert(
      fc.asyncProperty(diskArb, async ({ blockSize, runs, cuts, seed }) => {
        const parts = runs.map(([zero, n], i) =>
          zero ? Buffer.alloc(n) : Buffer.alloc(n, (i % 255) + 1),
        )
        const disk = Buffer.concat(parts)
        // Pieces as the copy engine hands them out: data pieces inside one block, zero pieces
        // of any length, in increasing order.
        const pieces: { offset: number; length: number; zero: boolean }[] = []
        let at = 0
        let r = 0
        for (const [zero, n] of runs) {
          const end = at + n
          while (at < end) {
            const cut = cuts[r++ % Math.max(cuts.length, 1)] ?? n
            const limit = zero ? end : Math.min(end, (Math.floor(at / blockSize) + 1) * blockSize)
            const len = Math.min(cut, limit - at)
            pieces.push({ offset: at, length: len, zero })
            at += len
          }
        }
        const hasher = new DiskHasher(BlockDigests.empty(disk.length, blockSize))
        // Hand every piece out at once; each finishes after a pseudo-random delay.
        let x = seed
        await Promise.all(
          pieces.map(async (p) => {
            x = (x * 1103515245 + 12345) & 0x7fffffff
            for (let i = x % 4; i > 0; i--) await Promise.resolve()
            if (p.zero) await hasher.zero(p.offset, p.length)
            else await hasher.data(p.offset, disk.subarray(p.offset, p.offset + p.length))
          }),
        )
        const got = hasher.finish()
        assert.equal(got.content(), direct(disk, blockSize).content())
      }),
    )
  })

  it('sets an all-zero block without hashing it and knows the zero digest', () => {
    assert.deepEqual(zeroDigest(4096), sha(Buffer.alloc(4096)))
  })

  it('refuses to finish with a block never hashed, naming it', async () => {
    const hasher = new DiskHasher(BlockDigests.empty(30, 10))
    await hasher.data(0, Buffer.alloc(10, 1))
    await hasher.zero(20, 10)
    assert.throws(() => hasher.finish(), /block 1 \(offset 10\) of the disk was not hashed/)
  })

  it('rejects the pieces waiting for their turn when the copy fails', async () => {
    const hasher = new DiskHasher(BlockDigests.empty(30, 10))
    const waiting = hasher.data(5, Buffer.alloc(5, 1))
    hasher.fail(new Error('read failed at 0'))
    await assert.rejects(waiting, /read failed at 0/)
    await assert.rejects(hasher.data(10, Buffer.alloc(10)), /read failed at 0/)
  })

  it('carries the parent digests of blocks an incremental does not touch', async () => {
    const parentDisk = Buffer.alloc(30, 7)
    const parent = direct(parentDisk, 10)
    const child = Buffer.from(parentDisk)
    child.fill(9, 12, 14)
    const carried = BlockDigests.from(30, 10, parent.bytes(), 'parent')
    const hasher = new DiskHasher(carried)
    await hasher.data(10, child.subarray(10, 20))
    assert.equal(hasher.finish().content(), direct(child, 10).content())
  })
})
