/**
 * The content digest of the file members `TarMemberParser` (tar-members.ts) reads: the SHA-256
 * of each file's content as it will be on disk (a sparse file's holes as zeroes), taken either
 * inline or by another thread from the same bytes (`deferContent`: this records where the
 * content lies instead, {@link ContentSpans}). Pure: no I/O.
 */
import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { hashSink, hashSparseContent, hashSparseTail } from './tar-sparse.ts'
import type { Sparse, SparseSink } from './tar-sparse.ts'

/**
 * Where deferred content lies: flat quadruples `id, start, end, kind` (stream offsets, `end`
 * exclusive), `id` the member's index among all members of the stream; `kind` 0 for bytes of
 * the stream, 2 for `end - start` zero bytes (a sparse member's hole, `start` 0), 1 on the
 * member's final, empty span. Flat numbers, because they cross to a thread.
 */
export type ContentSpans = number[]

/** One stream's content digests: one file member at a time, `begin` … `bytes` … `end`. */
export class ContentDigest {
  readonly #defer: boolean
  #spans: ContentSpans = []
  #hash: Hash | undefined
  #id = 0

  /** `defer`: record spans (see {@link ContentSpans}) instead of hashing. */
  constructor(defer: boolean) {
    this.#defer = defer
  }

  /** File member `id` (its index in the stream) starts. */
  begin(id: number): void {
    this.#id = id
    this.#hash = this.#defer ? undefined : createHash('sha256')
  }

  /** Its next stored content bytes, which start at stream offset `pos`. */
  bytes(pos: number, data: Buffer, sparse: Sparse | undefined): void {
    const h = this.#hash
    if (h !== undefined) {
      if (sparse === undefined) h.update(data)
      else hashSparseContent(hashSink(h), sparse, data)
    } else if (sparse === undefined) {
      this.#spans.push(this.#id, pos, pos + data.length, 0)
    } else {
      hashSparseContent(this.#spanSink(pos, data), sparse, data)
    }
  }

  /**
   * Its content ended at stream offset `pos`: its hex SHA-256, or `undefined` when deferred
   * (its final span is recorded).
   */
  end(pos: number, sparse: Sparse | undefined): string | undefined {
    const h = this.#hash
    this.#hash = undefined
    if (h !== undefined) {
      if (sparse !== undefined) hashSparseTail(hashSink(h), sparse)
      return h.digest('hex')
    }
    if (sparse !== undefined) hashSparseTail(this.#spanSink(pos, Buffer.alloc(0)), sparse)
    this.#spans.push(this.#id, pos, pos, 1)
    return undefined
  }

  /** The spans recorded since the last call, in stream order. */
  take(): ContentSpans {
    const s = this.#spans
    this.#spans = []
    return s
  }

  /** A sink recording a sparse member's spans; `data` starts at stream offset `pos`. */
  #spanSink(pos: number, data: Buffer): SparseSink {
    return {
      update: (part) => {
        const start = pos + part.byteOffset - data.byteOffset
        this.#spans.push(this.#id, start, start + part.length, 0)
      },
      zeroes: (n) => {
        if (n > 0) this.#spans.push(this.#id, 0, n, 2)
      },
    }
  }
}
