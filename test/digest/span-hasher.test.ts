import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { SpanHasher } from '../../src/digest/span-hasher.ts'

const sha = (...parts: Buffer[]): string => {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest('hex')
}

describe('digest: SpanHasher', () => {
  it('hashes the stream and spans across slots, answering each span where it ends', async () => {
    await using h = new SpanHasher(2, 64)
    const stream = Buffer.from(Array.from({ length: 100 }, (_, i) => i))
    const [a, b] = [h.slot(0), h.slot(1)]
    stream.copy(a, 0, 0, 64)
    stream.copy(b, 0, 64, 100)
    // Span 0: bytes 10..70 (crosses the slots), span 1: empty at 80, span 2: 90..100.
    const first = h.hash(0, 64, 0, [0, 10, 64, 0])
    const second = h.hash(1, 36, 64, [0, 64, 70, 1, 1, 80, 80, 1, 2, 90, 100, 1])
    assert.deepEqual([...(await first)], [])
    assert.deepEqual(
      [...(await second)],
      [
        [0, sha(stream.subarray(10, 70))],
        [1, sha()],
        [2, sha(stream.subarray(90, 100))],
      ],
    )
    assert.deepEqual(await h.end(), { digest: sha(stream), bytes: 100 })
  })

  it('gives the digest of the stream however it is cut into slots', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 300 }),
        fc.integer({ min: 1, max: 64 }),
        async (bytes, slotBytes) => {
          await using h = new SpanHasher(3, slotBytes)
          const data = Buffer.from(bytes)
          const waits: Promise<unknown>[] = []
          for (let at = 0, i = 0; at < data.length; at += slotBytes, i++) {
            // Three slots in flight at most: wait for the one about to be refilled.
            if (i >= 3) await waits[i - 3]
            const n = data.copy(h.slot(i % 3), 0, at, at + slotBytes)
            waits.push(h.hash(i % 3, n, at, [0, at, at + n, at + n >= data.length ? 1 : 0]))
          }
          const all = await Promise.all(waits)
          assert.deepEqual(await h.end(), { digest: sha(data), bytes: data.length })
          if (data.length > 0) assert.equal((all.at(-1) as Map<number, string>).get(0), sha(data))
        },
      ),
      { numRuns: 40 },
    )
  })

  it('hashes a run of zeroes (kind 2) in its place among the bytes', async () => {
    await using h = new SpanHasher(1, 16)
    Buffer.from('abcdefgh').copy(h.slot(0))
    const d = await h.hash(0, 8, 0, [0, 0, 4, 0, 0, 0, 3 << 20, 2, 0, 4, 8, 0, 0, 8, 8, 1])
    assert.equal(d.get(0), sha(Buffer.from('abcd'), Buffer.alloc(3 << 20), Buffer.from('efgh')))
  })

  it('refuses a span outside its slot', async () => {
    await using h = new SpanHasher(1, 16)
    await assert.rejects(h.hash(0, 8, 100, [0, 99, 104, 1]), /outside its slot/)
    await assert.rejects(h.hash(0, 8, 100, [0, 104, 109, 1]), /outside its slot/)
  })

  it('rejects what waits on a thread that was stopped, and every later request', async () => {
    const h = new SpanHasher(1, 16)
    await h[Symbol.asyncDispose]()
    await assert.rejects(h.hash(0, 4, 0, []), { code: 'ABORTED' })
    await assert.rejects(h.end(), { code: 'ABORTED' })
  })
})
