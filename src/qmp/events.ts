/**
 * Typed QMP events ({@link QmpEvents}, from the QEMU 7.2 schema like commands.ts) and the bounded
 * event store of a connection.
 *
 * Every event gets a sequence number (`seq`, 1, 2, …). The last `capacity` events stay in a ring
 * buffer, so a caller can take a marker ({@link QmpEventHub.mark}) *before* running a command and
 * then wait for an event that arrived *after* the marker, even if it came before the wait started.
 * QEMU does send events ahead of the reply that caused them (`quit` → `SHUTDOWN` arrives before
 * `{"return":{}}` on 7.2), so waiting only for future events would race.
 *
 * Memory stays bounded under an event flood: the ring holds `capacity` records, each subscriber
 * queue holds at most its `bufferSize` (oldest dropped first; the gap shows in `seq`), and waiters
 * are removed when they settle.
 */
import { BackupError } from '../errors.ts'
import type { QmpEmpty, QmpJobStatus, QmpJobType } from './commands.ts'
import { abortedError, armDeadline, asError } from './deadline.ts'
import type { QmpCallOptions } from './deadline.ts'
import type { QmpEventMessage, QmpTimestamp } from './wire.ts'

/** Data of the block-job events (`BLOCK_JOB_COMPLETED`, `_CANCELLED`, `_READY`). */
export interface QmpBlockJobEventData {
  type: QmpJobType
  /** The job id. */
  device: string
  len: number
  offset: number
  speed: number
}

/** Every typed event: name → `data`. */
export interface QmpEvents {
  /** A block job ended, successfully unless `error` is set. */
  BLOCK_JOB_COMPLETED: QmpBlockJobEventData & { error?: string }
  /** A block job was cancelled (`block-job-cancel`), e.g. the fleecing job at teardown. */
  BLOCK_JOB_CANCELLED: QmpBlockJobEventData
  /** A block job hit an I/O error; `action` says what QEMU does about it. */
  BLOCK_JOB_ERROR: {
    device: string
    operation: 'read' | 'write'
    action: 'ignore' | 'report' | 'stop'
  }
  /** A mirror-like job may now be completed. */
  BLOCK_JOB_READY: QmpBlockJobEventData
  /** A `block-export-del` finished; the node is no longer used by the export. */
  BLOCK_EXPORT_DELETED: { id: string }
  /** QEMU is shutting down; `guest` is false when the host asked (e.g. `quit`). */
  SHUTDOWN: {
    guest: boolean
    reason:
      | 'none'
      | 'host-error'
      | 'host-qmp-quit'
      | 'host-qmp-system-reset'
      | 'host-signal'
      | 'host-ui'
      | 'guest-shutdown'
      | 'guest-reset'
      | 'guest-panic'
      | 'subsystem-reset'
      | 'snapshot-load'
  }
  /** The vCPUs were paused. */
  STOP: QmpEmpty
  /** The vCPUs were resumed. */
  RESUME: QmpEmpty
  /** A job changed state in the job.json state machine. */
  JOB_STATUS_CHANGE: { id: string; status: QmpJobStatus }
}

/** Name of a typed event. */
export type QmpEventName = keyof QmpEvents

/** An event as kept by the client. */
export interface QmpEventRecord {
  /** Position in the connection's event stream, starting at 1 and without gaps. */
  readonly seq: number
  readonly event: string
  readonly data: Readonly<Record<string, unknown>>
  readonly timestamp: QmpTimestamp
}

/** An event whose name is in {@link QmpEvents}, with its typed data. */
export interface QmpTypedEvent<E extends QmpEventName> extends QmpEventRecord {
  readonly event: E
  readonly data: Readonly<QmpEvents[E]>
}

/** Options of {@link QmpEventHub.wait}. */
export interface QmpWaitOptions extends QmpCallOptions {
  /**
   * Also accept events that arrived after this marker (from `eventMark()`), before the wait
   * began. Default: only events arriving after the call.
   */
  since?: number | undefined
}

/** Options of {@link QmpEventHub.subscribe}. */
export interface QmpSubscribeOptions {
  /** Ends the iteration with `ABORTED`. */
  signal?: AbortSignal | undefined
  /** Replay retained events after this marker first. Default: only new events. */
  since?: number | undefined
  /** Events queued for a slow consumer before the oldest are dropped. Default 1024. */
  bufferSize?: number | undefined
}

interface Waiter {
  readonly name: string
  readonly match: (e: QmpEventRecord) => boolean
  readonly done: (e: QmpEventRecord) => void
  readonly fail: (err: Error) => void
}

interface Subscriber {
  push(e: QmpEventRecord): void
  end(): void
}

/** The ring buffer, waiters and subscribers of one connection; used by `QmpClient`. */
export class QmpEventHub {
  readonly #ring: (QmpEventRecord | undefined)[]
  #last = 0
  readonly #waiters = new Set<Waiter>()
  readonly #subscribers = new Set<Subscriber>()
  #closeReason: BackupError | undefined

  /** @param capacity events retained for late waiters (≥ 1). */
  constructor(capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`event buffer capacity must be a positive integer, got ${capacity}`)
    }
    this.#ring = new Array<QmpEventRecord | undefined>(capacity)
  }

  /** Sequence number of the newest event so far (0 before the first). */
  get mark(): number {
    return this.#last
  }

  /** Oldest sequence number still retained. */
  get #oldest(): number {
    return Math.max(1, this.#last - this.#ring.length + 1)
  }

  /** Retained events with `seq > since`, oldest first. */
  recent(since = 0): QmpEventRecord[] {
    const out: QmpEventRecord[] = []
    for (let s = Math.max(since + 1, this.#oldest); s <= this.#last; s++) {
      const rec = this.#ring[s % this.#ring.length]
      if (rec) out.push(rec)
    }
    return out
  }

  /** Store an event and hand it to waiters and subscribers. */
  push(msg: QmpEventMessage): QmpEventRecord {
    const rec: QmpEventRecord = {
      seq: ++this.#last,
      event: msg.event,
      data: msg.data,
      timestamp: msg.timestamp,
    }
    this.#ring[rec.seq % this.#ring.length] = rec
    for (const w of this.#waiters) {
      if (w.name !== rec.event) continue
      let hit: boolean
      try {
        hit = w.match(rec)
      } catch (e) {
        w.fail(asError(e))
        continue
      }
      if (hit) w.done(rec)
    }
    for (const s of this.#subscribers) s.push(rec)
    return rec
  }

  /**
   * Resolve with the first event `name` after `since` (default: now) for which `predicate` is
   * true. Rejects with `QMP_TIMEOUT`, `ABORTED`, `QMP_CLOSED` (connection gone and no match
   * retained), `QMP_PROTOCOL` (events after `since` were already dropped from the ring and none
   * of the retained ones matches), or whatever `predicate` throws.
   */
  wait<E extends QmpEventName>(
    name: E,
    predicate: ((data: QmpEvents[E], event: QmpTypedEvent<E>) => boolean) | undefined,
    opts: QmpWaitOptions = {},
  ): Promise<QmpTypedEvent<E>> {
    // Records named `name` are trusted to carry QmpEvents[name]; data is not validated.
    const match = (e: QmpEventRecord): boolean => {
      const typed = e as QmpTypedEvent<E>
      return predicate === undefined || predicate(typed.data as QmpEvents[E], typed)
    }
    return new Promise<QmpTypedEvent<E>>((resolve, reject) => {
      const what = `wait for QMP event ${name}`
      if (opts.signal?.aborted === true) {
        reject(abortedError(what, opts.signal))
        return
      }
      const since = opts.since ?? this.#last
      try {
        for (const rec of this.recent(since)) {
          if (rec.event === name && match(rec)) {
            resolve(rec as QmpTypedEvent<E>)
            return
          }
        }
      } catch (e) {
        reject(asError(e))
        return
      }
      if (since + 1 < this.#oldest) {
        reject(
          new BackupError('QMP_PROTOCOL', `${what}: events after marker ${since} were dropped`, {
            details: { since, oldest: this.#oldest, capacity: this.#ring.length },
          }),
        )
        return
      }
      if (this.#closeReason) {
        reject(closedError(what, this.#closeReason))
        return
      }
      const waiter: Waiter = {
        name,
        match,
        done: (rec) => {
          this.#waiters.delete(waiter)
          disarm()
          resolve(rec as QmpTypedEvent<E>)
        },
        fail: (err) => {
          this.#waiters.delete(waiter)
          disarm()
          reject(err)
        },
      }
      const disarm = armDeadline(what, opts, waiter.fail)
      this.#waiters.add(waiter)
    })
  }

  /** Async iteration over events; ends when the connection closes (after queued events). */
  subscribe(opts: QmpSubscribeOptions = {}): AsyncIterableIterator<QmpEventRecord> {
    const limit = opts.bufferSize ?? 1024
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new RangeError(`bufferSize must be a positive integer, got ${limit}`)
    }
    const { signal } = opts
    const queue: QmpEventRecord[] = opts.since === undefined ? [] : this.recent(opts.since)
    queue.splice(0, Math.max(0, queue.length - limit))
    let waiting: ((r: IteratorResult<QmpEventRecord>) => void) | undefined
    let failWaiting: ((e: Error) => void) | undefined
    let done = false
    let failure: Error | undefined
    const finish = (err?: Error): void => {
      if (done) return
      done = true
      failure = err
      if (err) queue.length = 0
      this.#subscribers.delete(sub)
      signal?.removeEventListener('abort', onAbort)
      if (err && failWaiting) failWaiting(err)
      else waiting?.({ value: undefined, done: true })
      waiting = failWaiting = undefined
    }
    const onAbort = (): void => {
      if (signal) finish(abortedError('QMP event iteration', signal))
    }
    const sub: Subscriber = {
      push: (rec) => {
        if (waiting) {
          const w = waiting
          waiting = failWaiting = undefined
          w({ value: rec, done: false })
          return
        }
        queue.push(rec)
        if (queue.length > limit) queue.shift()
      },
      end: () => {
        finish()
      },
    }
    if (signal?.aborted === true) onAbort()
    else if (this.#closeReason) done = true
    else {
      this.#subscribers.add(sub)
      signal?.addEventListener('abort', onAbort, { once: true })
    }
    const iterator: AsyncIterableIterator<QmpEventRecord> = {
      next: () => {
        const rec = queue.shift()
        if (rec) return Promise.resolve({ value: rec, done: false })
        if (failure) return Promise.reject(failure)
        if (done) return Promise.resolve({ value: undefined, done: true })
        return new Promise((resolve, reject) => {
          waiting = resolve
          failWaiting = reject
        })
      },
      return: () => {
        queue.length = 0
        finish()
        return Promise.resolve({ value: undefined, done: true })
      },
      [Symbol.asyncIterator]: () => iterator,
    }
    return iterator
  }

  /** The connection ended: reject waiters with `QMP_CLOSED` and end subscriptions. */
  close(reason: BackupError): void {
    if (this.#closeReason) return
    this.#closeReason = reason
    for (const w of [...this.#waiters]) w.fail(closedError(`wait for QMP event ${w.name}`, reason))
    for (const s of [...this.#subscribers]) s.end()
  }
}

/** `QMP_CLOSED` for an operation cut short by the end of the connection. */
export const closedError = (what: string, reason: BackupError): BackupError =>
  reason.code === 'QMP_CLOSED'
    ? new BackupError('QMP_CLOSED', `${what}: ${reason.message}`, { cause: reason })
    : new BackupError('QMP_CLOSED', `${what}: QMP connection closed (${reason.message})`, {
        cause: reason,
      })
