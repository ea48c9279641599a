/**
 * A userspace NBD client over a unix socket (no kernel `/dev/nbdN`).
 *
 * Lifecycle:
 *
 *   connect() ──handshake (handshake.ts)──► open ──close()──► closing ──socket closed──► closed
 *                                            │                   ▲
 *                                            └──protocol error / server hang-up──► failed
 *
 * - open: requests are sent with fresh cookies and kept in a pending map until the
 *   {@link Receiver} completes them. At most `maxInFlight` are outstanding; later callers wait
 *   FIFO for a slot. A full socket buffer makes new requests wait for 'drain'.
 * - A server error (errno) rejects only its request with {@link NbdServerError}, except a
 *   simple-reply READ error, which cannot be resynchronised and fails the connection.
 * - failed: any protocol violation or hang-up rejects every pending and waiting request
 *   (`NBD_PROTOCOL` / `NBD_CLOSED`), destroys the socket, and rejects all later calls.
 * - An aborted request rejects `ABORTED` at once; its slot stays taken until the reply arrives
 *   and is discarded, so memory stays bounded and the stream stays in sync.
 * - closing: waits (bounded) for pending replies, sends NBD_CMD_DISC, ends the socket
 *   (proto.md §"Terminating the transmission phase").
 */
import { setTimeout as delay } from 'node:timers/promises'
import type { Socket } from 'node:net'
import { BackupError, toBackupError } from '../errors.ts'
import type { NbdServerError } from '../errors.ts'
import { AbortWatch } from './abort-watch.ts'
import { abortedError, Slots } from './slots.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_ERRNO, NBD_FLAG, NBD_LIMIT, NBD_SIZE } from './constants.ts'
import { listContexts, negotiate } from './handshake.ts'
import type { BlockSize, Negotiated } from './handshake.ts'
import type {
  Extent,
  NbdConnectOptions,
  NbdExportFlags,
  NbdListOptions,
  NbdRequestOptions,
} from './types.ts'
import { inFlight, Receiver } from './receiver.ts'
import type { InFlight } from './receiver.ts'
import { openNbdSocket } from './socket.ts'
import { writeRequest } from './wire-transmission.ts'

interface Pending {
  readonly req: InFlight
  readonly resolve: (req: InFlight) => void
  readonly reject: (e: BackupError) => void
  settled: boolean
  unwatch: () => void
}

type State = 'open' | 'closing' | 'closed' | 'failed'

/** Grace period of each {@link NbdClient.close} step (replies, then the server's hang-up). */
const CLOSE_WAIT_MS = 5000
/** Largest TRIM / WRITE_ZEROES request before splitting (32-bit length field, 2^31 advised). */
const MAX_SPLIT = 2 ** 31

const usage = (message: string, details?: Record<string, unknown>): BackupError =>
  new BackupError('USAGE', message, details ? { details } : {})

const unsupported = (message: string): BackupError => new BackupError('NBD_UNSUPPORTED', message)

/** A timer that never keeps the process alive. */
const sleep = (ms: number): Promise<void> => delay(ms, undefined, { ref: false })

/** See the file comment. Create with {@link NbdClient.connect}. */
export class NbdClient implements AsyncDisposable {
  /** Export size in bytes. */
  readonly size: number
  /** The export that was opened. */
  readonly exportName: string
  /** Block size constraints every request honours. */
  readonly blockSize: BlockSize
  /** Export capabilities. */
  readonly flags: NbdExportFlags
  /** Negotiated meta contexts (requested ones the server accepted): name → context id. */
  readonly metaContexts: ReadonlyMap<string, number>
  /** Structured replies were negotiated (needed for meta contexts and sparse reads). */
  readonly structuredReplies: boolean

  readonly #socket: Socket
  readonly #path: string
  /** The server's own maximum request length, for splitting WRITE_ZEROES. */
  readonly #serverMax: number
  readonly #pending = new Map<bigint, Pending>()
  readonly #watch = new AbortWatch()
  readonly #slots: Slots
  readonly #receiver: Receiver
  #nextCookie = 1n
  #state: State = 'open'
  #failure: BackupError | undefined
  #drain: Promise<void> | undefined
  #closing: Promise<void> | undefined
  #onIdle: (() => void) | undefined
  readonly #closed: Promise<void>

  private constructor(socket: Socket, path: string, n: Negotiated, maxInFlight: number) {
    this.#socket = socket
    this.#path = path
    this.#slots = new Slots(maxInFlight, this.#watch)
    this.size = n.size
    this.exportName = n.exportName
    this.blockSize = n.blockSize
    this.structuredReplies = n.structuredReplies
    this.metaContexts = n.metaContexts
    this.#serverMax = n.serverMaximum
    const has = (bit: number): boolean => (n.transmissionFlags & bit) !== 0
    this.flags = {
      readOnly: has(NBD_FLAG.READ_ONLY),
      canFlush: has(NBD_FLAG.SEND_FLUSH),
      canFua: has(NBD_FLAG.SEND_FUA),
      canTrim: has(NBD_FLAG.SEND_TRIM),
      canWriteZeroes: has(NBD_FLAG.SEND_WRITE_ZEROES),
      canFastZero: has(NBD_FLAG.SEND_WRITE_ZEROES) && has(NBD_FLAG.SEND_FAST_ZERO),
      canMultiConn: has(NBD_FLAG.CAN_MULTI_CONN),
      canDf: has(NBD_FLAG.SEND_DF) && n.structuredReplies,
      canCache: has(NBD_FLAG.SEND_CACHE),
    }
    this.#receiver = new Receiver({
      structured: n.structuredReplies,
      contextIds: new Set(n.metaContexts.values()),
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
    socket.on('error', (e) => {
      this.#fail(new BackupError('NBD_CLOSED', `NBD socket error: ${e.message}`, { cause: e }))
    })
  }

  /**
   * Connect to an NBD server on a unix socket and negotiate: fixed newstyle, NO_ZEROES,
   * structured replies, the requested meta contexts, NBD_OPT_GO with block sizes.
   * Rejects `NOT_FOUND` for an unknown export, `NBD_UNSUPPORTED` for servers it cannot use,
   * `NBD_CLOSED` if the server is unreachable or hangs up, `ABORTED` on `signal`.
   */
  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const maxInFlight = opts.maxInFlight ?? 16
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 1024) {
      throw usage(`maxInFlight must be an integer from 1 to 1024, not ${maxInFlight}`)
    }
    const s = await openNbdSocket(opts.path, opts.signal)
    try {
      const n = await negotiate(s.io, {
        exportName: opts.exportName ?? '',
        metaContexts: opts.metaContexts ?? [],
      })
      const client = new NbdClient(s.socket, opts.path, n, maxInFlight)
      s.attach(client.#receiver, (e) => {
        client.#fail(toBackupError(e, 'NBD_PROTOCOL'))
      })
      return client
    } catch (e) {
      s.socket.destroy()
      throw toBackupError(e, 'NBD_PROTOCOL')
    }
  }

  /**
   * List meta contexts of an export with NBD_OPT_LIST_META_CONTEXT, then end the session with
   * NBD_OPT_ABORT. Empty `queries` lists all; servers without structured replies list none.
   */
  static async listMetaContexts(opts: NbdListOptions): Promise<string[]> {
    const s = await openNbdSocket(opts.path, opts.signal)
    try {
      const listing = listContexts(s.io, opts.exportName ?? '', opts.queries ?? [])
      return await listing
    } catch (e) {
      throw toBackupError(e, 'NBD_PROTOCOL')
    } finally {
      s.socket.end()
      await Promise.race([new Promise((r) => s.socket.once('close', r)), sleep(CLOSE_WAIT_MS)])
      s.socket.destroy()
    }
  }

  /**
   * Read `length` bytes at `offset`. Holes arrive as OFFSET_HOLE chunks and are zero-filled;
   * data chunks are received straight into the returned buffer. `length` must not exceed
   * `blockSize.maximum`.
   */
  async read(offset: number, length: number, opts: NbdRequestOptions = {}): Promise<Buffer> {
    this.#checkRange('read', offset, length, this.blockSize.maximum)
    if (length === 0) return Buffer.alloc(0)
    const dest = Buffer.allocUnsafe(length)
    await this.#request(NBD_CMD.READ, 0, offset, length, opts.signal, { dest })
    return dest
  }

  /**
   * Write `data` at `offset`; with `fua` the server persists it before replying. `data` must
   * not change until the promise settles. Its length must not exceed `blockSize.maximum`.
   */
  async write(
    offset: number,
    data: Buffer,
    opts: NbdRequestOptions & { readonly fua?: boolean | undefined } = {},
  ): Promise<void> {
    this.#checkWritable(opts.fua)
    this.#checkRange('write', offset, data.length, this.blockSize.maximum)
    if (data.length === 0) return
    const flags = opts.fua === true ? NBD_CMD_FLAG.FUA : 0
    await this.#request(NBD_CMD.WRITE, flags, offset, data.length, opts.signal, { data })
  }

  /**
   * Zero a range (NBD_CMD_WRITE_ZEROES), split into requests the server accepts. `noHole` asks
   * for allocated zeroes; `fastZero` fails with errno ENOTSUP (95) unless zeroing is fast.
   */
  async writeZeroes(
    offset: number,
    length: number,
    opts: NbdRequestOptions & {
      readonly noHole?: boolean | undefined
      readonly fastZero?: boolean | undefined
    } = {},
  ): Promise<void> {
    this.#checkWritable(false)
    if (!this.flags.canWriteZeroes) throw unsupported('NBD export cannot WRITE_ZEROES')
    if (opts.fastZero === true && !this.flags.canFastZero) {
      throw unsupported('NBD export does not support FAST_ZERO')
    }
    const flags =
      (opts.noHole === true ? NBD_CMD_FLAG.NO_HOLE : 0) |
      (opts.fastZero === true ? NBD_CMD_FLAG.FAST_ZERO : 0)
    // proto.md §"Block size constraints": only a FAST_ZERO request may exceed the maximum.
    const cap = opts.fastZero === true ? MAX_SPLIT : Math.min(this.#serverMax, MAX_SPLIT)
    await this.#split('writeZeroes', offset, length, cap, (o, n) =>
      this.#request(NBD_CMD.WRITE_ZEROES, flags, o, n, opts.signal),
    )
  }

  /** Discard a range (NBD_CMD_TRIM, a hint); split into requests of at most 2 GiB. */
  async trim(
    offset: number,
    length: number,
    opts: NbdRequestOptions & { readonly fua?: boolean | undefined } = {},
  ): Promise<void> {
    this.#checkWritable(opts.fua)
    if (!this.flags.canTrim) throw unsupported('NBD export cannot TRIM')
    const flags = opts.fua === true ? NBD_CMD_FLAG.FUA : 0
    await this.#split('trim', offset, length, MAX_SPLIT, (o, n) =>
      this.#request(NBD_CMD.TRIM, flags, o, n, opts.signal),
    )
  }

  /** Persist every write the server has replied to (NBD_CMD_FLUSH). */
  async flush(opts: NbdRequestOptions = {}): Promise<void> {
    if (!this.flags.canFlush) throw unsupported('NBD export cannot FLUSH')
    await this.#request(NBD_CMD.FLUSH, 0, 0, 0, opts.signal)
  }

  /**
   * Query every negotiated meta context for `[offset, offset + length)` (NBD_CMD_BLOCK_STATUS).
   * The server may describe less than asked (at least one extent per context) or, for the last
   * extent, more; extents are clipped to the export. Keep `length` ≤ 2^31 (at most 2^32 - 1).
   * Keys are context names, offsets absolute. `reqOne` asks for one extent per context.
   */
  async blockStatus(
    offset: number,
    length: number,
    opts: NbdRequestOptions & { readonly reqOne?: boolean | undefined } = {},
  ): Promise<Map<string, Extent[]>> {
    if (this.metaContexts.size === 0) {
      throw unsupported('no NBD meta context was negotiated; BLOCK_STATUS is unavailable')
    }
    this.#checkRange('blockStatus', offset, length, NBD_LIMIT.MAX_U32)
    const out = new Map<string, Extent[]>()
    if (length === 0) {
      for (const name of this.metaContexts.keys()) out.set(name, [])
      return out
    }
    const reqOne = opts.reqOne === true
    const flags = reqOne ? NBD_CMD_FLAG.REQ_ONE : 0
    const req = await this.#request(NBD_CMD.BLOCK_STATUS, flags, offset, length, opts.signal, {
      reqOne,
    })
    for (const [name, id] of this.metaContexts) {
      const extents: Extent[] = []
      let pos = offset
      for (const d of req.status.get(id) ?? []) {
        const len = Math.min(d.length, this.size - pos)
        if (len <= 0) break
        extents.push({ offset: pos, length: len, flags: d.flags })
        pos += len
      }
      out.set(name, extents)
    }
    return out
  }

  /**
   * Soft disconnect: let replies in flight arrive (bounded wait), send NBD_CMD_DISC, end the
   * socket and wait for the server to hang up. Idempotent; never rejects.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  /** `await using client = await NbdClient.connect(…)` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
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

  #checkWritable(fua: boolean | undefined): void {
    if (this.flags.readOnly) throw unsupported(`NBD export "${this.exportName}" is read-only`)
    if (fua === true && !this.flags.canFua) throw unsupported('NBD export does not support FUA')
  }

  /** proto.md §"Block size constraints": in bounds, aligned to the minimum, not too long. */
  #checkRange(what: string, offset: number, length: number, max: number): void {
    const details = { offset, length, size: this.size }
    if (
      !Number.isSafeInteger(offset) ||
      offset < 0 ||
      !Number.isSafeInteger(length) ||
      length < 0
    ) {
      throw usage(`NBD ${what}: offset and length must be non-negative safe integers`, details)
    }
    if (offset + length > this.size) {
      throw usage(
        `NBD ${what}: [${offset}, +${length}) is beyond the export end ${this.size}`,
        details,
      )
    }
    if (length > max) throw usage(`NBD ${what}: length ${length} exceeds ${max}`, details)
    const min = this.blockSize.minimum
    if (offset % min !== 0 || length % min !== 0) {
      throw usage(`NBD ${what}: offset and length must be multiples of ${min}`, details)
    }
  }

  /** Run `fn` over pieces of at most `cap` bytes (aligned to the minimum block size). */
  async #split(
    what: string,
    offset: number,
    length: number,
    cap: number,
    fn: (offset: number, length: number) => Promise<unknown>,
  ): Promise<void> {
    this.#checkRange(what, offset, length, Number.MAX_SAFE_INTEGER)
    const step = cap - (cap % this.blockSize.minimum)
    const parts: Promise<unknown>[] = []
    for (let o = offset; o < offset + length; o += step) {
      parts.push(fn(o, Math.min(step, offset + length - o)))
    }
    await Promise.all(parts)
  }

  /** Send one request and resolve with its completed {@link InFlight}. */
  async #request(
    cmd: number,
    flags: number,
    offset: number,
    length: number,
    signal: AbortSignal | undefined,
    extra: { dest?: Buffer; data?: Buffer; reqOne?: boolean } = {},
  ): Promise<InFlight> {
    this.#checkOpen()
    if (signal?.aborted === true) throw abortedError(signal)
    await this.#slots.acquire(signal)
    try {
      while (this.#drain) await this.#raceAbort(this.#drain, signal)
      this.#checkOpen()
    } catch (e) {
      this.#slots.release()
      throw e
    }
    const cookie = this.#nextCookie++
    const req = inFlight(cookie, cmd, offset, length, extra)
    const done = new Promise<InFlight>((resolve, reject) => {
      const p: Pending = { req, resolve, reject, settled: false, unwatch: () => undefined }
      p.unwatch = this.#watch.add(signal, () => {
        if (!signal || p.settled) return
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
      if (err) p.reject(err)
      else p.resolve(req)
    }
    if (this.#pending.size === 0) this.#onIdle?.()
    // proto.md §"Terminating the transmission phase": on ESHUTDOWN the client MUST disconnect.
    if (err?.errno === NBD_ERRNO.ESHUTDOWN) void this.close()
  }

  #onSocketClose(): void {
    const where = this.#receiver.describePartial()
    const n = this.#pending.size
    const msg =
      `NBD server at ${this.#path} closed the connection` +
      (n > 0 ? ` with ${n} request(s) in flight` : '') +
      (where ? `, ${where}` : '')
    this.#fail(new BackupError('NBD_CLOSED', msg))
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
      p.reject(err)
    }
    this.#pending.clear()
    this.#slots.reset()
    this.#onIdle?.()
    this.#socket.destroy()
  }
}
