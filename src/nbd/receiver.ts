/**
 * The transmission-phase reply parser: one per connection, fed every received byte, never
 * touching a socket. It matches replies to in-flight requests by cookie and writes READ payloads
 * straight into each request's destination buffer.
 *
 * State machine (proto.md §"Simple reply message", §"Structured reply chunk message"):
 *
 *   header ──simple, READ, error 0──────────────► data (reply.length bytes) ──► header
 *     │ ──simple, other──────────────────────────────────────────────────────► header (done)
 *     │ ──chunk OFFSET_DATA──► data-offset (8 bytes) ──► data (length-8) ────► header
 *     │ ──chunk NONE─────────────────────────────────────────────────────────► header
 *     └ ──chunk HOLE/BLOCK_STATUS/ERROR*──► payload (buffered, bounded) ─────► header
 *
 * A request completes on a simple reply or on the chunk flagged NBD_REPLY_FLAG_DONE. Every
 * state consumes at least one byte or completes the message, so a step never spins.
 * Violations throw `NBD_PROTOCOL`; the owner then fails the connection (hard disconnect).
 *
 * Zero-copy: {@link Receiver.readBuffer} lends the destination slice of a large pending data
 * payload to the socket (`net` `onread` with a buffer function), so the kernel writes READ data
 * into place; {@link Receiver.received} recognises the lent buffer and only advances.
 */
import { BackupError, NbdServerError } from '../errors.ts'
import { NBD_CMD, NBD_ERRNO, NBD_REPLY_FLAG, NBD_REPLY_TYPE, NBD_SIZE } from './constants.ts'
import {
  checkChunkLength,
  decodeBlockStatus,
  decodeDataOffset,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeReplyHeader,
  isErrorChunk,
  replyHeaderLength,
} from './wire-transmission.ts'
import type { BlockDescriptor, ErrorChunk, ReplyHeader } from './wire-transmission.ts'
import { protocolError } from './wire.ts'

/** Payloads at least this long are received straight into the destination buffer. */
const DIRECT_MIN = 64 * 1024

/** One request awaiting its reply. The client owns it; the receiver fills it in. */
export interface InFlight {
  readonly cookie: bigint
  /** `NBD_CMD_*`. */
  readonly cmd: number
  readonly offset: number
  readonly length: number
  /** BLOCK_STATUS sent with NBD_CMD_FLAG_REQ_ONE. */
  readonly reqOne: boolean
  /** READ: destination of `length` bytes. */
  readonly dest: Buffer | undefined
  /** READ: byte ranges received so far, relative to `offset`, as sorted [start, end) pairs. */
  readonly covered: number[]
  coveredBytes: number
  /** First error chunk of a structured reply. */
  error: ErrorChunk | undefined
  /** BLOCK_STATUS: context id → descriptors. */
  readonly status: Map<number, BlockDescriptor[]>
}

/** A fresh {@link InFlight}. */
export const inFlight = (
  cookie: bigint,
  cmd: number,
  offset: number,
  length: number,
  opts: { reqOne?: boolean; dest?: Buffer } = {},
): InFlight => ({
  cookie,
  cmd,
  offset,
  length,
  reqOne: opts.reqOne ?? false,
  dest: opts.dest,
  covered: [],
  coveredBytes: 0,
  error: undefined,
  status: new Map(),
})

/** What the receiver needs from its owner. */
export interface ReceiverOptions {
  /** Structured replies were negotiated. */
  readonly structured: boolean
  /** Ids of the negotiated meta contexts. */
  readonly contextIds: ReadonlySet<number>
  /** The in-flight request with this cookie, if any. */
  lookup(cookie: bigint): InFlight | undefined
  /** The reply to `req` is complete; `error` is set when the server reported one. */
  complete(req: InFlight, error: NbdServerError | undefined): void
}

const CMD_NAMES = new Map<number, string>(Object.entries(NBD_CMD).map(([k, v]) => [v, k]))
const ERRNO_NAMES = new Map<number, string>(Object.entries(NBD_ERRNO).map(([k, v]) => [v, k]))

/** The NbdServerError for a failed request. */
export const serverError = (req: InFlight, errno: number, message = ''): NbdServerError => {
  const cmd = CMD_NAMES.get(req.cmd) ?? `command ${req.cmd}`
  const name = ERRNO_NAMES.get(errno) ?? 'errno'
  return new NbdServerError(
    errno,
    `NBD ${cmd} of ${req.length} bytes at ${req.offset} failed: ${name} (${errno})` +
      (message ? `: ${message}` : ''),
    { details: { cmd, offset: req.offset, length: req.length, errno, message } },
  )
}

/** Record [start, end) in a sorted list of disjoint ranges; false if it overlaps one. */
const addRange = (list: number[], start: number, end: number): boolean => {
  let i = list.length
  while (i > 0 && (list[i - 2] ?? 0) >= end) i -= 2
  if (i > 0 && (list[i - 1] ?? 0) > start) return false
  if (i > 0 && list[i - 1] === start) list[i - 1] = end
  else list.splice(i, 0, start, end)
  if (i + 2 < list.length && list[i + 2] === end) list.splice(i + 1, 2)
  return true
}

type State = 'header' | 'data' | 'data-offset' | 'payload'

/** See the file comment. */
export class Receiver {
  readonly #opts: ReceiverOptions
  #state: State = 'header'
  /** Partial header, or the 8-byte OFFSET_DATA offset. */
  readonly #hdr = Buffer.alloc(NBD_SIZE.STRUCTURED_REPLY)
  #hdrFill = 0
  #hdrNeed = 4
  #req: InFlight | undefined
  #simple = false
  #chunkFlags = 0
  #chunkType = 0
  #chunkLength = 0
  /** data: next write position in `#req.dest`, bytes still to come. */
  #pos = 0
  #remaining = 0
  #payload: Buffer = Buffer.alloc(0)
  #payloadFill = 0
  #lent: Buffer | undefined

  constructor(opts: ReceiverOptions) {
    this.#opts = opts
  }

  /** True between messages: nothing half-received. */
  get idle(): boolean {
    return this.#state === 'header' && this.#hdrFill === 0
  }

  /** Where the next socket read should land: a destination slice, or `scratch`. */
  readBuffer(scratch: Buffer): Buffer {
    const dest = this.#req?.dest
    if (this.#state === 'data' && dest !== undefined && this.#remaining >= DIRECT_MIN) {
      this.#lent = dest.subarray(this.#pos, this.#pos + this.#remaining)
      return this.#lent
    }
    this.#lent = undefined
    return scratch
  }

  /** `n` bytes were read into `buf` (a lent slice or the scratch buffer). */
  received(n: number, buf: Uint8Array): void {
    if (buf === this.#lent) {
      this.#lent = undefined
      this.#advanceData(n)
    } else {
      this.push(Buffer.from(buf.buffer, buf.byteOffset, n))
    }
  }

  /** Parse received bytes. Bytes are copied out; `b` may be reused afterwards. */
  push(b: Buffer): void {
    let i = 0
    while (i < b.length) {
      switch (this.#state) {
        case 'header':
          i = this.#readHeader(b, i)
          break
        case 'data': {
          const k = Math.min(this.#remaining, b.length - i)
          b.copy(this.#dest(), this.#pos, i, i + k)
          i += k
          this.#advanceData(k)
          break
        }
        case 'data-offset':
          i = this.#readDataOffset(b, i)
          break
        case 'payload': {
          const k = Math.min(this.#payload.length - this.#payloadFill, b.length - i)
          b.copy(this.#payload, this.#payloadFill, i, i + k)
          i += k
          this.#payloadFill += k
          if (this.#payloadFill === this.#payload.length) this.#onPayload(this.#payload)
          break
        }
      }
    }
  }

  /** Describe a half-received message, for "disconnect mid-reply" errors. */
  describePartial(): string | undefined {
    if (this.idle) return undefined
    if (this.#state === 'header') return `inside a reply header (${this.#hdrFill} bytes)`
    const left = this.#state === 'payload' ? this.#payload.length - this.#payloadFill : 0
    return `inside a reply to cookie ${this.#req?.cookie ?? '?'} (${this.#remaining + left} bytes missing)`
  }

  #dest(): Buffer {
    const d = this.#req?.dest
    if (d === undefined) throw protocolError('internal: data without a destination')
    return d
  }

  #readHeader(b: Buffer, i: number): number {
    // Fast path: a whole header inside this chunk.
    if (this.#hdrFill === 0 && b.length - i >= 4) {
      const size = replyHeaderLength(b, i)
      if (b.length - i >= size) {
        this.#onHeader(decodeReplyHeader(b, i))
        return i + size
      }
    }
    const k = Math.min(this.#hdrNeed - this.#hdrFill, b.length - i)
    b.copy(this.#hdr, this.#hdrFill, i, i + k)
    this.#hdrFill += k
    if (this.#hdrFill === 4 && this.#hdrNeed === 4) this.#hdrNeed = replyHeaderLength(this.#hdr)
    if (this.#hdrFill === this.#hdrNeed && this.#hdrNeed > 4) {
      const h = decodeReplyHeader(this.#hdr.subarray(0, this.#hdrNeed))
      this.#hdrFill = 0
      this.#hdrNeed = 4
      this.#onHeader(h)
    }
    return i + k
  }

  #lookup(cookie: bigint): InFlight {
    const req = this.#opts.lookup(cookie)
    if (req === undefined) throw protocolError(`reply with unknown cookie ${cookie}`)
    return req
  }

  #onHeader(h: ReplyHeader): void {
    const req = this.#lookup(h.cookie)
    this.#req = req
    if (h.kind === 'simple') {
      this.#simple = true
      if (req.cmd !== NBD_CMD.READ) {
        this.#complete(h.error)
        return
      }
      if (this.#opts.structured) throw protocolError('simple reply to READ with structured replies')
      if (h.error !== 0) {
        // proto.md §"NBD_CMD_READ": old servers may follow with data or not, so there is no way to
        // find the next reply: fail this request, then the whole connection.
        const cause = serverError(req, h.error)
        this.#complete(h.error)
        throw new BackupError('NBD_CLOSED', `NBD connection failed: ${cause.message}`, { cause })
      }
      this.#startData(0, req.length)
      return
    }
    if (!this.#opts.structured) throw protocolError('structured reply was not negotiated')
    this.#simple = false
    checkChunkLength(h.type, h.length)
    this.#chunkFlags = h.flags
    this.#chunkType = h.type
    this.#chunkLength = h.length
    const isRead = req.cmd === NBD_CMD.READ
    switch (h.type) {
      case NBD_REPLY_TYPE.NONE:
        if ((h.flags & NBD_REPLY_FLAG.DONE) === 0) throw protocolError('NONE chunk without DONE')
        this.#endChunk()
        return
      case NBD_REPLY_TYPE.OFFSET_DATA:
        if (!isRead) throw protocolError('OFFSET_DATA in a reply to a non-READ')
        if (h.length - 8 > req.length) throw protocolError('OFFSET_DATA longer than its request')
        this.#state = 'data-offset'
        return
      case NBD_REPLY_TYPE.OFFSET_HOLE:
        if (!isRead) throw protocolError('OFFSET_HOLE in a reply to a non-READ')
        break
      case NBD_REPLY_TYPE.BLOCK_STATUS:
        if (req.cmd !== NBD_CMD.BLOCK_STATUS) throw protocolError('BLOCK_STATUS chunk misplaced')
        break
      default:
        // Error chunks, known or not; checkChunkLength rejected unknown non-error types.
        break
    }
    this.#payload = Buffer.allocUnsafe(h.length)
    this.#payloadFill = 0
    this.#state = 'payload'
  }

  #readDataOffset(b: Buffer, i: number): number {
    let offset: number
    let next: number
    if (this.#hdrFill === 0 && b.length - i >= 8) {
      offset = decodeDataOffset(b, i)
      next = i + 8
    } else {
      const k = Math.min(8 - this.#hdrFill, b.length - i)
      b.copy(this.#hdr, this.#hdrFill, i, i + k)
      this.#hdrFill += k
      if (this.#hdrFill < 8) return i + k
      this.#hdrFill = 0
      offset = decodeDataOffset(this.#hdr)
      next = i + k
    }
    const rel = this.#claim(offset, this.#chunkLength - 8, 'OFFSET_DATA')
    this.#startData(rel, this.#chunkLength - 8)
    return next
  }

  /** Check a content chunk lies inside its request and overlaps nothing; returns its start. */
  #claim(offset: number, length: number, what: string): number {
    const req = this.#req
    if (req === undefined) throw protocolError('internal: no current request')
    const rel = offset - req.offset
    if (rel < 0 || rel + length > req.length) {
      throw protocolError(`${what} [${offset}, +${length}) outside request`, {
        request: [req.offset, req.length],
      })
    }
    if (!addRange(req.covered, rel, rel + length)) {
      throw protocolError(`${what} [${offset}, +${length}) overlaps earlier content`)
    }
    req.coveredBytes += length
    return rel
  }

  #startData(pos: number, length: number): void {
    this.#pos = pos
    this.#remaining = length
    this.#state = 'data'
    if (length === 0) this.#advanceData(0)
  }

  #advanceData(n: number): void {
    this.#pos += n
    this.#remaining -= n
    if (this.#remaining > 0) return
    if (this.#simple) this.#complete(0)
    else this.#endChunk()
  }

  #onPayload(p: Buffer): void {
    const req = this.#req
    if (req === undefined) throw protocolError('internal: no current request')
    const type = this.#chunkType
    if (type === NBD_REPLY_TYPE.OFFSET_HOLE) {
      const hole = decodeOffsetHole(p)
      const rel = this.#claim(hole.offset, hole.length, 'OFFSET_HOLE')
      this.#dest().fill(0, rel, rel + hole.length)
    } else if (type === NBD_REPLY_TYPE.BLOCK_STATUS) {
      this.#onBlockStatus(req, p)
    } else if (isErrorChunk(type)) {
      const e = decodeErrorChunk(type, p)
      const o = e.offset
      if (o !== undefined && (o < req.offset || o >= req.offset + Math.max(req.length, 1))) {
        throw protocolError(`ERROR_OFFSET ${o} outside its request`)
      }
      req.error ??= e
    }
    this.#endChunk()
  }

  #onBlockStatus(req: InFlight, p: Buffer): void {
    const { contextId, descriptors } = decodeBlockStatus(p)
    if (!this.#opts.contextIds.has(contextId)) {
      throw protocolError(`block status for unknown context id ${contextId}`)
    }
    if (req.status.has(contextId)) throw protocolError(`two block status chunks for ${contextId}`)
    // proto.md §"NBD_REPLY_TYPE_BLOCK_STATUS": with REQ_ONE exactly one descriptor no longer than
    // the request; otherwise all but the last descriptor end inside the request.
    if (req.reqOne && (descriptors.length !== 1 || (descriptors[0]?.length ?? 0) > req.length)) {
      throw protocolError('REQ_ONE block status must be one extent within the request')
    }
    let sum = 0
    for (let k = 0; k < descriptors.length - 1; k++) sum += descriptors[k]?.length ?? 0
    if (descriptors.length > 1 && sum >= req.length) {
      throw protocolError('block status extents run past the request')
    }
    req.status.set(contextId, descriptors)
  }

  #endChunk(): void {
    this.#state = 'header'
    if ((this.#chunkFlags & NBD_REPLY_FLAG.DONE) === 0) return
    const req = this.#req
    if (req === undefined) throw protocolError('internal: no current request')
    if (req.error !== undefined) {
      this.#complete(req.error.errno, req.error.message)
      return
    }
    if (req.cmd === NBD_CMD.READ && req.coveredBytes !== req.length) {
      throw protocolError(`READ reply covers ${req.coveredBytes} of ${req.length} bytes`)
    }
    if (req.cmd === NBD_CMD.BLOCK_STATUS && req.status.size !== this.#opts.contextIds.size) {
      throw protocolError(
        `block status for ${req.status.size} of ${this.#opts.contextIds.size} contexts`,
      )
    }
    this.#complete(0)
  }

  #complete(errno: number, message = ''): void {
    const req = this.#req
    this.#state = 'header'
    this.#req = undefined
    if (req === undefined) throw protocolError('internal: no current request')
    this.#opts.complete(req, errno === 0 ? undefined : serverError(req, errno, message))
  }
}
