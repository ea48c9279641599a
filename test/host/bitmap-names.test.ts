import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  bitmapGenerationOf,
  nextBitmapName,
  storeBitmaps,
} from '../../src/host/live/bitmap-names.ts'

describe('host/live/bitmap-names', () => {
  it('never hands out a name again, even after every bitmap was lost', () => {
    const first = nextBitmapName('s', [], 1000)
    // The bitmap is lost (QEMU crash, VM restart without persistence): no bitmaps left.
    const second = nextBitmapName('s', [], 1000)
    assert.notEqual(first, second)
    assert.equal(bitmapGenerationOf('s', first), 1000)
  })

  it('grows past the newest generation when the clock went backwards', () => {
    const existing = storeBitmaps('s', [nextBitmapName('s', [], 5000)])
    const next = nextBitmapName('s', existing, 10)
    assert.equal(bitmapGenerationOf('s', next), 5001)
  })

  it('recognises only bitmaps of its own store', () => {
    const a = nextBitmapName('a', [])
    const ab = nextBitmapName('a-b', [])
    assert.deepEqual(
      storeBitmaps('a', [ab, a, 'gb-a-12', 'other', 'gb-a-1-xyz']).map(([, n]) => n),
      [a],
    )
  })
})
