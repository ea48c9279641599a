import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { alignWrites } from '../../src/copy/align-writes.ts'
import { copyBlocks } from '../../src/copy/copy.ts'
import type { CopySource, CopyTarget, Piece } from '../../src/copy/copy.ts'
import { BlockDigests } from '../../src/digest/blocks.ts'
import { DiskHasher } from '../../src/digest/hasher.ts'
import { isBackupError } from '../../src/errors.ts'

const KiB = 1024
const signal = new AbortController().signal

describe('copy/align-writes', () => {
  it('widens a write to whole units inside its job', () => {
    assert.deepEqual(alignWrites([[4 * KiB, 8 * KiB]], 64 * KiB, 0, 4096 * KiB), [[0, 64 * KiB]])
    assert.deepEqual(alignWrites([[60 * KiB, 70 * KiB]], 64 * KiB, 0, 4096 * KiB), [[0, 128 * KiB]])
  })

  it('merges writes that share a unit or touch once widened', () => {
    const writes = [
      [4 * KiB, 8 * KiB],
      [12 * KiB, 16 * KiB],
      [130 * KiB, 131 * KiB],
      [200 * KiB, 256 * KiB],
    ] as const
    assert.deepEqual(alignWrites(writes, 64 * KiB, 0, 1024 * KiB), [
      [0, 64 * KiB],
      [128 * KiB, 256 * KiB],
    ])
  })

  it('stays inside the job (the end of the disk)', () => {
    assert.deepEqual(alignWrites([[8 * KiB, 9 * KiB]], 64 * KiB, 0, 12 * KiB), [[0, 12 * KiB]])
  })

  it('covers every write with aligned, ordered, disjoint ranges', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(1000), { maxLength: 20 }), (points) => {
        const sorted = [...new Set(points)].sort((a, b) => a - b)
        const writes: [number, number][] = []
        for (let i = 0; i + 1 < sorted.length; i += 2) {
          writes.push([sorted[i] ?? 0, sorted[i + 1] ?? 0])
        }
        const out = alignWrites(writes, 64, 0, 1000)
        for (const [i, [a, b]] of out.entries()) {
          assert.equal(a % 64, 0)
          assert.ok(b % 64 === 0 || b === 1000)
          assert.ok(i === 0 || a > (out[i - 1]?.[1] ?? 0), 'disjoint, not touching')
        }
        for (const [a, b] of writes) assert.ok(out.some(([x, y]) => x <= a && b <= y))
      }),
    )
  })
})

/** A disk in memory with an allocation map (zero ranges). */
const memSource = (data: Buffer, regions: [number, number][], zeros: [number, number][]) => {
  const src: CopySource = {
    size: data.length,
    async *regions() {
      await Promise.resolve()
      yield* regions
    },
    async *allocation(offset, length): AsyncGenerator<Piece> {
      await Promise.resolve()
      let o = offset
      const end = offset + length
      for (const [zo, zl] of zeros) {
        const s = Math.max(zo, o)
        const e = Math.min(zo + zl, end)
        if (e <= s) continue
        if (s > o) yield { offset: o, length: s - o, zero: false }
        yield { offset: s, length: e - s, zero: true }
        o = e
      }
      if (o < end) yield { offset: o, length: end - o, zero: false }
    },
    read: (offset, length) => Promise.resolve(Buffer.from(data.subarray(offset, offset + length))),
  }
  return src
}

/**
 * A target with the rules of a compressed qcow2 image (src/qemu/compress.ts): every write and
 * zero write covers whole clusters, and no cluster is written twice.
 */
const clusterTarget = (init: Buffer, cluster: number): CopyTarget & { buf: Buffer } => {
  const written = new Set<number>()
  const take = (what: string, offset: number, length: number): void => {
    if (offset % cluster !== 0 || (length % cluster !== 0 && offset + length !== init.length)) {
      throw new Error(`unaligned ${what} [${offset}, ${offset + length})`)
    }
    for (let c = offset / cluster; c * cluster < offset + length; c++) {
      if (written.has(c)) throw new Error(`cluster ${c} written twice`)
      written.add(c)
    }
  }
  const t = {
    buf: Buffer.from(init),
    write(offset: number, d: Buffer) {
      take('write', offset, d.length)
      d.copy(t.buf, offset)
      return Promise.resolve()
    },
    writeZeroes(offset: number, length: number) {
      take('zero write', offset, length)
      t.buf.fill(0, offset, offset + length)
      return Promise.resolve()
    },
    flush: () => Promise.resolve(),
  }
  return t
}

describe('copy/copy: writeAlign (a compressed target)', () => {
  const cluster = 4 * KiB
  const size = 64 * cluster
  // The disk now; the parent (the target before an incremental) differs only in the regions.
  const now = Buffer.alloc(size)
  for (let i = 0; i < size; i++) now[i] = (i * 7 + (i >> 9)) & 0xff
  now.fill(0, 20 * cluster + 512, 23 * cluster)
  now.fill(0, 40 * cluster, 41 * cluster)
  now.fill(0, 48 * cluster)
  const regions: [number, number][] = [
    [512, 1024],
    [2048, 512],
    [5 * cluster - 512, 1024],
    [20 * cluster, 3 * cluster],
    [40 * cluster + 100, 200],
    [50 * cluster + 100, 300],
  ]
  // The allocation map: the last 16 clusters are zero (a zero job with or without digests).
  const zeros: [number, number][] = [
    [20 * cluster + 512, 3 * cluster - 512],
    [48 * cluster, 16 * cluster],
  ]
  const parent = Buffer.from(now)
  for (const [o, l] of regions) parent.fill(0xee, o, o + l)

  for (const hashed of [false, true]) {
    const opts = (): Parameters<typeof copyBlocks>[2] => ({
      targetIsZero: false,
      inFlight: 3,
      chunk: 8 * cluster,
      ...(hashed ? { hasher: new DiskHasher(BlockDigests.empty(size, 16 * cluster)) } : {}),
      signal,
    })
    const how = hashed ? 'with digests' : 'without digests'

    it(`writes whole clusters once each, of the disk's current bytes (${how})`, async () => {
      const dst = clusterTarget(parent, cluster)
      await copyBlocks(memSource(now, regions, zeros), dst, { ...opts(), writeAlign: cluster })
      assert.ok(dst.buf.equals(now))
    })

    it(`is needed: the same copy without it breaks the rules (${how})`, async () => {
      const dst = clusterTarget(parent, cluster)
      await assert.rejects(
        copyBlocks(memSource(now, regions, zeros), dst, opts()),
        /unaligned (zero )?write|written twice/,
      )
    })
  }

  it('keeps zero clusters out of the data written', async () => {
    const dst = clusterTarget(parent, cluster)
    const st = await copyBlocks(memSource(now, regions, zeros), dst, {
      targetIsZero: false,
      chunk: 8 * cluster,
      writeAlign: cluster,
      signal,
    })
    // Clusters 0, 4, 5 and 20 hold data; 21, 22, 40 and 50 are zero (written as zeroes).
    assert.equal(st.dataBytes, 4 * cluster)
  })

  it('refuses a unit that does not divide the disk', async () => {
    await assert.rejects(
      copyBlocks(memSource(now, regions, zeros), clusterTarget(parent, cluster), {
        targetIsZero: false,
        writeAlign: 3 * KiB,
        signal,
      }),
      (e: unknown) => isBackupError(e, 'INTERNAL') && e.message.includes('write alignment 3072'),
    )
  })
})
