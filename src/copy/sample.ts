/**
 * Sanity sampling of an incremental backup: read random blocks the dirty bitmap calls clean from
 * the source and from the new backup (where they fall through to the parent chain) and compare
 * them. A lying bitmap (lost writes, a bitmap of another disk, a restored VM image under a kept
 * bitmap) is caught here instead of at restore time.
 *
 * The clean blocks are picked while the copy walks the dirty map (the gaps between dirty regions
 * are the clean stretches), so the map is walked once and only the picks are kept. Most picks
 * are drawn before the walk and known to be clean as soon as the walk has passed them, so they
 * are compared while the copy goes on ({@link BlockChecker}); only the draws that landed in
 * dirty blocks are made up for after it.
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
  /**
   * Called during the walk with the offset of each pick known to be clean already (never again
   * for the same block). Every such offset is among {@link CleanBlockSampler.picks}.
   */
  onPick?: ((offset: number) => void) | undefined
}

/**
 * Picks `count` blocks uniformly among the whole blocks no dirty region touches, from the dirty
 * regions as they stream past (in increasing order). Each pick is an independent uniform draw
 * (with replacement). `count` draws over all blocks of the disk are made before the walk; those
 * that land on clean blocks are picks, announced to `onPick` as soon as the walk has passed
 * them (a draw over all blocks that is clean is a uniform draw over the clean ones). Draws that
 * landed on dirty blocks are made up for by as many draws among the clean blocks, kept by the
 * weighted reservoir rule: a stretch of `k` clean blocks, after `n` clean blocks seen in all,
 * replaces each such draw with probability `k / n`. Memory: `2 × count` numbers.
 */
export class CleanBlockSampler {
  readonly #size: number
  readonly #block: number
  readonly #random: (max: number) => number
  readonly #onPick: ((offset: number) => void) | undefined
  /** Block indexes drawn over the whole disk before the walk, increasing. */
  readonly #early: number[]
  /** Next draw of {@link #early} not yet passed by the walk. */
  #next = 0
  /** Offsets of the early draws that were clean (with repeats, one per draw). */
  readonly #clean: number[] = []
  /** Reservoir draws among the clean blocks, to make up for early draws that were dirty. */
  readonly #reservoir: number[]
  #seen = 0
  #end = 0
  #finished = false

  constructor(o: SamplerOptions) {
    this.#size = o.size
    this.#block = o.block ?? 64 * 1024
    this.#random = o.random ?? ((max: number) => randomInt(max))
    this.#onPick = o.onPick
    const count = Math.max(0, o.count)
    const blocks = Math.floor(this.#size / this.#block)
    this.#early =
      blocks === 0
        ? []
        : Array.from({ length: count }, () => this.#random(blocks)).sort((a, b) => a - b)
    this.#reservoir = new Array<number>(count).fill(-1)
  }

  /** `source` with its regions observed on their way to the copy engine. */
  tap(source: CopySource): CopySource {
    return { ...source, regions: (signal) => this.#observe(source.regions(signal)) }
  }

  /** Offsets of the picked clean blocks, increasing and distinct; empty if none is clean. */
  picks(): number[] {
    if (!this.#finished) throw new BackupError('INTERNAL', 'sampler read before the walk ended')
    const missing = this.#early.length - this.#clean.length
    const made = this.#reservoir.slice(0, missing).filter((p) => p >= 0)
    return [...new Set([...this.#clean, ...made])].sort((a, b) => a - b)
  }

  async *#observe(
    regions: AsyncIterable<readonly [number, number]>,
  ): AsyncGenerator<readonly [number, number]> {
    for await (const r of regions) {
      this.#stretch(this.#end, r[0])
      this.#end = r[0] + r[1]
      yield r
    }
    // Blocks that reach past the end of the disk are never picked.
    this.#stretch(this.#end, this.#size - (this.#size % this.#block))
    this.#finished = true
  }

  /** The stretch `[from, to)` is clean: offer its whole blocks. */
  #stretch(from: number, to: number): void {
    const first = Math.ceil(from / this.#block)
    const k = Math.floor(to / this.#block) - first
    // Early draws before this stretch's first whole block touch a dirty region: dropped.
    for (; this.#next < this.#early.length; this.#next++) {
      const b = this.#early[this.#next] ?? 0
      if (b >= first + Math.max(k, 0)) break
      if (b < first) continue
      const offset = b * this.#block
      if (this.#clean.at(-1) !== offset) this.#onPick?.(offset)
      this.#clean.push(offset)
    }
    if (k <= 0) return
    this.#seen += k
    for (let i = 0; i < this.#reservoir.length; i++) {
      if (this.#random(this.#seen) < k) this.#reservoir[i] = (first + this.#random(k)) * this.#block
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

/** Options of {@link BlockChecker}. */
export interface BlockCheckerOptions {
  /** Block size in bytes. Default 64 KiB. */
  block?: number
  /** Comparisons in flight (each reads the block from both sides at once). Default 2. */
  inFlight?: number
  readSource: (offset: number, length: number) => Promise<Buffer>
  readTarget: (offset: number, length: number) => Promise<Buffer>
}

/**
 * Compares blocks of the source and the backup as they are named, a few at a time, so that the
 * picks a {@link CleanBlockSampler} announces during the walk are compared while the copy runs.
 * A block is read once however often it is named. A failed read fails {@link finish}, never the
 * process (a copy that failed first never calls it).
 */
export class BlockChecker {
  readonly #block: number
  readonly #inFlight: number
  readonly #o: BlockCheckerOptions
  readonly #results = new Map<number, Promise<boolean>>()
  #active = 0
  readonly #waiting: (() => void)[] = []

  constructor(o: BlockCheckerOptions) {
    this.#o = o
    this.#block = o.block ?? 64 * 1024
    this.#inFlight = Math.max(1, o.inFlight ?? 2)
  }

  /** Start comparing the block at `offset` (if not started yet). */
  add(offset: number): void {
    if (this.#results.has(offset)) return
    const same = this.#compare(offset)
    same.catch(() => undefined)
    this.#results.set(offset, same)
  }

  /** Compare every block of `offsets` (reusing comparisons already made) and report them. */
  async finish(offsets: readonly number[]): Promise<SampleResult> {
    for (const off of offsets) this.add(off)
    const result: SampleResult = { checked: 0, mismatches: [] }
    for (const off of offsets) {
      const same = await this.#results.get(off)
      result.checked++
      if (same !== true) result.mismatches.push(off)
    }
    return result
  }

  async #compare(offset: number): Promise<boolean> {
    while (this.#active >= this.#inFlight) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve))
    }
    this.#active++
    try {
      const [a, b] = await Promise.all([
        this.#o.readSource(offset, this.#block),
        this.#o.readTarget(offset, this.#block),
      ])
      return a.equals(b)
    } finally {
      this.#active--
      this.#waiting.shift()?.()
    }
  }
}

/** Read each block at `offsets` from the source and the backup and compare them. */
export const compareBlocks = (o: {
  offsets: readonly number[]
  block?: number
  readSource: (offset: number, length: number) => Promise<Buffer>
  readTarget: (offset: number, length: number) => Promise<Buffer>
}): Promise<SampleResult> => new BlockChecker(o).finish(o.offsets)

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
