import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { HashPool, sharedBuffer } from '../../src/digest/pool.ts'

describe('digest: HashPool', () => {
  it('hashes shared buffers in place', async () => {
    await using pool = new HashPool(2)
    const b = sharedBuffer(1 << 20)
    b.fill(7)
    const want = createHash('sha256').update(b).digest()
    assert.deepEqual(await Promise.all([pool.sha256(b), pool.sha256(b.subarray(5))]), [
      want,
      createHash('sha256').update(b.subarray(5)).digest(),
    ])
  })

  it('rejects, never leaves waiting, what a failed thread had and what comes after', async () => {
    await using pool = new HashPool(1)
    const b = sharedBuffer(16)
    // A view past the end of its memory makes the thread throw: it ends.
    const bad = { buffer: b.buffer, byteOffset: 0, length: 1 << 20 } as unknown as Buffer
    await assert.rejects(pool.sha256(bad), RangeError)
    await assert.rejects(pool.sha256(b), RangeError)
  })
})
