/**
 * Pure encoders and decoders of the NBD transmission phase (proto.md §"Transmission"), client side
 * only: the request header it sends, and the simple replies, structured reply chunks and chunk
 * payloads it reads. No sockets, no timers; malformed input throws `BackupError('NBD_PROTOCOL')`.
 * The server's half (decoding requests, encoding replies) lives with the test fake in
 * `test/helpers/nbd-server-wire.ts`.
 */
import {
  NBD_LIMIT,
  NBD_MAGIC,
  NBD_REPLY_TYPE,
  NBD_REPLY_TYPE_FLAG_ERROR,
  NBD_SIZE,
} from './constants.ts'
import { protocolError, readU64, writeU64 } from './wire.ts'

/** A request header (proto.md §"Request message"); WRITE data follows it on the wire. */
export interface NbdRequest {
  /** `NBD_CMD_FLAG_*` bits. */
  readonly flags: number
  /** `NBD_CMD_*`. */
  readonly type: number
  /** Opaque 64-bit value echoed in every reply (the spec's "handle" / "cookie"). */
  readonly cookie: bigint
  readonly offset: number
  readonly length: number
}

/** Write a 28-byte request header into `b` at `off`. */
export const writeRequest = (b: Buffer, off: number, r: NbdRequest): void => {
  b.writeUInt32BE(NBD_MAGIC.REQUEST, off)
  b.writeUInt16BE(r.flags, off + 4)
  b.writeUInt16BE(r.type, off + 6)
  b.writeBigUInt64BE(r.cookie, off + 8)
  writeU64(b, off + 16, r.offset)
  b.writeUInt32BE(r.length, off + 24)
}

/** A decoded reply header: simple or structured chunk (proto.md §"Transmission"). */
export type ReplyHeader =
  | { readonly kind: 'simple'; readonly error: number; readonly cookie: bigint }
  | {
      readonly kind: 'structured'
      readonly flags: number
      readonly type: number
      readonly cookie: bigint
      /** Payload length; bounded by type with {@link checkChunkLength}. */
      readonly length: number
    }

/** Size of the reply header starting at `off`, from its magic (needs 4 bytes). */
export const replyHeaderLength = (b: Buffer, off = 0): number => {
  if (b.length - off < 4) throw protocolError('truncated reply magic')
  const magic = b.readUInt32BE(off)
  if (magic === NBD_MAGIC.SIMPLE_REPLY) return NBD_SIZE.SIMPLE_REPLY
  if (magic === NBD_MAGIC.STRUCTURED_REPLY) return NBD_SIZE.STRUCTURED_REPLY
  throw protocolError(`bad reply magic 0x${magic.toString(16)}`)
}

/** Decode a reply header at `off`; the whole header must be present. */
export const decodeReplyHeader = (b: Buffer, off = 0): ReplyHeader => {
  const size = replyHeaderLength(b, off)
  if (b.length - off < size) throw protocolError('truncated reply header')
  if (size === NBD_SIZE.SIMPLE_REPLY) {
    return { kind: 'simple', error: b.readUInt32BE(off + 4), cookie: b.readBigUInt64BE(off + 8) }
  }
  return {
    kind: 'structured',
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookie: b.readBigUInt64BE(off + 8),
    length: b.readUInt32BE(off + 16),
  }
}

/** True for error chunk types (bit 15). */
export const isErrorChunk = (type: number): boolean => (type & NBD_REPLY_TYPE_FLAG_ERROR) !== 0

/**
 * Check a chunk's payload length against its type before anything is allocated
 * (proto.md §"Structured reply types"). OFFSET_DATA is further bounded by its request.
 * Unknown non-error types are a protocol violation ("MUST initiate a hard disconnect").
 */
export const checkChunkLength = (type: number, length: number): void => {
  const bad = (rule: string): never => {
    throw protocolError(`chunk type ${type} with length ${length}: ${rule}`)
  }
  switch (type) {
    case NBD_REPLY_TYPE.NONE:
      if (length !== 0) bad('NONE carries no payload')
      return
    case NBD_REPLY_TYPE.OFFSET_DATA:
      if (length < 9) bad('OFFSET_DATA needs at least 9 bytes')
      return
    case NBD_REPLY_TYPE.OFFSET_HOLE:
      if (length !== 12) bad('OFFSET_HOLE is 12 bytes')
      return
    case NBD_REPLY_TYPE.BLOCK_STATUS:
      if (length < 12 || (length - 4) % 8 !== 0) bad('BLOCK_STATUS is 4 + 8n bytes, n >= 1')
      if (length > NBD_LIMIT.MAX_PAYLOAD) bad('BLOCK_STATUS list too long')
      return
    case NBD_REPLY_TYPE.ERROR:
      if (length < 6 || length > 6 + NBD_LIMIT.MAX_STRING) bad('ERROR is 6..4102 bytes')
      return
    case NBD_REPLY_TYPE.ERROR_OFFSET:
      if (length < 14 || length > 14 + NBD_LIMIT.MAX_STRING) bad('ERROR_OFFSET is 14..4110 bytes')
      return
    default:
      if (!isErrorChunk(type)) bad('unknown chunk type')
      if (length < 6 || length > NBD_LIMIT.MAX_OPTION_REPLY) bad('unknown error chunk size')
  }
}

/** One block status descriptor (proto.md §"NBD_REPLY_TYPE_BLOCK_STATUS"). */
export interface BlockDescriptor {
  readonly length: number
  readonly flags: number
}

/** Decode the 8-byte offset that starts an OFFSET_DATA payload. */
export const decodeDataOffset = (payload: Buffer, off = 0): number => {
  if (payload.length - off < 8) throw protocolError('truncated OFFSET_DATA offset')
  return readU64(payload, off, 'data offset')
}

/** Decode an OFFSET_HOLE payload; the hole size MUST be nonzero. */
export const decodeOffsetHole = (payload: Buffer): { offset: number; length: number } => {
  if (payload.length !== 12) throw protocolError('OFFSET_HOLE payload must be 12 bytes')
  const length = payload.readUInt32BE(8)
  if (length === 0) throw protocolError('OFFSET_HOLE of size 0')
  return { offset: readU64(payload, 0, 'hole offset'), length }
}

/** Decode a BLOCK_STATUS payload; every descriptor length MUST be nonzero. */
export const decodeBlockStatus = (
  payload: Buffer,
): { contextId: number; descriptors: BlockDescriptor[] } => {
  checkChunkLength(NBD_REPLY_TYPE.BLOCK_STATUS, payload.length)
  const descriptors: BlockDescriptor[] = []
  for (let off = 4; off < payload.length; off += 8) {
    const length = payload.readUInt32BE(off)
    if (length === 0) throw protocolError('block status descriptor of length 0')
    descriptors.push({ length, flags: payload.readUInt32BE(off + 4) })
  }
  return { contextId: payload.readUInt32BE(0), descriptors }
}

/** A decoded error chunk. `offset` is set for ERROR_OFFSET only. */
export interface ErrorChunk {
  readonly errno: number
  readonly message: string
  readonly offset: number | undefined
}

/** Decode any error chunk payload (known or unknown error type with bit 15 set). */
export const decodeErrorChunk = (type: number, payload: Buffer): ErrorChunk => {
  checkChunkLength(type, payload.length)
  if (!isErrorChunk(type)) throw protocolError(`chunk type ${type} is not an error`)
  const errno = payload.readUInt32BE(0)
  const msgLen = payload.readUInt16BE(4)
  const fixed = type === NBD_REPLY_TYPE.ERROR_OFFSET ? 14 : 6
  if (msgLen > payload.length - fixed || msgLen > NBD_LIMIT.MAX_STRING) {
    throw protocolError('error message overruns its chunk')
  }
  if (type === NBD_REPLY_TYPE.ERROR && msgLen !== payload.length - 6) {
    throw protocolError('ERROR chunk has trailing bytes')
  }
  if (errno === 0) throw protocolError('error chunk with error value 0')
  let offset: number | undefined
  if (type === NBD_REPLY_TYPE.ERROR_OFFSET) {
    if (payload.length !== 14 + msgLen) throw protocolError('ERROR_OFFSET has a bad length')
    offset = readU64(payload, 6 + msgLen, 'error offset')
  }
  return { errno, message: payload.toString('utf8', 6, 6 + msgLen), offset }
}
