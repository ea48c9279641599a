/**
 * Byte queues for incremental parsing: bytes arrive split at any point, parsers take whole
 * frames. {@link FrameQueue} is synchronous (push chunks, take exactly n bytes or nothing);
 * {@link FrameReader} adds an awaitable `read(n)` for the sequential handshake, where one reply
 * is awaited at a time.
 *
 * Chunks are kept by reference and copied only when a frame spans chunks, so a caller that
 * reuses its receive buffer must push a copy.
 */
import { BackupError } from '../errors.ts'

const abortError = (signal: AbortSignal): BackupError =>
  new BackupError('ABORTED', 'operation aborted', { cause: signal.reason })

/** A queue of received chunks with exact-length takes (tar-stream's BufferList idea). */
export class FrameQueue {
  #chunks: Buffer[] = []
  /** Offset of the first unread byte in `#chunks[0]`. */
  #head = 0
  #length = 0

  /** Bytes available. */
  get length(): number {
    return this.#length
  }

  /** Append a chunk (kept by reference). Empty chunks are ignored. */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    this.#chunks.push(chunk)
    this.#length += chunk.length
  }

  /**
   * Remove and return exactly `n` bytes, or `undefined` (queue unchanged) if fewer are
   * available. Returns a view into a chunk when possible, a copy when the bytes span chunks.
   */
  take(n: number): Buffer | undefined {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`bad take length ${n}`)
    if (n > this.#length) return undefined
    if (n === 0) return Buffer.alloc(0)
    const first = this.#chunks[0]
    if (first !== undefined && first.length - this.#head >= n) {
      const out = first.subarray(this.#head, this.#head + n)
      this.#advance(n)
      return out
    }
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    while (filled < n) {
      const c = this.#chunks[0]
      if (c === undefined) break
      const k = Math.min(n - filled, c.length - this.#head)
      c.copy(out, filled, this.#head, this.#head + k)
      filled += k
      this.#advance(k)
    }
    return out
  }

  /** Remove and return everything queued (for handing leftovers to another parser). */
  drain(): Buffer[] {
    const out = this.#chunks.map((c, i) => (i === 0 ? c.subarray(this.#head) : c))
    this.#chunks = []
    this.#head = 0
    this.#length = 0
    return out
  }

  #advance(n: number): void {
    this.#length -= n
    this.#head += n
    const first = this.#chunks[0]
    if (this.#head === first?.length) {
      this.#chunks.shift()
      this.#head = 0
    }
  }
}

interface Waiter {
  readonly n: number
  readonly resolve: (b: Buffer) => void
  readonly reject: (e: BackupError) => void
}

/**
 * An awaitable reader over a {@link FrameQueue}: `read(n)` resolves once n bytes arrived.
 * `end(error)` fails the current and every later read. Only one read may wait at a time.
 */
export class FrameReader {
  readonly #queue = new FrameQueue()
  #waiter: Waiter | undefined
  #ended: BackupError | undefined

  /** The underlying queue (leftover bytes after the handshake). */
  get queue(): FrameQueue {
    return this.#queue
  }

  /** Append received bytes (kept by reference) and wake a waiting read. */
  push(chunk: Buffer): void {
    this.#queue.push(chunk)
    const w = this.#waiter
    if (w === undefined) return
    const b = this.#queue.take(w.n)
    if (b === undefined) return
    this.#waiter = undefined
    w.resolve(b)
  }

  /** No more bytes will arrive: fail the waiting read and all later reads with `error`. */
  end(error: BackupError): void {
    this.#ended ??= error
    const w = this.#waiter
    this.#waiter = undefined
    w?.reject(this.#ended)
  }

  /** Read exactly `n` bytes. Rejects with the `end()` error, or `ABORTED` on `signal`. */
  read(n: number, signal?: AbortSignal): Promise<Buffer> {
    if (signal?.aborted === true) return Promise.reject(abortError(signal))
    const ready = this.#queue.take(n)
    if (ready !== undefined) return Promise.resolve(ready)
    if (this.#ended) return Promise.reject(this.#ended)
    if (this.#waiter)
      return Promise.reject(new BackupError('INTERNAL', 'FrameReader: concurrent read'))
    return new Promise<Buffer>((resolve, reject) => {
      const onAbort = (): void => {
        this.#waiter = undefined
        if (signal) reject(abortError(signal))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiter = {
        n,
        resolve: (b) => {
          signal?.removeEventListener('abort', onAbort)
          resolve(b)
        },
        reject: (e) => {
          signal?.removeEventListener('abort', onAbort)
          reject(e)
        },
      }
    })
  }
}
