import { BackupError } from '../errors.ts'

/** Per-call limits shared by every waiting QMP operation. */
export interface QmpCallOptions {
  /** Stops waiting with `ABORTED` (the signal's reason is the `cause`). */
  signal?: AbortSignal | undefined
  /**
   * Stops waiting with `QMP_TIMEOUT` after this many milliseconds. `Infinity` waits forever.
   * The default depends on the operation.
   */
  timeoutMs?: number | undefined
}

/** The `ABORTED` error for `what`, keeping the signal's reason. */
export const abortedError = (what: string, signal: AbortSignal): BackupError =>
  new BackupError('ABORTED', `${what} aborted`, { cause: signal.reason })

/**
 * Arm a timeout and an abort listener for one wait. `fail` is called at most once, with
 * `QMP_TIMEOUT` or `ABORTED`; the returned function disarms both and must be called when the
 * wait ends for any other reason. The caller checks `signal.aborted` before arming.
 */
export const armDeadline = (
  what: string,
  opts: QmpCallOptions,
  fail: (err: BackupError) => void,
): (() => void) => {
  const { signal, timeoutMs } = opts
  if (timeoutMs !== undefined && !(timeoutMs >= 0)) {
    throw new RangeError(`timeoutMs must be a non-negative number, got ${String(timeoutMs)}`)
  }
  let timer: NodeJS.Timeout | undefined
  const disarm = (): void => {
    if (timer !== undefined) clearTimeout(timer)
    signal?.removeEventListener('abort', onAbort)
  }
  const onAbort = (): void => {
    disarm()
    if (signal) fail(abortedError(what, signal))
  }
  // setTimeout treats Infinity (and anything above 2^31-1 ms) as 1 ms, so only arm finite waits.
  if (timeoutMs !== undefined && timeoutMs < 2 ** 31) {
    timer = setTimeout(() => {
      disarm()
      fail(
        new BackupError('QMP_TIMEOUT', `${what} timed out after ${timeoutMs} ms`, {
          details: { timeoutMs },
        }),
      )
    }, timeoutMs)
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  return disarm
}

/** `e` if it is an Error, else an Error describing it (for promise rejections). */
export const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)))
