/**
 * A userspace NBD client over a unix socket (no kernel `/dev/nbdN`): {@link NbdClient}.
 *
 * Lifecycle:
 *
 *   NbdClient.connect() ─► openNbdSocket ─► negotiate (handshake.ts) ─► open ─► close() ─► closed
 *
 * This class checks every call against the negotiated export (bounds, alignment, block size
 * limits, capabilities) and shapes requests; {@link Connection} moves them over the socket and
 * documents the transmission state machine (pipelining, abort, failure, disconnect).
 */
import { BackupError, toBackupError } from '../errors.ts'
import { Connection, sleep } from './connection.ts'
import { NBD_CMD, NBD_CMD_FLAG, NBD_FLAG, NBD_LIMIT } from './constants.ts'
import { listContexts, negotiate } from './handshake.ts'
import type { BlockSize, Negotiated } from './handshake.ts'
import { openNbdSocket } from './socket.ts'
import type {
  Extent,
  NbdConnectOptions,
  NbdExportFlags,
  NbdListOptions,
  NbdReadOptions,
  NbdRequestOptions,
} from './types.ts'

/** Largest TRIM / WRITE_ZEROES request before splitting (32-bit length field, 2^31 advised). */
const MAX_SPLIT = 2 ** 31

// Requests the caller (our own code) built wrongly: a bug, not the user's input.
const usage = (message: string, details?: Record<string, unknown>): BackupError =>
  new BackupError('INTERNAL', message, details ? { details } : {})

const unsupported = (message: string): BackupError => new BackupError('NBD_UNSUPPORTED', message)

/** An open NBD export. Create with {@link NbdClient.connect}; see the file comment. */
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

  /** The server's own maximum request length, for splitting WRITE_ZEROES. */
  readonly #serverMax: number
  readonly #conn: Connection

  private constructor(conn: Connection, n: Negotiated) {
    this.#conn = conn
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
      const conn = new Connection(s, opts.path, {
        structured: n.structuredReplies,
        contextIds: new Set(n.metaContexts.values()),
        maxInFlight,
      })
      return new NbdClient(conn, n)
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
      return await listContexts(s.io, opts.exportName ?? '', opts.queries ?? [])
    } catch (e) {
      throw toBackupError(e, 'NBD_PROTOCOL')
    } finally {
      s.socket.end()
      await Promise.race([new Promise((r) => s.socket.once('close', r)), sleep(5000)])
      s.socket.destroy()
    }
  }

  /**
   * Read `length` bytes at `offset` (at most `blockSize.maximum`). Holes arrive as OFFSET_HOLE
   * chunks and are zero-filled; data is received straight into the result buffer, which is new
   * unless `opts.into` is given.
   */
  async read(offset: number, length: number, opts: NbdReadOptions = {}): Promise<Buffer> {
    this.#checkRange('read', offset, length, this.blockSize.maximum)
    const into = opts.into
    if (into !== undefined && into.length < length) {
      throw usage(`NBD read: 'into' holds ${into.length} bytes, ${length} needed`)
    }
    if (length === 0) return into ? into.subarray(0, 0) : Buffer.alloc(0)
    const dest = into ? into.subarray(0, length) : Buffer.allocUnsafe(length)
    await this.#conn.request(NBD_CMD.READ, 0, offset, length, opts.signal, {
      dest,
      holdAbort: into !== undefined,
    })
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
    await this.#conn.request(NBD_CMD.WRITE, flags, offset, data.length, opts.signal, { data })
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
      this.#conn.request(NBD_CMD.WRITE_ZEROES, flags, o, n, opts.signal),
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
      this.#conn.request(NBD_CMD.TRIM, flags, o, n, opts.signal),
    )
  }

  /** Persist every write the server has replied to (NBD_CMD_FLUSH). */
  async flush(opts: NbdRequestOptions = {}): Promise<void> {
    if (!this.flags.canFlush) throw unsupported('NBD export cannot FLUSH')
    await this.#conn.request(NBD_CMD.FLUSH, 0, 0, 0, opts.signal)
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
    const req = await this.#conn.request(NBD_CMD.BLOCK_STATUS, flags, offset, length, opts.signal, {
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
    return this.#conn.close()
  }

  /** `await using client = await NbdClient.connect(…)` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#conn.close()
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
}
