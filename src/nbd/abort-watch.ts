/**
 * One 'abort' listener per AbortSignal, shared by every operation waiting on it. Sixteen
 * requests in flight under one job signal would otherwise add sixteen listeners and trip Node's
 * MaxListenersExceededWarning for EventTarget.
 */
interface Group {
  readonly callbacks: Set<() => void>
  readonly onAbort: () => void
}

const noop = (): void => undefined

/** A registry of abort callbacks grouped by signal. */
export class AbortWatch {
  readonly #groups = new Map<AbortSignal, Group>()

  /**
   * Call `cb` once when `signal` aborts. Returns a function that unregisters it (idempotent).
   * The caller checks `signal.aborted` first: an already aborted signal never fires.
   */
  add(signal: AbortSignal | undefined, cb: () => void): () => void {
    if (signal === undefined) return noop
    let group = this.#groups.get(signal)
    if (group === undefined) {
      const callbacks = new Set<() => void>()
      const onAbort = (): void => {
        this.#groups.delete(signal)
        for (const f of callbacks) f()
        callbacks.clear()
      }
      group = { callbacks, onAbort }
      this.#groups.set(signal, group)
      signal.addEventListener('abort', onAbort, { once: true })
    }
    const g = group
    g.callbacks.add(cb)
    return () => {
      if (!g.callbacks.delete(cb) || g.callbacks.size > 0) return
      signal.removeEventListener('abort', g.onAbort)
      if (this.#groups.get(signal) === g) this.#groups.delete(signal)
    }
  }

  /** Number of signals currently listened to (for tests). */
  get size(): number {
    return this.#groups.size
  }
}
