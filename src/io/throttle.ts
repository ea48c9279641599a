import { setTimeout as sleep } from 'node:timers/promises'
import { Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { BackupError } from '../errors.ts'

/** Options of {@link TokenBucket}. */
export interface TokenBucketOptions {
  /** Sustained rate in bytes per second. 0 or undefined: unlimited. */
  bytesPerSecond: number | undefined
  /** Largest burst in bytes. Default: one second of rate, at least 4 MiB. */
  burst?: number
  /** Clock in milliseconds (injected by tests). Default `performance.now`. */
  now?: () => number
  /** Sleep (injected by tests). Default `timers/promises.setTimeout`. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>
}

/**
 * A token bucket shared by everything that moves backup data (NBD reads, tar pipes), so the
 * `bandwidth-limit` of the provider API (bytes per second) holds for the whole guest.
 * A request larger than the burst is allowed to drive the bucket negative, so large chunks are
 * delayed by exactly their cost and never deadlock.
 */
export class TokenBucket {
  readonly #rate: number
  readonly #burst: number
  readonly #now: () => number
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>
  #tokens: number
  #last: number

  constructor(opts: TokenBucketOptions) {
    this.#rate = opts.bytesPerSecond ?? 0
    this.#burst = opts.burst ?? Math.max(this.#rate, 4 * 1024 * 1024)
    this.#now = opts.now ?? (() => performance.now())
    this.#sleep =
      opts.sleep ?? ((ms, signal) => sleep(ms, undefined, signal ? { signal } : undefined))
    this.#tokens = this.#burst
    this.#last = this.#now()
  }

  /** True when a limit is set. */
  get limited(): boolean {
    return this.#rate > 0
  }

  /** Wait until `bytes` may pass. Resolves at once when unlimited. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.#rate <= 0 || bytes <= 0) return
    const t = this.#now()
    this.#tokens = Math.min(this.#burst, this.#tokens + ((t - this.#last) * this.#rate) / 1000)
    this.#last = t
    this.#tokens -= bytes
    if (this.#tokens >= 0) return
    const waitMs = (-this.#tokens * 1000) / this.#rate
    try {
      await this.#sleep(waitMs, signal)
    } catch (e) {
      throw new BackupError('ABORTED', 'throttled transfer aborted', { cause: e })
    }
  }

  /** A pass-through stream that takes tokens for every chunk. */
  transform(signal?: AbortSignal): Transform {
    return new Transform({
      transform: (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) => {
        this.take(chunk.length, signal).then(
          () => {
            cb(null, chunk)
          },
          (e: unknown) => {
            cb(e as Error)
          },
        )
      },
    })
  }
}
