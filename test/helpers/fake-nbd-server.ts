/**
 * An in-process NBD server on a unix socket in a private temp dir, for component tests of the
 * NBD client. It speaks fixed newstyle with NBD_OPT_GO/INFO/EXPORT_NAME, structured replies and
 * meta contexts, serves an in-memory disk, and lets a test take over any request through
 * `onRequest` to inject faults (truncated replies, wrong cookies, errno replies, hang-ups).
 */
import { createServer } from 'node:net'
import type { Server, Socket } from 'node:net'
import { join } from 'node:path'
import { BackupError } from '../../src/errors.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import {
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_HS,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG,
  NBD_STATE,
} from '../../src/nbd/constants.ts'
import { FrameReader } from '../../src/nbd/frame-queue.ts'
import type { BlockDescriptor, NbdRequest } from '../../src/nbd/wire-transmission.ts'
import {
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContext,
  encodeNoneChunk,
  encodeOffsetData,
  encodeOffsetHole,
  encodeOptionReply,
  encodeSimpleReply,
} from './nbd-server-wire.ts'

/** A request as the fake saw it; WRITE data included. */
export interface FakeRequest extends NbdRequest {
  readonly data: Buffer | undefined
}

/** One client connection of the fake. */
export interface FakeConnection {
  readonly socket: Socket
  /** Whether this connection negotiated structured replies. */
  readonly structured: boolean
  /** Meta context id → name negotiated on this connection. */
  readonly contexts: ReadonlyMap<number, string>
  /** Send raw bytes. */
  write(bytes: Buffer): void
  /** The default reply to `req` (what the fake does without `onRequest`). */
  reply(req: FakeRequest): void
}

/** Options of {@link FakeNbdServer.start}. */
export interface FakeNbdOptions {
  /** Disk size. Default 1 MiB. */
  size?: number
  /** The only export. Default ''. */
  exportName?: string
  /** Offer structured replies. Default true. */
  structured?: boolean
  /** Answer NBD_OPT_GO with ERR_UNSUP (forces the NBD_OPT_EXPORT_NAME fallback). */
  noGo?: boolean
  /** Greeting handshake flags. Default FIXED_NEWSTYLE | NO_ZEROES. */
  handshakeFlags?: number
  /** Transmission flags. Default: flush, FUA, trim, write zeroes, fast zero, multi-conn. */
  transmissionFlags?: number
  /** Meta contexts offered. Default ['base:allocation']. */
  metaContexts?: readonly string[]
  /** NBD_INFO_BLOCK_SIZE to advertise, if any. */
  blockSize?: { minimum: number; preferred: number; maximum: number }
  /** Take over an option: return the raw bytes to send instead of the default reply. */
  onOption?: (option: number, data: Buffer) => Buffer | undefined
  /** Take over a request: return true if handled (the default reply is then skipped). */
  onRequest?: (req: FakeRequest, conn: FakeConnection) => boolean
}

const DEFAULT_FLAGS =
  NBD_FLAG.HAS_FLAGS |
  NBD_FLAG.SEND_FLUSH |
  NBD_FLAG.SEND_FUA |
  NBD_FLAG.SEND_TRIM |
  NBD_FLAG.SEND_WRITE_ZEROES |
  NBD_FLAG.SEND_FAST_ZERO |
  NBD_FLAG.CAN_MULTI_CONN

const BLOCK = 4096

/** Runs of all-zero and non-zero 4 KiB blocks in `[offset, offset + length)`. */
const runs = (disk: Buffer, offset: number, length: number): { len: number; zero: boolean }[] => {
  const out: { len: number; zero: boolean }[] = []
  for (let o = offset; o < offset + length;) {
    const n = Math.min(BLOCK - (o % BLOCK), offset + length - o)
    const zero = disk.subarray(o, o + n).every((b) => b === 0)
    const last = out.at(-1)
    if (last?.zero === zero) last.len += n
    else out.push({ len: n, zero })
    o += n
  }
  return out
}

/** See the file comment. */
export class FakeNbdServer {
  readonly path: string
  readonly disk: Buffer
  /** Every request received, in order. */
  readonly requests: FakeRequest[] = []
  /** Every option received, in order. */
  readonly options: number[] = []
  readonly #opts: FakeNbdOptions
  readonly #server: Server
  readonly #dir: TempDir
  readonly #sockets = new Set<Socket>()

  private constructor(dir: TempDir, opts: FakeNbdOptions) {
    this.#dir = dir
    this.#opts = opts
    this.path = join(dir.path, 'nbd.sock')
    this.disk = Buffer.alloc(opts.size ?? 1 << 20)
    this.#server = createServer((s) => {
      this.#sockets.add(s)
      s.on('close', () => this.#sockets.delete(s))
      s.on('error', () => undefined)
      this.#serve(s).catch(() => s.destroy())
    })
  }

  /** Listen on a fresh socket path. */
  static async start(opts: FakeNbdOptions = {}): Promise<FakeNbdServer> {
    const srv = new FakeNbdServer(await makeTempDir('fake-nbd-'), opts)
    await new Promise<void>((resolve) => srv.#server.listen(srv.path, resolve))
    return srv
  }

  /** Connections currently open. */
  get connections(): number {
    return this.#sockets.size
  }

  /** Stop listening, drop every connection, remove the temp dir. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy()
    await new Promise<void>((resolve) =>
      this.#server.close(() => {
        resolve()
      }),
    )
    await this.#dir.remove()
  }

  async #serve(s: Socket): Promise<void> {
    const reader = new FrameReader()
    s.on('data', (b: Buffer) => {
      reader.push(b)
    })
    s.on('close', () => {
      reader.end(new BackupError('NBD_CLOSED', 'client went away'))
    })
    const o = this.#opts
    const hsFlags = o.handshakeFlags ?? NBD_FLAG_HS.FIXED_NEWSTYLE | NBD_FLAG_HS.NO_ZEROES
    s.write(encodeGreeting(hsFlags))
    const cflags = decodeClientFlags(await reader.read(4))
    const name = o.exportName ?? ''
    const offered = o.metaContexts ?? ['base:allocation']
    const tflags = o.transmissionFlags ?? DEFAULT_FLAGS
    let structured = false
    const contexts = new Map<number, string>()
    const reply = (opt: number, type: number, data?: Buffer): boolean =>
      s.write(encodeOptionReply(opt, type, data))
    for (;;) {
      const h = decodeOptionHeader(await reader.read(16), 1 << 20)
      const data = await reader.read(h.length)
      this.options.push(h.option)
      const custom = o.onOption?.(h.option, data)
      if (custom) {
        s.write(custom)
        continue
      }
      if (h.option === NBD_OPT.STRUCTURED_REPLY && o.structured !== false) {
        structured = true
        reply(h.option, NBD_REP.ACK)
      } else if (h.option === NBD_OPT.SET_META_CONTEXT || h.option === NBD_OPT.LIST_META_CONTEXT) {
        const set = h.option === NBD_OPT.SET_META_CONTEXT
        const req = decodeMetaContextRequest(data)
        if (!structured) reply(h.option, NBD_REP.ERR_INVALID)
        else if (req.exportName !== name)
          reply(h.option, NBD_REP.ERR_UNKNOWN, Buffer.from('no such export'))
        else {
          if (set) contexts.clear()
          offered.forEach((c, i) => {
            const hit = req.queries.some(
              (q) => q === c || (!set && q.endsWith(':') && c.startsWith(q)),
            )
            if (!hit && (set || req.queries.length > 0)) return
            if (set) contexts.set(i + 1, c)
            reply(h.option, NBD_REP.META_CONTEXT, encodeMetaContext(set ? i + 1 : 0, c))
          })
          reply(h.option, NBD_REP.ACK)
        }
      } else if ((h.option === NBD_OPT.GO || h.option === NBD_OPT.INFO) && o.noGo !== true) {
        const req = decodeInfoRequest(data)
        if (req.exportName !== name) {
          reply(h.option, NBD_REP.ERR_UNKNOWN, Buffer.from(`export "${req.exportName}" unknown`))
          continue
        }
        reply(h.option, NBD_REP.INFO, encodeInfoExport(this.disk.length, tflags))
        const bs = o.blockSize
        if (bs)
          reply(h.option, NBD_REP.INFO, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum))
        reply(h.option, NBD_REP.ACK)
        if (h.option === NBD_OPT.GO) break
      } else if (h.option === NBD_OPT.EXPORT_NAME) {
        if (data.toString() !== name) return void s.destroy()
        const zeroes = (cflags & NBD_FLAG_C.NO_ZEROES) === 0
        s.write(encodeExportNameReply(this.disk.length, tflags, zeroes))
        break
      } else if (h.option === NBD_OPT.ABORT) {
        reply(h.option, NBD_REP.ACK)
        s.end()
        return
      } else {
        reply(h.option, NBD_REP.ERR_UNSUP)
      }
    }

    const conn: FakeConnection = {
      socket: s,
      structured,
      contexts,
      write: (b) => {
        if (!s.destroyed) s.write(b)
      },
      reply: (req) => {
        this.#reply(conn, req)
      },
    }
    for (;;) {
      const req = decodeRequest(await reader.read(28))
      const data = req.type === NBD_CMD.WRITE ? await reader.read(req.length) : undefined
      const full: FakeRequest = { ...req, data }
      this.requests.push(full)
      if (req.type === NBD_CMD.DISC) {
        s.end()
        return
      }
      if (o.onRequest?.(full, conn) !== true) conn.reply(full)
    }
  }

  #reply(conn: FakeConnection, req: FakeRequest): void {
    const { cookie, offset, length } = req
    const inside = offset + length <= this.disk.length
    const fail = (errno: number): void => {
      conn.write(
        conn.structured
          ? encodeErrorChunk(cookie, errno, 'fake error')
          : encodeSimpleReply(cookie, errno),
      )
    }
    switch (req.type) {
      case NBD_CMD.READ: {
        if (!inside) {
          fail(NBD_ERRNO.EINVAL)
          return
        }
        const data = this.disk.subarray(offset, offset + length)
        if (!conn.structured) {
          conn.write(encodeSimpleReply(cookie, 0, data))
          return
        }
        let o = offset
        for (const r of runs(this.disk, offset, length)) {
          conn.write(
            r.zero
              ? encodeOffsetHole(cookie, o, r.len)
              : encodeOffsetData(cookie, o, this.disk.subarray(o, o + r.len)),
          )
          o += r.len
        }
        conn.write(encodeNoneChunk(cookie))
        return
      }
      case NBD_CMD.WRITE:
        if (!inside) {
          fail(NBD_ERRNO.ENOSPC)
          return
        }
        req.data?.copy(this.disk, offset)
        {
          conn.write(encodeSimpleReply(cookie, 0))
          return
        }
      case NBD_CMD.WRITE_ZEROES:
      case NBD_CMD.TRIM:
        if (!inside) {
          fail(NBD_ERRNO.ENOSPC)
          return
        }
        this.disk.fill(0, offset, offset + length)
        {
          conn.write(encodeSimpleReply(cookie, 0))
          return
        }
      case NBD_CMD.FLUSH: {
        conn.write(encodeSimpleReply(cookie, 0))
        return
      }
      case NBD_CMD.BLOCK_STATUS: {
        if (!inside || conn.contexts.size === 0) {
          fail(NBD_ERRNO.EINVAL)
          return
        }
        let k = 0
        for (const [id, name] of conn.contexts) {
          let d: BlockDescriptor[] =
            name === 'base:allocation'
              ? runs(this.disk, offset, length).map((r) => ({
                  length: r.len,
                  flags: r.zero ? NBD_STATE.HOLE | NBD_STATE.ZERO : 0,
                }))
              : [{ length, flags: 0 }]
          if ((req.flags & NBD_CMD_FLAG.REQ_ONE) !== 0) d = d.slice(0, 1)
          const last = ++k === conn.contexts.size ? NBD_REPLY_FLAG.DONE : 0
          conn.write(encodeBlockStatus(cookie, id, d, last))
        }
        return
      }
      default: {
        fail(NBD_ERRNO.EINVAL)
        return
      }
    }
  }
}
