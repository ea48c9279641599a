/**
 * SHA-256 of blocks on worker threads, reading the bytes where the copy engine put them: its
 * buffers live in a SharedArrayBuffer, so a block is hashed without being copied, and the main
 * thread, which drives the NBD connections, only posts a message per block.
 */
import { Worker } from 'node:worker_threads'

// CommonJS source of each worker: hash the view it is given, answer with the digest.
const WORKER = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
parentPort.on('message', ({ id, sab, offset, length }) => {
  const digest = createHash('sha256').update(new Uint8Array(sab, offset, length)).digest()
  parentPort.postMessage({ id, digest })
})
`

interface Answer {
  id: number
  digest: Uint8Array
}

/** A pool of hashing threads; `close` (or dispose) ends them. */
export class HashPool implements AsyncDisposable {
  #workers: Worker[]
  /** Requests waiting for their digest, by id, with the worker that has them. */
  readonly #pending = new Map<
    number,
    { worker: Worker; resolve: (d: Buffer) => void; reject: (e: Error) => void }
  >()
  #next = 0
  #id = 0
  #failure: Error | undefined

  constructor(threads: number) {
    this.#workers = Array.from({ length: threads }, () => {
      const w = new Worker(WORKER, { eval: true })
      w.on('message', (a: Answer) => {
        const p = this.#pending.get(a.id)
        this.#pending.delete(a.id)
        p?.resolve(Buffer.from(a.digest))
      })
      // A worker that fails or ends takes its requests with it: they are rejected (never left
      // waiting: the copy awaits every hash), and it gets no more.
      const lost = (e: Error): void => {
        this.#workers = this.#workers.filter((x) => x !== w)
        this.#failure ??= e
        for (const [id, p] of this.#pending) {
          if (p.worker !== w) continue
          this.#pending.delete(id)
          p.reject(e)
        }
      }
      w.on('error', lost)
      w.on('exit', (code) => {
        lost(new Error(`a hashing thread ended (exit code ${code})`))
      })
      return w
    })
  }

  /** True if `buf` can be hashed in place by the pool (it lives in shared memory). */
  static shares(buf: Buffer): boolean {
    return buf.buffer instanceof SharedArrayBuffer
  }

  /** SHA-256 of `buf`, which must live in shared memory and stay unchanged until this settles. */
  sha256(buf: Buffer): Promise<Buffer> {
    const worker = this.#workers[this.#next++ % Math.max(this.#workers.length, 1)]
    if (worker === undefined) {
      return Promise.reject(this.#failure ?? new Error('the hash pool is closed'))
    }
    const id = this.#id++
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { worker, resolve, reject })
      worker.postMessage({ id, sab: buf.buffer, offset: buf.byteOffset, length: buf.length })
    })
  }

  async close(): Promise<void> {
    const all = this.#workers
    this.#workers = []
    await Promise.all(all.map((w) => w.terminate()))
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** A buffer of `size` bytes in shared memory, for {@link HashPool.sha256}. */
export const sharedBuffer = (size: number): Buffer => Buffer.from(new SharedArrayBuffer(size))
