import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  bitmapGenerationOf,
  nextBitmapName,
  planBitmapRepair,
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

  it('plans the repair a killed run needs: merge back, re-enable, or drop a lone disabled one', () => {
    const a = nextBitmapName('s', [], 1000)
    const b = nextBitmapName('s', [], 2000)
    const other = nextBitmapName('t', [], 1500)
    assert.deepEqual(planBitmapRepair('s', [{ name: a, enabled: true }]), {
      keep: a,
      merge: [],
      enable: false,
      remove: [],
    })
    assert.deepEqual(
      planBitmapRepair('s', [
        { name: b, enabled: true },
        { name: a, enabled: false },
        { name: other, enabled: false },
      ]),
      { keep: a, merge: [b], enable: true, remove: [] },
    )
    assert.deepEqual(planBitmapRepair('s', [{ name: a, enabled: false }]), {
      keep: undefined,
      merge: [],
      enable: false,
      remove: [a],
    })
    assert.deepEqual(planBitmapRepair('s', [{ name: other, enabled: true }]).keep, undefined)
  })
})
