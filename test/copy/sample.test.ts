import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { assertSampleClean, sampleCleanBlocks } from '../../src/copy/sample.ts'
import { isBackupError } from '../../src/errors.ts'

const K = 64 * 1024

const regions = async function* (rs: [number, number][]) {
  await Promise.resolve()
  yield* rs
}

describe('copy/sample', () => {
  const size = 64 * K
  const source = Buffer.alloc(size, 1)
  const read = (b: Buffer) => (off: number, len: number) =>
    Promise.resolve(b.subarray(off, off + len))

  it('compares only blocks outside the dirty regions', async () => {
    const target = Buffer.from(source)
    target.fill(9, 0, 32 * K) // differs only where the bitmap says dirty
    const r = await sampleCleanBlocks({
      size,
      dirty: regions([[0, 32 * K]]),
      readSource: read(source),
      readTarget: read(target),
      count: 20,
    })
    assert.equal(r.checked, 20)
    assert.deepEqual(r.mismatches, [])
    assertSampleClean('d', r)
  })

  it('catches a clean block that changed and fails with VERIFY_FAILED', async () => {
    const target = Buffer.from(source)
    target[40 * K] = 7
    let i = 0
    const r = await sampleCleanBlocks({
      size,
      dirty: regions([]),
      readSource: read(source),
      readTarget: read(target),
      count: 3,
      random: () => [10, 40, 50][i++] ?? 0,
    })
    assert.deepEqual(r.mismatches, [40 * K])
    assert.throws(
      () => {
        assertSampleClean('drive-scsi0', r)
      },
      (e: unknown) => isBackupError(e, 'VERIFY_FAILED'),
    )
  })

  it('gives up quietly when everything is dirty', async () => {
    const r = await sampleCleanBlocks({
      size,
      dirty: regions([[0, size]]),
      readSource: read(source),
      readTarget: read(source),
      count: 5,
    })
    assert.equal(r.checked, 0)
  })
})
