/**
 * Sanity sampling of an incremental backup: read random blocks the dirty bitmap calls clean from
 * the source and from the new backup (where they fall through to the parent chain) and compare
 * them. A lying bitmap (lost writes, a bitmap of another disk, a restored VM image under a kept
 * bitmap) is caught here instead of at restore time.
 *
 * The clean blocks are picked while the copy walks the dirty map (the gaps between dirty regions
 * are the clean stretches), so the map is walked once and only the picks are kept.
 */
import { randomInt } from 'node:crypto'
import { BackupError } from '../errors.ts'
import type { CopySource } from './copy.ts'

/** Options of {@link CleanBlockSampler}. */
export interface SamplerOptions {
  /** Disk size in bytes. */
  size: number
  /** Blocks to pick. */
  count: number
  /** Block size in bytes. Default 64 KiB. */
  block?: number
  /** Random integer in [0, max) (injected by tests). */
  random?: (max: number) => number
}

/**
 * Picks `count` blocks uniformly among the whole blocks no dirty region touches, from the dirty
 * regions as they stream past (in increasing order). Each pick is an independent uniform draw
 * (with replacement), kept by the weighted reservoir rule: a stretch of `k` clean blocks, after
 * `n` clean blocks seen in all, replaces each pick with probability `k / n`. Memory: the picks.
 */
export class CleanBlockSampler {
  readonly #size: number
  readonly #block: number
  readonly #random: (max: number) => number
  readonly #picks: number[]
  #seen = 0
  #end = 0
  #finished = false

  constructor(o: SamplerOptions) {
    this.#size = o.size
    this.#block = o.block ?? 64 * 1024
    this.#random = o.random ?? ((max: number) => randomInt(max))
    this.#picks = new Array<number>(Math.max(0, o.count)).fill(-1)
  }

  /** `source` with its regions observed on their way to the copy engine. */
  tap(source: CopySource): CopySource {
    return { ...source, regions: (signal) => this.#observe(source.regions(signal)) }
  }

  /** Offsets of the picked clean blocks, increasing and distinct; empty if none is clean. */
  picks(): number[] {
    if (!this.#finished) throw new BackupError('INTERNAL', 'sampler read before the walk ended')
    return [...new Set(this.#picks.filter((p) => p >= 0))].sort((a, b) => a - b)
  }

  async *#observe(
    regions: AsyncIterable<readonly [number, number]>,
  ): AsyncGenerator<readonly [number, number]> {
    for await (const r of regions) {
      this.#clean(this.#end, r[0])
      this.#end = r[0] + r[1]
      yield r
    }
    // Blocks that reach past the end of the disk are never picked.
    this.#clean(this.#end, this.#size - (this.#size % this.#block))
    this.#finished = true
  }

  /** The stretch `[from, to)` is clean: offer its whole blocks. */
  #clean(from: number, to: number): void {
    const first = Math.ceil(from / this.#block)
    const k = Math.floor(to / this.#block) - first
    if (k <= 0) return
    this.#seen += k
    for (let i = 0; i < this.#picks.length; i++) {
      if (this.#random(this.#seen) < k) this.#picks[i] = (first + this.#random(k)) * this.#block
    }
  }
}

/** Result of {@link compareBlocks}. */
export interface SampleResult {
  /** Blocks compared. */
  checked: number
  /** Offsets of blocks that differed. */
  mismatches: number[]
}

/** Read each block at `offsets` from the source and the backup and compare them. */
export const compareBlocks = async (o: {
  offsets: readonly number[]
  block?: number
  readSource: (offset: number, length: number) => Promise<Buffer>
  readTarget: (offset: number, length: number) => Promise<Buffer>
}): Promise<SampleResult> => {
  const block = o.block ?? 64 * 1024
  const result: SampleResult = { checked: 0, mismatches: [] }
  for (const off of o.offsets) {
    const [a, b] = await Promise.all([o.readSource(off, block), o.readTarget(off, block)])
    result.checked++
    if (!a.equals(b)) result.mismatches.push(off)
  }
  return result
}

/** Throw `VERIFY_FAILED` when sampling found differences. */
export const assertSampleClean = (device: string, r: SampleResult): void => {
  if (r.mismatches.length > 0) {
    throw new BackupError(
      'VERIFY_FAILED',
      `${device}: ${r.mismatches.length} of ${r.checked} blocks the dirty bitmap calls clean differ from the previous backup (first at offset ${r.mismatches[0] ?? 0}): the bitmap missed writes; the next backup will be full`,
      { details: { device, mismatches: r.mismatches.slice(0, 16) } },
    )
  }
}
