/**
 * The transmission phase of one NBD connection (the undici client-h1 split: {@link NbdClient}
 * validates and shapes requests, this class moves them).
 *
 * State machine:
 *
 *   open ──close()──► closing ──(replies in, DISC sent, server hung up)──► closed
 *     │                  │
 *     └──────────────────┴──protocol error / hang-up / socket error──► failed
 *
 * - open: each request gets a fresh cookie and waits in `#pending` until the {@link Receiver}
 *   completes it. At most `maxInFlight` are outstanding; later callers wait FIFO ({@link Slots}).
 *   When `socket.write` reports a full buffer, new requests wait for 'drain'.
 * - A server errno rejects only its request, except a simple-reply READ error: the receiver
 *   throws, and the connection fails (the stream cannot be resynchronised).
 * - failed: every pending and waiting request rejects with the cause (`NBD_PROTOCOL` /
 *   `NBD_CLOSED`), the socket is destroyed, later calls reject `NBD_CLOSED`.
 * - An aborted request rejects `ABORTED` at once but keeps its slot and cookie until its reply
 *   arrives and is discarded: memory stays bounded and the stream in sync. A READ into a
 *   caller's buffer (`holdAbort`) rejects only once its reply is in, since until then the
 *   reply is still being written into that buffer.
 * - closing (proto.md §"Terminating the transmission phase"): waiters are rejected, replies in
 *   flight are awaited (bounded), then NBD_CMD_DISC is sent and the socket ended.
 */
import type { Socket } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { BackupError, toBackupError } from '../errors.ts'
import type { NbdServerError } from '../errors.ts'
import { AbortWatch } from './abort-watch.ts'
import { NBD_CMD, NBD_ERRNO, NBD_SIZE } from './constants.ts'
import { inFlight, Receiver } from './receiver.ts'
import type { InFlight } from './receiver.ts'
import { abortedError, checkAborted, Slots } from './slots.ts'
import type { NbdSocket } from './socket.ts'
import { writeRequest } from './wire-transmission.ts'

interface Pending {
  readonly req: InFlight
  readonly resolve: (req: InFlight) => void
  readonly reject: (e: BackupError) => void
  settled: boolean
  /** Set when aborted while the caller's buffer may still be written (`holdAbort`). */
  aborted: BackupError | undefined
  unwatch: () => void
}

/** Connection states; see the file comment. */
export type ConnectionState = 'open' | 'closing' | 'closed' | 'failed'

/** Grace period of each close step (replies in flight, then the server's hang-up). */
const CLOSE_WAIT_MS = 5000

/** A timer that never keeps the process alive. */
export const sleep = (ms: number): Promise<void> => delay(ms, undefined, { ref: false })

/** Extra parts of a request. */
export interface RequestExtra {
  /** READ destination. */
  readonly dest?: Buffer
  /** WRITE payload. */
  readonly data?: Buffer
  /** BLOCK_STATUS with NBD_CMD_FLAG_REQ_ONE. */
  readonly reqOne?: boolean
  /**
   * `dest` belongs to the caller: once sent, an abort rejects only after the reply has been
   * received (or the connection failed), because until then the reply is written into `dest`.
   */
  readonly holdAbort?: boolean
}

/** See the file comment. */
export class Connection {
  readonly #socket: Socket
  readonly #path: string
  readonly #pending = new Map<bigint, Pending>()
  readonly #watch = new AbortWatch()
  readonly #slots: Slots
  readonly #receiver: Receiver
  #nextCookie = 1n
  #state: ConnectionState = 'open'
  #failure: BackupError | undefined
  #drain: Promise<void> | undefined
  #closing: Promise<void> | undefined
  #onIdle: (() => void) | undefined
  readonly #closed: Promise<void>

  constructor(
    s: NbdSocket,
    path: string,
    opts: { structured: boolean; contextIds: ReadonlySet<number>; maxInFlight: number },
  ) {
    const socket = s.socket
    this.#socket = socket
    this.#path = path
    this.#slots = new Slots(opts.maxInFlight, this.#watch)
    this.#receiver = new Receiver({
      structured: opts.structured,
      contextIds: opts.contextIds,
      lookup: (cookie) => this.#pending.get(cookie)?.req,
      complete: (req, err) => {
        this.#onComplete(req, err)
      },
    })
    this.#closed = new Promise((resolve) => {
      socket.once('close', () => {
        resolve()
      })
    })
    socket.on('close', () => {
      this.#onSocketClose()
    })
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // A server that exits or drops us with our requests still unread in its socket resets
      // the connection (unix(7): the peer's next read fails with ECONNRESET, a write with
      // EPIPE): that is the server closing the connection, told as such.
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') {
        this.#fail(
          new BackupError('NBD_CLOSED', `${this.#closedMessage()} (${e.message})`, { cause: e }),
        )
      } else {
        this.#fail(new BackupError('NBD_CLOSED', `NBD socket error: ${e.message}`, { cause: e }))
      }
    })
    s.attach(this.#receiver, (e) => {
      this.#fail(toBackupError(e, 'NBD_PROTOCOL'))
    })
  }

  /** Current state. */
  get state(): ConnectionState {
    return this.#state
  }

  /** Soft disconnect; idempotent, never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    if (this.#state === 'open') {
      this.#state = 'closing'
      this.#slots.rejectWaiters(new BackupError('NBD_CLOSED', 'NBD client is closing'))
      if (this.#pending.size > 0) {
        const idle = new Promise<void>((resolve) => (this.#onIdle = resolve))
        await Promise.race([idle, sleep(CLOSE_WAIT_MS), this.#closed])
      }
      if (this.#failure === undefined && !this.#socket.destroyed) {
        const disc = Buffer.alloc(NBD_SIZE.REQUEST)
        writeRequest(disc, 0, { flags: 0, type: NBD_CMD.DISC, cookie: 0n, offset: 0, length: 0 })
        this.#socket.end(disc)
      }
    }
    await Promise.race([this.#closed, sleep(CLOSE_WAIT_MS)])
    this.#fail(new BackupError('NBD_CLOSED', 'NBD client closed'))
    this.#state = 'closed'
  }

  #checkOpen(): void {
    if (this.#state === 'open') return
    if (this.#state === 'failed' && this.#failure) {
      throw new BackupError('NBD_CLOSED', `NBD connection failed: ${this.#failure.message}`, {
        cause: this.#failure,
      })
    }
    throw new BackupError('NBD_CLOSED', `NBD client is ${this.#state}`)
  }

  /** Send one request; resolves with it completed, rejects with the server error or abort. */
  async request(
    cmd: number,
    flags: number,
    offset: number,
    length: number,
    signal: AbortSignal | undefined,
    extra: RequestExtra = {},
  ): Promise<InFlight> {
    this.#checkOpen()
    checkAborted(signal)
    await this.#slots.acquire(signal)
    try {
      while (this.#drain) await this.#raceAbort(this.#drain, signal)
      this.#checkOpen()
      checkAborted(signal)
    } catch (e) {
      this.#slots.release()
      throw e
    }
    const cookie = this.#nextCookie++
    const req = inFlight(cookie, cmd, offset, length, extra)
    const done = new Promise<InFlight>((resolve, reject) => {
      const p: Pending = {
        req,
        resolve,
        reject,
        settled: false,
        aborted: undefined,
        unwatch: () => undefined,
      }
      p.unwatch = this.#watch.add(signal, () => {
        if (!signal || p.settled) return
        if (extra.holdAbort === true) {
          p.aborted = abortedError(signal)
          return
        }
        p.settled = true
        reject(abortedError(signal))
      })
      this.#pending.set(cookie, p)
    })
    const h = Buffer.allocUnsafe(NBD_SIZE.REQUEST)
    writeRequest(h, 0, { flags, type: cmd, cookie, offset, length })
    let ok: boolean
    if (extra.data) {
      this.#socket.cork()
      this.#socket.write(h)
      ok = this.#socket.write(extra.data)
      this.#socket.uncork()
    } else {
      ok = this.#socket.write(h)
    }
    if (!ok) this.#waitDrain()
    return done
  }

  #waitDrain(): void {
    this.#drain ??= new Promise<void>((resolve) => {
      const done = (): void => {
        this.#socket.off('drain', done)
        this.#socket.off('close', done)
        this.#drain = undefined
        resolve()
      }
      this.#socket.on('drain', done)
      this.#socket.on('close', done)
    })
  }

  #raceAbort<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    if (!signal) return p
    if (signal.aborted) return Promise.reject(abortedError(signal))
    return new Promise<T>((resolve, reject) => {
      const unwatch = this.#watch.add(signal, () => {
        reject(abortedError(signal))
      })
      p.then(
        (v) => {
          unwatch()
          resolve(v)
        },
        (e: unknown) => {
          unwatch()
          reject(toBackupError(e, 'NBD_CLOSED'))
        },
      )
    })
  }

  #onComplete(req: InFlight, err: NbdServerError | undefined): void {
    const p = this.#pending.get(req.cookie)
    this.#pending.delete(req.cookie)
    this.#slots.release()
    if (p && !p.settled) {
      p.settled = true
      p.unwatch()
      const e = p.aborted ?? err
      if (e) p.reject(e)
      else p.resolve(req)
    }
    if (this.#pending.size === 0) this.#onIdle?.()
    // proto.md §"Terminating the transmission phase": on ESHUTDOWN the client MUST disconnect.
    if (err?.errno === NBD_ERRNO.ESHUTDOWN) void this.close()
  }

  #closedMessage(): string {
    const where = this.#receiver.describePartial()
    const n = this.#pending.size
    return (
      `NBD server at ${this.#path} closed the connection` +
      (n > 0 ? ` with ${n} request(s) in flight` : '') +
      (where ? `, ${where}` : '')
    )
  }

  #onSocketClose(): void {
    this.#fail(new BackupError('NBD_CLOSED', this.#closedMessage()))
  }

  /** Enter `failed` (unless already failed/closed): reject everything and drop the socket. */
  #fail(err: BackupError): void {
    if (this.#state === 'failed' || this.#state === 'closed') return
    this.#state = 'failed'
    this.#failure = err
    this.#slots.rejectWaiters(err)
    for (const p of this.#pending.values()) {
      if (p.settled) continue
      p.settled = true
      p.unwatch()
      p.reject(p.aborted ?? err)
    }
    this.#pending.clear()
    this.#slots.reset()
    this.#onIdle?.()
    this.#socket.destroy()
  }
}
