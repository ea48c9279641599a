/**
 * A stack of clean-up steps for `await using`: the part of TC39's `AsyncDisposableStack`
 * (https://tc39.es/proposal-explicit-resource-management/#sec-asyncdisposablestack-objects) that
 * guestbackup needs, since Node 20 has `Symbol.asyncDispose` but neither `AsyncDisposableStack`
 * nor `SuppressedError`. On Node 24+ the global class can replace it.
 *
 * Semantics follow the proposal: steps run last-in first-out, every step runs even if an earlier
 * one failed, and several failures are chained as `SuppressedError`s (newest outside). The
 * `await using` that disposes the stack does the same with the error of its block, so the error
 * of the work is always at the bottom of the chain; {@link mainError} takes it out.
 */

/** The shape of a `SuppressedError` (also the one the TS and esbuild down-level helpers build). */
export interface SuppressedErrorLike extends Error {
  /** The error thrown while disposing. */
  readonly error: unknown
  /** The error it displaced: the block's own error or an earlier disposal error. */
  readonly suppressed: unknown
}

/** True for a `SuppressedError`, native or built by a down-level helper (matched by name). */
export const isSuppressedError = (e: unknown): e is SuppressedErrorLike =>
  e instanceof Error && e.name === 'SuppressedError' && 'error' in e && 'suppressed' in e

const suppressedError = (error: unknown, suppressed: unknown): SuppressedErrorLike =>
  Object.assign(new Error('An error was suppressed during disposal.'), {
    name: 'SuppressedError',
    error,
    suppressed,
  })

/**
 * The first error of a chain of `SuppressedError`s: the error of the work when both the work and
 * its clean-up failed (the work's error wins), else the first clean-up error. Every clean-up
 * error that lost is passed to `onCleanupError`, newest first.
 */
export const mainError = (e: unknown, onCleanupError: (cleanupError: unknown) => void): unknown => {
  let cur = e
  while (isSuppressedError(cur)) {
    // `error` may itself be a chain: the failures of one CleanupStack.
    let lost = cur.error
    while (isSuppressedError(lost)) {
      onCleanupError(lost.error)
      lost = lost.suppressed
    }
    onCleanupError(lost)
    cur = cur.suppressed
  }
  return cur
}

/** Clean-up steps disposed together, last added first. Dispose with `await using`. */
export class CleanupStack implements AsyncDisposable {
  #steps: (() => PromiseLike<void>)[] = []
  #disposed = false

  /** Add a resource (`undefined` is ignored) to be disposed with the stack; returns it. */
  use<T extends AsyncDisposable | undefined>(resource: T): T {
    if (resource !== undefined) this.defer(() => resource[Symbol.asyncDispose]())
    return resource
  }

  /** Add a clean-up step. */
  defer(step: () => PromiseLike<void>): void {
    if (this.#disposed) throw new TypeError('CleanupStack already disposed')
    this.#steps.push(step)
  }

  /**
   * Move every step to a new stack and leave this one empty (the proposal's `move()`): how a
   * function hands what it acquired to its caller once nothing can fail any more.
   */
  move(): CleanupStack {
    const next = new CleanupStack()
    next.#steps = this.#steps
    this.#steps = []
    return next
  }

  /** Run the steps, last added first; idempotent. See the file header for errors. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    const steps = this.#steps.splice(0).reverse()
    let failed = false
    let error: unknown
    for (const step of steps) {
      try {
        await step()
      } catch (e) {
        error = failed ? suppressedError(e, error) : e
        failed = true
      }
    }
    if (failed) throw error
  }
}
