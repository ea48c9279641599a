import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { copyBlocks } from '../../src/copy/copy.ts'
import type { CopySource, CopyTarget, Piece } from '../../src/copy/copy.ts'
import { isBackupError } from '../../src/errors.ts'

/** An in-memory disk with an allocation map: byte array + list of zero ranges. */
const memSource = (
  data: Buffer,
  regions: [number, number][],
  zeroRanges: [number, number][] = [],
  failAt?: number,
): CopySource & { reads: number } => {
  const src = {
    reads: 0,
    size: data.length,
    async *regions() {
      await Promise.resolve()
      for (const r of regions) yield r
    },
    async *allocation(offset: number, length: number): AsyncGenerator<Piece> {
      await Promise.resolve()
      let o = offset
      const end = offset + length
      const zs = zeroRanges
        .filter(([zo, zl]) => zo < end && zo + zl > offset)
        .sort((a, b) => a[0] - b[0])
      for (const [zo, zl] of zs) {
        const s = Math.max(zo, offset)
        const e = Math.min(zo + zl, end)
        if (s > o) yield { offset: o, length: s - o, zero: false }
        yield { offset: s, length: e - s, zero: true }
        o = e
      }
      if (o < end) yield { offset: o, length: end - o, zero: false }
    },
    read(offset: number, length: number) {
      src.reads++
      if (failAt !== undefined && offset <= failAt && failAt < offset + length) {
        return Promise.reject(new Error('EIO from source'))
      }
      return Promise.resolve(Buffer.from(data.subarray(offset, offset + length)))
    },
  }
  return src
}

const memTarget = (
  init: Buffer,
): CopyTarget & { buf: Buffer; zeroCalls: number; flushed: boolean } => {
  const t = {
    buf: Buffer.from(init),
    zeroCalls: 0,
    flushed: false,
    write(offset: number, d: Buffer) {
      d.copy(t.buf, offset)
      return Promise.resolve()
    },
    writeZeroes(offset: number, length: number) {
      t.zeroCalls++
      t.buf.fill(0, offset, offset + length)
      return Promise.resolve()
    },
    flush() {
      t.flushed = true
      return Promise.resolve()
    },
  }
  return t
}

const signal = new AbortController().signal

describe('copy/copy', () => {
  it('copies data, skips zero ranges into a zero target, and flushes', async () => {
    const size = 1 << 20
    const data = Buffer.alloc(size)
    data.fill(0xab, 0, 4096)
    data.fill(0xcd, 500_000, 600_000)
    const src = memSource(
      data,
      [[0, size]],
      [
        [4096, 495_904],
        [600_000, size - 600_000],
      ],
    )
    const dst = memTarget(Buffer.alloc(size))
    const st = await copyBlocks(src, dst, { targetIsZero: true, chunk: 65536, signal })
    assert.ok(dst.buf.equals(data))
    assert.equal(dst.zeroCalls, 0)
    assert.ok(dst.flushed)
    assert.equal(st.totalBytes, size)
    assert.equal(st.dataBytes + st.zeroBytes, size)
    assert.equal(st.dataBytes, 4096 + 100_000)
  })

  it('writes zero ranges as explicit zeroes when the target has older data', async () => {
    const size = 256 * 1024
    const data = Buffer.alloc(size)
    data.fill(0x11, 0, 1000)
    const src = memSource(data, [[0, size]], [[1000, size - 1000]])
    const dst = memTarget(Buffer.alloc(size, 0xff))
    await copyBlocks(src, dst, { targetIsZero: false, chunk: 4096, signal })
    assert.ok(dst.buf.equals(data))
    assert.ok(dst.zeroCalls > 0)
  })

  it('turns all-zero data reads into zeroes (sparse without an allocation map)', async () => {
    const size = 64 * 1024
    const data = Buffer.alloc(size)
    data[100] = 1
    const mem = memSource(data, [[0, size]])
    const src: CopySource = {
      size,
      regions: (s) => mem.regions(s),
      read: (o, l, s) => mem.read(o, l, s),
    }
    const dst = memTarget(Buffer.alloc(size))
    const st = await copyBlocks(src, dst, { targetIsZero: true, chunk: 4096, signal })
    assert.equal(st.dataBytes, 4096)
    assert.ok(dst.buf.equals(data))
  })

  it('copies exactly the given regions for any layout', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(60), fc.integer({ min: 1, max: 20 })), { maxLength: 8 }),
        fc.array(fc.tuple(fc.nat(80), fc.integer({ min: 1, max: 30 })), { maxLength: 6 }),
        fc.integer({ min: 1, max: 4 }),
        async (rawRegions, rawZeros, inFlight) => {
          const unit = 512
          const size = 100 * unit
          const data = Buffer.alloc(size)
          for (let i = 0; i < size; i++) data[i] = (i * 7 + 3) & 0xff
          // Disjoint sorted regions.
          const regions: [number, number][] = []
          let cursor = 0
          for (const [gap, len] of rawRegions) {
            const o = cursor + gap
            if (o + len > 100) break
            regions.push([o * unit, len * unit])
            cursor = o + len
          }
          const zeros = rawZeros
            .map(([o, l]) => [o * unit, Math.min(l, 100 - o) * unit] as [number, number])
            .filter(([, l]) => l > 0)
          for (const [o, l] of zeros) data.fill(0, o, o + l)
          const init = Buffer.alloc(size, 0xee)
          const dst = memTarget(init)
          await copyBlocks(memSource(data, regions, zeros), dst, {
            targetIsZero: false,
            chunk: 3 * unit,
            inFlight,
            signal,
          })
          const expect = Buffer.from(init)
          for (const [o, l] of regions) data.copy(expect, o, o, o + l)
          assert.ok(dst.buf.equals(expect))
        },
      ),
      { numRuns: 200 },
    )
  })

  it('fails when the source fails, and stops the other workers', async () => {
    const size = 4 << 20
    const src = memSource(Buffer.alloc(size, 1), [[0, size]], [], 2 << 20)
    const dst = memTarget(Buffer.alloc(size))
    await assert.rejects(
      copyBlocks(src, dst, { targetIsZero: true, chunk: 65536, inFlight: 4, signal }),
      /EIO/,
    )
    assert.equal(dst.flushed, false)
    assert.ok(src.reads < 64, `read ${src.reads} chunks after the failure`)
  })

  it('aborts with ABORTED', async () => {
    const ac = new AbortController()
    const size = 1 << 20
    const src = memSource(Buffer.alloc(size, 1), [[0, size]])
    const dst = memTarget(Buffer.alloc(size))
    let n = 0
    await assert.rejects(
      copyBlocks(src, dst, {
        targetIsZero: true,
        chunk: 4096,
        inFlight: 1,
        signal: ac.signal,
        onProgress: () => {
          if (++n === 3) ac.abort()
        },
      }),
      (e: unknown) => isBackupError(e, 'ABORTED'),
    )
    assert.equal(dst.flushed, false)
  })

  it('walks the regions once and reports growing positions up to the disk size', async () => {
    const size = 1 << 20
    let walks = 0
    const mem = memSource(Buffer.alloc(size, 1), [
      [64 * 1024, 128 * 1024],
      [512 * 1024, 64 * 1024],
    ])
    const src: CopySource = {
      size,
      regions: (s) => {
        walks++
        return mem.regions(s)
      },
      read: (o, l, s) => mem.read(o, l, s),
    }
    const positions: number[] = []
    const st = await copyBlocks(src, memTarget(Buffer.alloc(size)), {
      targetIsZero: true,
      chunk: 16 * 1024,
      inFlight: 4,
      signal,
      onProgress: (position, total) => {
        assert.equal(total, size)
        positions.push(position)
      },
    })
    assert.equal(walks, 1)
    assert.equal(st.totalBytes, 192 * 1024)
    assert.deepEqual(
      positions,
      [...positions].sort((a, b) => a - b),
    )
    assert.equal(new Set(positions).size, positions.length, 'each position reported once')
    assert.equal(positions.at(-1), size)
  })
})
