/**
 * The server half of the NBD wire codec, for the test fake and the codec round-trip tests only:
 * the client in `src/nbd` never sends these messages nor reads them. Layouts follow proto.md of
 * NetworkBlockDevice/nbd (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
 * Like the client codec these are pure; malformed input throws `BackupError('NBD_PROTOCOL')`.
 */
import {
  NBD_INFO,
  NBD_LIMIT,
  NBD_MAGIC,
  NBD_REPLY_FLAG,
  NBD_REPLY_TYPE,
  NBD_SIZE,
} from '../../src/nbd/constants.ts'
import { writeRequest } from '../../src/nbd/wire-transmission.ts'
import type { BlockDescriptor, NbdRequest } from '../../src/nbd/wire-transmission.ts'
import { encodeString, protocolError, readU64, writeU64 } from '../../src/nbd/wire.ts'

const EMPTY = Buffer.alloc(0)

const need = (buf: Uint8Array, n: number, what: string): void => {
  if (buf.length < n) throw protocolError(`${what}: need ${n} bytes, got ${buf.length}`)
}

const view = (buf: Uint8Array): Buffer =>
  Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)

const readString = (buf: Buffer, start: number, length: number, what: string): string => {
  if (length > NBD_LIMIT.MAX_STRING) throw protocolError(`${what} longer than 4096 bytes`)
  if (start + length > buf.length) throw protocolError(`${what} overruns its message`)
  return buf.toString('utf8', start, start + length)
}

// ---------------------------------------------------------------- handshake (proto.md §Handshake)

/** Newstyle greeting (server → client): INIT_PASSWD, IHAVEOPT, 16-bit handshake flags. */
export const encodeGreeting = (handshakeFlags: number): Buffer => {
  const b = Buffer.alloc(NBD_SIZE.GREETING)
  b.writeBigUInt64BE(NBD_MAGIC.INIT_PASSWD, 0)
  b.writeBigUInt64BE(NBD_MAGIC.IHAVEOPT, 8)
  b.writeUInt16BE(handshakeFlags, 16)
  return b
}

/** Decode the 32-bit client flags word. */
export const decodeClientFlags = (raw: Uint8Array): number => {
  const b = view(raw)
  need(b, 4, 'client flags')
  return b.readUInt32BE(0)
}

/** Decode an option header; `length` is bounded by `maxLength`. */
export const decodeOptionHeader = (
  raw: Uint8Array,
  maxLength: number = NBD_LIMIT.MAX_OPTION_REPLY,
): { option: number; length: number } => {
  const b = view(raw)
  need(b, NBD_SIZE.OPTION_HEADER, 'option header')
  if (b.readBigUInt64BE(0) !== NBD_MAGIC.IHAVEOPT) throw protocolError('bad option magic')
  const length = b.readUInt32BE(12)
  if (length > maxLength) throw protocolError(`option data of ${length} bytes is too long`)
  return { option: b.readUInt32BE(8), length }
}

/** Decode `NBD_OPT_INFO` / `NBD_OPT_GO` data: name length, name, count, info types. */
export const decodeInfoRequest = (raw: Uint8Array): { exportName: string; infos: number[] } => {
  const b = view(raw)
  need(b, 6, 'info request')
  const nameLen = b.readUInt32BE(0)
  if (nameLen > b.length - 6) throw protocolError('info request name overruns the option')
  const exportName = readString(b, 4, nameLen, 'export name')
  const count = b.readUInt16BE(4 + nameLen)
  if (b.length !== 6 + nameLen + 2 * count) throw protocolError('info request has a bad length')
  const infos: number[] = []
  for (let i = 0; i < count; i++) infos.push(b.readUInt16BE(6 + nameLen + 2 * i))
  return { exportName, infos }
}

/** Decode `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data. */
export const decodeMetaContextRequest = (
  raw: Uint8Array,
): { exportName: string; queries: string[] } => {
  const b = view(raw)
  let off = 0
  const str = (what: string): string => {
    need(b, off + 4, what)
    const len = b.readUInt32BE(off)
    const s = readString(b, off + 4, len, what)
    off += 4 + len
    return s
  }
  const exportName = str('export name')
  need(b, off + 4, 'query count')
  const count = b.readUInt32BE(off)
  off += 4
  if (count > NBD_LIMIT.MAX_META_CONTEXTS) throw protocolError('too many meta context queries')
  const queries: string[] = []
  for (let i = 0; i < count; i++) queries.push(str('meta context query'))
  if (off !== b.length) throw protocolError('meta context request has trailing bytes')
  return { exportName, queries }
}

/** An option reply header plus its data (proto.md §"Option reply"). */
export const encodeOptionReply = (option: number, type: number, data: Buffer = EMPTY): Buffer => {
  const b = Buffer.allocUnsafe(NBD_SIZE.OPTION_REPLY_HEADER + data.length)
  b.writeBigUInt64BE(NBD_MAGIC.OPTION_REPLY, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(type >>> 0, 12)
  b.writeUInt32BE(data.length, 16)
  data.copy(b, NBD_SIZE.OPTION_REPLY_HEADER)
  return b
}

/** Payload of `NBD_REP_INFO` / `NBD_INFO_EXPORT`: type, 64-bit size, 16-bit flags. */
export const encodeInfoExport = (size: number, flags: number): Buffer => {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(NBD_INFO.EXPORT, 0)
  writeU64(b, 2, size)
  b.writeUInt16BE(flags, 10)
  return b
}

/** Payload of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`: type, minimum, preferred, maximum. */
export const encodeInfoBlockSize = (min: number, preferred: number, max: number): Buffer => {
  const b = Buffer.alloc(14)
  b.writeUInt16BE(NBD_INFO.BLOCK_SIZE, 0)
  b.writeUInt32BE(min, 2)
  b.writeUInt32BE(preferred, 6)
  b.writeUInt32BE(max, 10)
  return b
}

/** Payload of `NBD_REP_META_CONTEXT`: 32-bit context id, then the name. */
export const encodeMetaContext = (id: number, name: string): Buffer => {
  const n = encodeString(name, 'meta context name')
  const b = Buffer.alloc(4 + n.length)
  b.writeUInt32BE(id, 0)
  n.copy(b, 4)
  return b
}

/** Reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless NO_ZEROES. */
export const encodeExportNameReply = (size: number, flags: number, zeroes: boolean): Buffer => {
  const b = Buffer.alloc(NBD_SIZE.EXPORT_NAME_REPLY + (zeroes ? NBD_SIZE.EXPORT_NAME_ZEROES : 0))
  writeU64(b, 0, size)
  b.writeUInt16BE(flags, 8)
  return b
}

// ------------------------------------------------------- transmission (proto.md §Transmission)

/** Encode a request header into a fresh buffer (the client writes in place with `writeRequest`). */
export const encodeRequest = (r: NbdRequest): Buffer => {
  const b = Buffer.allocUnsafe(NBD_SIZE.REQUEST)
  writeRequest(b, 0, r)
  return b
}

/** Decode a request header (proto.md §"Request message"). */
export const decodeRequest = (b: Buffer, off = 0): NbdRequest => {
  if (b.length - off < NBD_SIZE.REQUEST) throw protocolError('truncated request header')
  if (b.readUInt32BE(off) !== NBD_MAGIC.REQUEST) throw protocolError('bad request magic')
  return {
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookie: b.readBigUInt64BE(off + 8),
    offset: readU64(b, off + 16, 'request offset'),
    length: b.readUInt32BE(off + 24),
  }
}

/** Encode a simple reply header, optionally followed by READ data (proto.md §"Simple reply message"). */
export const encodeSimpleReply = (cookie: bigint, error: number, data?: Buffer): Buffer => {
  const b = Buffer.alloc(NBD_SIZE.SIMPLE_REPLY + (data?.length ?? 0))
  b.writeUInt32BE(NBD_MAGIC.SIMPLE_REPLY, 0)
  b.writeUInt32BE(error, 4)
  b.writeBigUInt64BE(cookie, 8)
  data?.copy(b, NBD_SIZE.SIMPLE_REPLY)
  return b
}

/** Encode a structured chunk: header plus payload (proto.md §"Structured reply chunk message"). */
export const encodeChunk = (
  flags: number,
  type: number,
  cookie: bigint,
  payload: Buffer,
): Buffer => {
  const b = Buffer.alloc(NBD_SIZE.STRUCTURED_REPLY + payload.length)
  b.writeUInt32BE(NBD_MAGIC.STRUCTURED_REPLY, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  b.writeBigUInt64BE(cookie, 8)
  b.writeUInt32BE(payload.length, 16)
  payload.copy(b, NBD_SIZE.STRUCTURED_REPLY)
  return b
}

/** `NBD_REPLY_TYPE_NONE` with DONE. */
export const encodeNoneChunk = (cookie: bigint): Buffer =>
  encodeChunk(NBD_REPLY_FLAG.DONE, NBD_REPLY_TYPE.NONE, cookie, EMPTY)

/** `NBD_REPLY_TYPE_OFFSET_DATA`: 64-bit offset, then data. */
export const encodeOffsetData = (
  cookie: bigint,
  offset: number,
  data: Buffer,
  flags = 0,
): Buffer => {
  const p = Buffer.alloc(8 + data.length)
  writeU64(p, 0, offset)
  data.copy(p, 8)
  return encodeChunk(flags, NBD_REPLY_TYPE.OFFSET_DATA, cookie, p)
}

/** `NBD_REPLY_TYPE_OFFSET_HOLE`: 64-bit offset, 32-bit hole size. */
export const encodeOffsetHole = (
  cookie: bigint,
  offset: number,
  size: number,
  flags = 0,
): Buffer => {
  const p = Buffer.alloc(12)
  writeU64(p, 0, offset)
  p.writeUInt32BE(size, 8)
  return encodeChunk(flags, NBD_REPLY_TYPE.OFFSET_HOLE, cookie, p)
}

/** `NBD_REPLY_TYPE_BLOCK_STATUS`: context id, then 32-bit length / 32-bit flags descriptors. */
export const encodeBlockStatus = (
  cookie: bigint,
  contextId: number,
  descriptors: readonly BlockDescriptor[],
  flags = 0,
): Buffer => {
  const p = Buffer.alloc(4 + 8 * descriptors.length)
  p.writeUInt32BE(contextId, 0)
  descriptors.forEach((d, i) => {
    p.writeUInt32BE(d.length, 4 + 8 * i)
    p.writeUInt32BE(d.flags >>> 0, 8 + 8 * i)
  })
  return encodeChunk(flags, NBD_REPLY_TYPE.BLOCK_STATUS, cookie, p)
}

/** `NBD_REPLY_TYPE_ERROR`, or `ERROR_OFFSET` when `offset` is given. DONE by default. */
export const encodeErrorChunk = (
  cookie: bigint,
  errno: number,
  message: string,
  opts: { offset?: number; flags?: number } = {},
): Buffer => {
  const m = encodeString(message, 'error message')
  const withOffset = opts.offset !== undefined
  const p = Buffer.alloc(6 + m.length + (withOffset ? 8 : 0))
  p.writeUInt32BE(errno, 0)
  p.writeUInt16BE(m.length, 4)
  m.copy(p, 6)
  if (opts.offset !== undefined) writeU64(p, 6 + m.length, opts.offset)
  const type = withOffset ? NBD_REPLY_TYPE.ERROR_OFFSET : NBD_REPLY_TYPE.ERROR
  return encodeChunk(opts.flags ?? NBD_REPLY_FLAG.DONE, type, cookie, p)
}
