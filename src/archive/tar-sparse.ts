/**
 * Sparse members of the tar streams `TarMemberParser` (tar-members.ts) reads: their maps (old GNU `S`
 * headers and extension blocks, PAX sparse 0.0/0.1 values, the PAX sparse 1.0 map at the start
 * of the content), the checks every map must pass, and the content digest with the holes as
 * zeroes. Field layouts: GNU tar's `tar.h` (`sparse_header`) and the GNU tar manual, "Storing
 * Sparse Files" (https://www.gnu.org/software/tar/manual/html_node/Sparse-Formats.html).
 */
import type { Hash } from 'node:crypto'
import {
  MAX_SPARSE_ENTRIES,
  TAR_BLOCK,
  TarParseError,
  hashZeroes,
  readNumber,
} from './tar-format.ts'

/** A sparse member: its map and where its content digest is in it. */
export interface Sparse {
  /** Flattened (offset, size) pairs. */
  map: number[]
  /** The size of the file on disk. */
  real: number
  /** PAX sparse 1.0: the map is the start of the content. */
  inContent: boolean
  /** Next pair of {@link Sparse.map} for the digest. */
  idx: number
  /** File bytes hashed so far (data and holes). */
  written: number
  /** Bytes of the current data extent still to hash. */
  entryLeft: number
}

/** A new sparse member of `real` bytes. */
export const newSparse = (real: number, inContent: boolean, map: number[] = []): Sparse => ({
  map,
  real,
  inContent,
  idx: 0,
  written: 0,
  entryLeft: 0,
})

/**
 * Old GNU sparse entries (12-byte offset, 12-byte size) of a header (`count` 4 at 386) or an
 * extension block (21 at 0); an entry starting with NUL ends the list.
 */
export const addGnuEntries = (
  s: Sparse,
  b: Buffer,
  off: number,
  count: number,
  at: number,
): void => {
  for (let i = 0; i < count && b[off + i * 24] !== 0; i++) {
    const o = readNumber(b, off + i * 24, 12)
    const n = readNumber(b, off + i * 24 + 12, 12)
    if (o === undefined || n === undefined || s.map.length >= 2 * MAX_SPARSE_ENTRIES) {
      throw new TarParseError(at, `the sparse map at byte ${at} is damaged`)
    }
    s.map.push(o, n)
  }
}

/** The map must be ordered, inside the real size, and add up to the `stored` bytes. */
export const checkSparseMap = (s: Sparse, stored: number, at: number): void => {
  let end = 0
  let sum = 0
  for (let i = 0; i < s.map.length; i += 2) {
    const o = s.map[i] ?? 0
    const n = s.map[i + 1] ?? 0
    if (o < end || o + n > s.real) throw new TarParseError(at, `bad sparse map at byte ${at}`)
    end = o + n
    sum += n
  }
  if (sum !== stored) throw new TarParseError(at, `bad sparse map at byte ${at}`)
}

/**
 * A PAX sparse 1.0 map being read from the start of the content: decimal lines (the count,
 * then offset and size pairs), padded with NULs to a block.
 */
export class SparseMapText {
  readonly #nums: number[] = []
  #want = -1
  #digits = ''
  #used = 0

  /** True once the map and its padding were read. */
  get done(): boolean {
    return this.#want === this.#nums.length && this.#used % TAR_BLOCK === 0
  }

  /** The (offset, size) pairs read. */
  get map(): number[] {
    return this.#nums
  }

  /**
   * Read from the first `max` bytes of `data`, which starts at stream offset `pos`; returns
   * how many were used (the map's digits, then its padding).
   */
  read(data: Buffer, max: number, pos: number): number {
    const damaged = (i: number): TarParseError =>
      new TarParseError(pos + i, `the sparse map at byte ${pos + i} is damaged`)
    let i = 0
    for (; i < max && this.#want !== this.#nums.length; i++) {
      const c = data[i] ?? 0
      if (c === 0x0a) {
        const v = Number(this.#digits)
        if (this.#digits === '' || !Number.isSafeInteger(v)) throw damaged(i)
        if (this.#want >= 0) this.#nums.push(v)
        else if (v > MAX_SPARSE_ENTRIES) throw damaged(i)
        else this.#want = 2 * v
        this.#digits = ''
      } else if (c >= 0x30 && c <= 0x39 && this.#digits.length < 20) {
        this.#digits += String.fromCharCode(c)
      } else throw damaged(i)
    }
    if (this.#want === this.#nums.length) {
      i += Math.min((TAR_BLOCK - ((this.#used + i) % TAR_BLOCK)) % TAR_BLOCK, max - i)
    }
    this.#used += i
    return i
  }
}

/**
 * Where a sparse member's content digest goes: its stored bytes and the zeroes of its holes,
 * in file order (a Hash through {@link hashSink}, or spans for another thread).
 */
export interface SparseSink {
  update(data: Buffer): void
  zeroes(n: number): void
}

/** A {@link SparseSink} feeding `h`. */
export const hashSink = (h: Hash): SparseSink => ({
  update: (data) => {
    h.update(data)
  },
  zeroes: (n) => {
    hashZeroes(h, n)
  },
})

/** Pass the next stored bytes of a sparse member to `h`, with the holes before them. */
export const hashSparseContent = (h: SparseSink, s: Sparse, data: Buffer): void => {
  for (let i = 0; i < data.length;) {
    if (s.entryLeft === 0) {
      const o = s.map[s.idx] ?? 0
      s.entryLeft = s.map[s.idx + 1] ?? 0
      s.idx += 2
      h.zeroes(o - s.written)
      s.written = o
      continue
    }
    const n = Math.min(s.entryLeft, data.length - i)
    h.update(data.subarray(i, i + n))
    i += n
    s.entryLeft -= n
    s.written += n
  }
}

/** The member's content ended: hash the hole up to its real size. */
export const hashSparseTail = (h: SparseSink, s: Sparse): void => {
  h.zeroes(s.real - s.written)
}
