/**
 * Pure encoders and decoders of NBD wire messages (proto.md): Buffer in, typed object out, no
 * sockets and no timers. Every decoder checks each length before it reads or allocates, so any
 * malformed input throws `BackupError('NBD_PROTOCOL')` and never a RangeError.
 *
 * This file holds the shared helpers and the handshake messages; `wire-transmission.ts` holds
 * requests and replies. Only the client's direction is here: it decodes the greeting and option
 * replies and encodes the client flags and options. The server's mirror image, which the test fake
 * and the round-trip tests need, lives in `test/helpers/nbd-server-wire.ts`.
 */
import { BackupError } from '../errors.ts'
import {
  NBD_INFO,
  NBD_LIMIT,
  NBD_MAGIC,
  NBD_REP,
  NBD_REP_FLAG_ERROR,
  NBD_SIZE,
} from './constants.ts'

const EMPTY = Buffer.alloc(0)

/** A `NBD_PROTOCOL` error: the peer broke the protocol. */
export const protocolError = (message: string, details?: Record<string, unknown>): BackupError =>
  new BackupError('NBD_PROTOCOL', `NBD protocol error: ${message}`, details ? { details } : {})

const need = (buf: Uint8Array, n: number, what: string): void => {
  if (buf.length < n) throw protocolError(`${what}: need ${n} bytes, got ${buf.length}`)
}

const view = (buf: Uint8Array): Buffer =>
  Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)

/** Read an unsigned 64-bit value that must fit a JS safe integer (offsets, sizes). */
export const readU64 = (buf: Buffer, off: number, what: string): number => {
  const hi = buf.readUInt32BE(off)
  if (hi > 0x1fffff) throw protocolError(`${what} exceeds 2^53`)
  return hi * 0x100000000 + buf.readUInt32BE(off + 4)
}

/** Write a safe non-negative integer as an unsigned 64-bit big-endian value. */
export const writeU64 = (buf: Buffer, off: number, value: number): void => {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), off)
  buf.writeUInt32BE(value % 0x100000000, off + 4)
}

const readString = (buf: Buffer, start: number, length: number, what: string): string => {
  if (length > NBD_LIMIT.MAX_STRING) throw protocolError(`${what} longer than 4096 bytes`)
  if (start + length > buf.length) throw protocolError(`${what} overruns its message`)
  return buf.toString('utf8', start, start + length)
}

/** Encode a string field; proto.md §"Conventions" caps strings at 4096 bytes. */
export const encodeString = (s: string, what: string): Buffer => {
  const b = Buffer.from(s, 'utf8')
  if (b.length > NBD_LIMIT.MAX_STRING || s.includes('\0')) {
    throw new BackupError('USAGE', `${what} must be at most 4096 bytes of UTF-8 without NUL`)
  }
  return b
}

// ---------------------------------------------------------------- handshake (proto.md §Handshake)

/** Decode the greeting; oldstyle servers are `NBD_UNSUPPORTED`. */
export const decodeGreeting = (raw: Uint8Array): { handshakeFlags: number } => {
  const b = view(raw)
  need(b, NBD_SIZE.GREETING, 'greeting')
  if (b.readBigUInt64BE(0) !== NBD_MAGIC.INIT_PASSWD) throw protocolError('bad greeting magic')
  const second = b.readBigUInt64BE(8)
  if (second === NBD_MAGIC.CLISERV_MAGIC) {
    throw new BackupError('NBD_UNSUPPORTED', 'NBD server uses oldstyle negotiation')
  }
  if (second !== NBD_MAGIC.IHAVEOPT) throw protocolError('bad greeting magic (IHAVEOPT)')
  return { handshakeFlags: b.readUInt16BE(16) }
}

/** The 32-bit client flags word. */
export const encodeClientFlags = (flags: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(flags >>> 0, 0)
  return b
}

/** An option request: IHAVEOPT, option, length, data (proto.md §"Newstyle negotiation"). */
export const encodeOption = (option: number, data: Buffer = EMPTY): Buffer => {
  const b = Buffer.allocUnsafe(NBD_SIZE.OPTION_HEADER + data.length)
  b.writeBigUInt64BE(NBD_MAGIC.IHAVEOPT, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(data.length, 12)
  data.copy(b, NBD_SIZE.OPTION_HEADER)
  return b
}

/** Data of `NBD_OPT_INFO` / `NBD_OPT_GO`: name length, name, count, info types. */
export const encodeInfoRequest = (exportName: string, infos: readonly number[]): Buffer => {
  const name = encodeString(exportName, 'export name')
  const b = Buffer.alloc(4 + name.length + 2 + 2 * infos.length)
  b.writeUInt32BE(name.length, 0)
  name.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + name.length)
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + name.length + 2 * i))
  return b
}

/** Data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`. */
export const encodeMetaContextRequest = (
  exportName: string,
  queries: readonly string[],
): Buffer => {
  const parts = [encodeString(exportName, 'export name')]
  for (const q of queries) parts.push(encodeString(q, 'meta context query'))
  const size = parts.reduce((n, p) => n + 4 + p.length, 4)
  const b = Buffer.alloc(size)
  let off = 0
  const put = (p: Buffer): void => {
    b.writeUInt32BE(p.length, off)
    p.copy(b, off + 4)
    off += 4 + p.length
  }
  put(parts[0] ?? EMPTY)
  b.writeUInt32BE(queries.length, off)
  off += 4
  for (const p of parts.slice(1)) put(p)
  return b
}

/** Header of an option reply (proto.md §"Fixed newstyle negotiation"). */
export interface OptionReplyHeader {
  readonly option: number
  readonly type: number
  /** Payload length; at most {@link NBD_LIMIT.MAX_OPTION_REPLY}. */
  readonly length: number
}

/** Decode an option reply header; the payload length is bounded before anyone allocates. */
export const decodeOptionReplyHeader = (raw: Uint8Array): OptionReplyHeader => {
  const b = view(raw)
  need(b, NBD_SIZE.OPTION_REPLY_HEADER, 'option reply header')
  if (b.readBigUInt64BE(0) !== NBD_MAGIC.OPTION_REPLY) throw protocolError('bad option reply magic')
  const length = b.readUInt32BE(16)
  if (length > NBD_LIMIT.MAX_OPTION_REPLY) {
    throw protocolError(`option reply of ${length} bytes is too long`)
  }
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length }
}

/** One `NBD_REP_INFO` item (proto.md §"`NBD_REP_INFO`"). */
export type ExportInfo =
  | { readonly type: 'export'; readonly size: number; readonly flags: number }
  | { readonly type: 'name'; readonly name: string }
  | { readonly type: 'description'; readonly description: string }
  | {
      readonly type: 'block-size'
      readonly minimum: number
      readonly preferred: number
      readonly maximum: number
    }
  | { readonly type: 'unknown'; readonly infoType: number }

/** A decoded option reply. */
export type OptionReply =
  | { readonly kind: 'ack' }
  | { readonly kind: 'server'; readonly name: string; readonly description: string }
  | { readonly kind: 'info'; readonly info: ExportInfo }
  | { readonly kind: 'meta-context'; readonly id: number; readonly name: string }
  | { readonly kind: 'error'; readonly type: number; readonly message: string }
  | { readonly kind: 'unknown'; readonly type: number }

const decodeInfo = (b: Buffer): ExportInfo => {
  need(b, 2, 'NBD_REP_INFO')
  const infoType = b.readUInt16BE(0)
  switch (infoType) {
    case NBD_INFO.EXPORT:
      if (b.length !== 12) throw protocolError('NBD_INFO_EXPORT must be 12 bytes')
      return { type: 'export', size: readU64(b, 2, 'export size'), flags: b.readUInt16BE(10) }
    case NBD_INFO.NAME:
      return { type: 'name', name: readString(b, 2, b.length - 2, 'export name') }
    case NBD_INFO.DESCRIPTION:
      return { type: 'description', description: readString(b, 2, b.length - 2, 'description') }
    case NBD_INFO.BLOCK_SIZE:
      if (b.length !== 14) throw protocolError('NBD_INFO_BLOCK_SIZE must be 14 bytes')
      return {
        type: 'block-size',
        minimum: b.readUInt32BE(2),
        preferred: b.readUInt32BE(6),
        maximum: b.readUInt32BE(10),
      }
    default:
      return { type: 'unknown', infoType }
  }
}

/** Decode an option reply payload of the given header (payload length must match). */
export const decodeOptionReply = (header: OptionReplyHeader, raw: Uint8Array): OptionReply => {
  const b = view(raw)
  if (b.length !== header.length) throw protocolError('option reply payload length mismatch')
  if (header.type >= NBD_REP_FLAG_ERROR) {
    return { kind: 'error', type: header.type, message: readString(b, 0, b.length, 'message') }
  }
  switch (header.type) {
    case NBD_REP.ACK:
      if (b.length !== 0) throw protocolError('NBD_REP_ACK with a payload')
      return { kind: 'ack' }
    case NBD_REP.SERVER: {
      need(b, 4, 'NBD_REP_SERVER')
      const len = b.readUInt32BE(0)
      if (len > b.length - 4) throw protocolError('NBD_REP_SERVER name overruns the reply')
      const name = readString(b, 4, len, 'export name')
      const description = readString(b, 4 + len, b.length - 4 - len, 'description')
      return { kind: 'server', name, description }
    }
    case NBD_REP.INFO:
      return { kind: 'info', info: decodeInfo(b) }
    case NBD_REP.META_CONTEXT:
      need(b, 4, 'NBD_REP_META_CONTEXT')
      return {
        kind: 'meta-context',
        id: b.readUInt32BE(0),
        name: readString(b, 4, b.length - 4, 'meta context name'),
      }
    default:
      return { kind: 'unknown', type: header.type }
  }
}

/** Decode the first 10 bytes of an `NBD_OPT_EXPORT_NAME` reply. */
export const decodeExportNameReply = (raw: Uint8Array): { size: number; flags: number } => {
  const b = view(raw)
  need(b, NBD_SIZE.EXPORT_NAME_REPLY, 'export name reply')
  return { size: readU64(b, 0, 'export size'), flags: b.readUInt16BE(8) }
}
