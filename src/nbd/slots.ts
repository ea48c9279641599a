/**
 * A counting gate for requests in flight: `acquire()` takes one of `max` slots or waits FIFO;
 * `release()` hands the slot to the next waiter. Waiting honours an AbortSignal.
 */
import { BackupError } from '../errors.ts'
import type { AbortWatch } from './abort-watch.ts'

interface Waiter {
  readonly resolve: () => void
  readonly reject: (e: BackupError) => void
  unwatch: () => void
}

/** The `ABORTED` error of an aborted NBD request. */
export const abortedError = (signal: AbortSignal): BackupError =>
  new BackupError('ABORTED', 'NBD request aborted', { cause: signal.reason })

/** Throw `ABORTED` if `signal` fired. */
export const checkAborted = (signal: AbortSignal | undefined): void => {
  if (signal?.aborted === true) throw abortedError(signal)
}

/** See the file comment. */
export class Slots {
  readonly #max: number
  readonly #watch: AbortWatch
  readonly #waiters: Waiter[] = []
  #used = 0

  constructor(max: number, watch: AbortWatch) {
    this.#max = max
    this.#watch = watch
  }

  /** Slots taken. */
  get used(): number {
    return this.#used
  }

  /** Callers waiting for a slot. */
  get waiting(): number {
    return this.#waiters.length
  }

  /** Take a slot: `undefined` when one is free now, else a promise (rejects `ABORTED`). */
  acquire(signal: AbortSignal | undefined): Promise<void> | undefined {
    if (this.#used < this.#max && this.#waiters.length === 0) {
      this.#used++
      return undefined
    }
    if (signal?.aborted === true) return Promise.reject(abortedError(signal))
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { resolve, reject, unwatch: () => undefined }
      w.unwatch = this.#watch.add(signal, () => {
        const i = this.#waiters.indexOf(w)
        if (i >= 0) this.#waiters.splice(i, 1)
        if (signal) reject(abortedError(signal))
      })
      this.#waiters.push(w)
    })
  }

  /** Give a slot back; the longest waiter gets it. Ignored after {@link Slots.reset}. */
  release(): void {
    if (this.#used === 0) return
    this.#used--
    const w = this.#waiters.shift()
    if (w === undefined) return
    this.#used++
    w.unwatch()
    w.resolve()
  }

  /** Reject every waiter with `err`. */
  rejectWaiters(err: BackupError): void {
    for (const w of this.#waiters.splice(0)) {
      w.unwatch()
      w.reject(err)
    }
  }

  /** Forget every taken slot (the connection is gone). */
  reset(): void {
    this.#used = 0
  }
}
