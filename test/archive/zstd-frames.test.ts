import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, open, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { ZstdFrameWriter, framesFor, zstdThreads } from '../../src/archive/zstd-frames.ts'
import type { FrameIndex } from '../../src/archive/zstd-frames.ts'
import { execFileSync } from 'node:child_process'

const indexOf = (sizes: readonly number[], frameBytes: number): FrameIndex => ({
  version: 1,
  frameBytes,
  frames: sizes.map((u, i) => [100 + i, u] as [number, number]),
})

describe('archive/zstd-frames', () => {
  it('framesFor: the frames holding a range are exactly those overlapping it, in order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }),
        fc.nat(),
        fc.nat(),
        (sizes, a, b) => {
          const total = sizes.reduce((x, y) => x + y, 0)
          const start = a % (total + 1)
          const end = start + (b % (total - start + 1))
          const got = framesFor(indexOf(sizes, 50), start, end)
          let u = 0
          let c = 0
          const want = []
          for (const [i, s] of sizes.entries()) {
            if (u + s > start && u < end) {
              want.push({ compressedOffset: c, compressedBytes: 100 + i, offset: u, bytes: s })
            }
            u += s
            c += 100 + i
          }
          assert.deepEqual(got, want)
        },
      ),
    )
  })

  it('framesFor: an index that ends before the range is ARCHIVE_INVALID', () => {
    assert.throws(() => framesFor(indexOf([10, 10], 10), 5, 21), {
      code: 'ARCHIVE_INVALID',
      message: /ends at 20, before 21/,
    })
  })

  it('zstdThreads: 0 is half of the cores, at least one; out of range is USAGE', () => {
    assert.ok(zstdThreads(0) >= 1)
    assert.equal(zstdThreads(3), 3)
    assert.throws(() => zstdThreads(-1), { code: 'USAGE' })
    assert.throws(() => zstdThreads(1.5), { code: 'USAGE' })
  })

  it('writes independent frames: the file is one zstd stream, and each frame decodes alone', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gb-frames-'))
    try {
      // Compressible text with a random tail: frames of 64 KiB, the last one short.
      const text = Buffer.from('guestbackup frame test line\n'.repeat(10_000))
      const data = Buffer.concat([text, createHash('sha256').update('x').digest()])
      const path = join(dir, 'a.zst')
      const fh = await open(path, 'w')
      const w = new ZstdFrameWriter(fh, {
        threads: 3,
        frameBytes: 64 * 1024,
        signal: new AbortController().signal,
      })
      // Pushed in odd pieces: frames are cut by size, not by push.
      for (let at = 0; at < data.length; at += 7777) await w.push(data.subarray(at, at + 7777))
      const index = await w.end()
      await fh.close()
      const file = await readFile(path)
      assert.equal(w.written, file.length)
      assert.equal(index.frames.length, Math.ceil(data.length / (64 * 1024)))
      assert.equal(
        index.frames.reduce((s, [c]) => s + c, 0),
        file.length,
      )
      assert.equal(
        index.frames.reduce((s, [, u]) => s + u, 0),
        data.length,
      )
      assert.ok(execFileSync('zstd', ['-d', '-c', '-q', path]).equals(data))
      // The third frame on its own.
      const [span] = framesFor(index, 2 * 64 * 1024, 2 * 64 * 1024 + 1)
      assert.ok(span)
      const one = file.subarray(span.compressedOffset, span.compressedOffset + span.compressedBytes)
      const part = join(dir, 'one.zst')
      await (await open(part, 'w')).writeFile(one)
      const dec = execFileSync('zstd', ['-d', '-c', '-q', part])
      assert.ok(dec.equals(data.subarray(span.offset, span.offset + span.bytes)))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
