/**
 * Hashing a disk's blocks while the copy engine moves it. The engine's requests finish in any
 * order, but a block's SHA-256 needs its bytes in order: each request waits for the requests
 * before it in its block to be hashed (they were handed out earlier, so the lowest one never
 * waits), hashes its bytes while it still owns its buffer, and lets the next one go. A block
 * known to read as zero gets {@link zeroDigest} without hashing; a block partly zero has its
 * zero bytes hashed from a shared buffer.
 */
import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { BackupError } from '../errors.ts'
import { zeroDigest } from './blocks.ts'
import type { BlockDigests } from './blocks.ts'

interface Open {
  hash: Hash
  /** Next offset (absolute) the block's hash expects. */
  next: number
  /** Requests waiting for their turn, by offset. */
  waiting: Map<number, { resolve: () => void; reject: (e: unknown) => void }>
}

const ZEROES = Buffer.alloc(1024 * 1024)

/** Hashes the blocks of one disk from the pieces of a copy; see the module comment. */
export class DiskHasher {
  readonly digests: BlockDigests
  readonly #open = new Map<number, Open>()
  #failed: Error | undefined = undefined

  constructor(digests: BlockDigests) {
    this.digests = digests
  }

  get blockSize(): number {
    return this.digests.blockSize
  }

  /**
   * Hash `data`, the bytes at `offset` (inside one block). Resolves once they are hashed: the
   * caller may then reuse the buffer.
   */
  async data(offset: number, data: Buffer): Promise<void> {
    const o = await this.#turn(offset)
    o.hash.update(data)
    this.#advance(offset, data.length)
  }

  /** `length` bytes at `offset` read as zero (they may span blocks). */
  async zero(offset: number, length: number): Promise<void> {
    const bs = this.blockSize
    const end = offset + length
    for (let at = offset; at < end;) {
      const i = Math.floor(at / bs)
      const blockEnd = Math.min((i + 1) * bs, this.digests.size)
      const len = Math.min(end, blockEnd) - at
      if (at === i * bs && len === this.digests.lengthOf(i)) {
        this.digests.set(i, zeroDigest(len))
      } else {
        const o = await this.#turn(at)
        for (let left = len; left > 0; left -= ZEROES.length) {
          o.hash.update(left >= ZEROES.length ? ZEROES : ZEROES.subarray(0, left))
        }
        this.#advance(at, len)
      }
      at += len
    }
  }

  /**
   * The copy failed: every request waiting for its turn is rejected with `e` (the one it waits
   * for will never come), and so is every later one.
   */
  fail(e: unknown): void {
    this.#failed ??= e instanceof Error ? e : new Error(String(e))
    for (const o of this.#open.values()) {
      for (const w of o.waiting.values()) w.reject(e)
      o.waiting.clear()
    }
  }

  /** Check every block was hashed; returns the digests. */
  finish(): BlockDigests {
    const missing = this.digests.firstMissing()
    if (missing !== undefined || this.#open.size > 0) {
      const i = missing ?? [...this.#open.keys()][0] ?? 0
      throw new BackupError(
        'INTERNAL',
        `block ${i} (offset ${i * this.blockSize}) of the disk was not hashed`,
      )
    }
    return this.digests
  }

  /** Wait until the bytes before `offset` in its block are hashed. */
  async #turn(offset: number): Promise<Open> {
    if (this.#failed !== undefined) throw this.#failed
    const i = Math.floor(offset / this.blockSize)
    let o = this.#open.get(i)
    if (o === undefined) {
      o = { hash: createHash('sha256'), next: i * this.blockSize, waiting: new Map() }
      this.#open.set(i, o)
    }
    if (o.next !== offset) {
      if (offset < o.next || o.waiting.has(offset)) {
        throw new BackupError('INTERNAL', `bytes at ${offset} hashed twice`)
      }
      const open = o
      await new Promise<void>((resolve, reject) => open.waiting.set(offset, { resolve, reject }))
    }
    return o
  }

  #advance(offset: number, length: number): void {
    const i = Math.floor(offset / this.blockSize)
    const o = this.#open.get(i)
    if (o === undefined) return
    o.next = offset + length
    const blockEnd = i * this.blockSize + this.digests.lengthOf(i)
    if (o.next >= blockEnd) {
      this.digests.set(i, o.hash.digest())
      this.#open.delete(i)
      return
    }
    const wake = o.waiting.get(o.next)
    if (wake !== undefined) {
      o.waiting.delete(o.next)
      wake.resolve()
    }
  }
}
