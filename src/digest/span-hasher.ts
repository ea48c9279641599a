/**
 * Two kinds of SHA-256 over one stream, taken on a worker thread from the caller's buffers: the
 * digest of the whole stream, and digests of spans of it (a tar archive's members' contents,
 * tar-follow.ts). The caller reads the stream once into slots of a SharedArrayBuffer and hands
 * each filled slot over with the spans it holds; the thread hashes the slot in place (no copy,
 * no second read) and answers with the digests of the spans that ended in it. Slots are handed
 * over and answered in order, so the caller can fill the next slot while the thread hashes.
 */
import { Worker } from 'node:worker_threads'
import { BackupError } from '../errors.ts'

// CommonJS source of the thread. Messages are handled in order: `chunk` updates the stream's
// hash with the slot's bytes and each span's hash with its part of them (spans: flat `id, start,
// end, kind`, offsets within the slot; kind 2: `end - start` zero bytes instead), answering the
// digests of the spans whose last (kind 1) came; `end` answers the stream's digest (none when
// `streamDigest` is off: a compressed archive's digest is taken from its file instead).
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { sab, slotBytes, streamDigest } = workerData
const stream = streamDigest ? createHash('sha256') : undefined
const open = new Map()
const zero = new Uint8Array(1024 * 1024)
let bytes = 0
parentPort.on('message', (m) => {
  if (m.end) {
    parentPort.postMessage({ digest: stream?.digest('hex'), bytes })
    return
  }
  const base = m.slot * slotBytes
  stream?.update(new Uint8Array(sab, base, m.length))
  bytes += m.length
  const done = []
  const s = m.spans
  for (let i = 0; i < s.length; i += 4) {
    const id = s[i]
    let h = open.get(id)
    if (h === undefined) { h = createHash('sha256'); open.set(id, h) }
    const n = s[i + 2] - s[i + 1]
    if (s[i + 3] === 2) {
      for (let left = n; left > 0; left -= zero.length) h.update(left < zero.length ? zero.subarray(0, left) : zero)
    } else if (n > 0) h.update(new Uint8Array(sab, base + s[i + 1], n))
    if (s[i + 3] === 1) { open.delete(id); done.push(id, h.digest('hex')) }
  }
  parentPort.postMessage({ slot: m.slot, done })
})
`

/** Digests of the spans that ended in one slot: `id → hex SHA-256`. */
export type SpanDigests = Map<number, string>

interface Waiter {
  resolve: (v: unknown) => void
  reject: (e: Error) => void
}

/**
 * The thread and its slots (see the module comment). `dispose` ends the thread; a thread that
 * fails rejects everything waiting on it and every later request.
 */
export class SpanHasher implements AsyncDisposable {
  readonly #sab: SharedArrayBuffer
  readonly #slotBytes: number
  readonly #worker: Worker
  /** Answers awaited, in the order requested (the thread answers in that order). */
  readonly #queue: Waiter[] = []
  #failure: Error | undefined

  /**
   * A thread with `slots` slots of `slotBytes` bytes each; `streamDigest: false` when only the
   * spans are wanted (the whole stream is then not hashed).
   */
  constructor(slots: number, slotBytes: number, opts: { streamDigest?: boolean } = {}) {
    this.#slotBytes = slotBytes
    this.#sab = new SharedArrayBuffer(slots * slotBytes)
    this.#worker = new Worker(WORKER, {
      eval: true,
      workerData: { sab: this.#sab, slotBytes, streamDigest: opts.streamDigest !== false },
    })
    this.#worker.on('message', (a: unknown) => {
      this.#queue.shift()?.resolve(a)
    })
    const lost = (e: Error): void => {
      this.#failure ??= new BackupError('IO', `the hashing thread failed: ${e.message}`, {
        cause: e,
      })
      for (const w of this.#queue.splice(0)) w.reject(this.#failure)
    }
    this.#worker.on('error', lost)
    this.#worker.on('exit', (code) => {
      lost(new Error(`it ended (exit code ${code})`))
    })
  }

  /** Slot `slot` as a Buffer to read into (valid until the thread is disposed). */
  slot(slot: number): Buffer {
    return Buffer.from(this.#sab, slot * this.#slotBytes, this.#slotBytes)
  }

  #ask<T>(message: unknown): Promise<T> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure)
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({
        resolve: (v) => {
          resolve(v as T)
        },
        reject,
      })
      this.#worker.postMessage(message)
    })
  }

  /**
   * Hash the first `length` bytes of `slot` as the stream's next bytes, and the `spans` (flat
   * `id, start, end, kind`, stream offsets; kind 0 bytes, 1 the span's end, 2 `end - start`
   * zero bytes) within them, `base` being the stream offset of the slot's first byte. The slot
   * must not be refilled before the promise settles.
   */
  async hash(slot: number, length: number, base: number, spans: readonly number[]) {
    const rel = spans.slice()
    for (let i = 0; i < rel.length; i += 4) {
      if (rel[i + 3] === 2) continue
      const start = (rel[i + 1] ?? 0) - base
      const end = (rel[i + 2] ?? 0) - base
      if (start < 0 || end > length || end < start) {
        throw new BackupError('INTERNAL', `a span [${start}, ${end}) is outside its slot`)
      }
      rel[i + 1] = start
      rel[i + 2] = end
    }
    const a = await this.#ask<{ done: (number | string)[] }>({ slot, length, spans: rel })
    const out: SpanDigests = new Map()
    for (let i = 0; i < a.done.length; i += 2) out.set(a.done[i] as number, a.done[i + 1] as string)
    return out
  }

  /**
   * The stream's SHA-256 (hex; absent without `streamDigest`) and length, once every slot handed
   * over was hashed.
   */
  end(): Promise<{ digest: string | undefined; bytes: number }> {
    return this.#ask({ end: true })
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#failure ??= new BackupError('ABORTED', 'the hashing thread was stopped')
    await this.#worker.terminate()
  }
}
