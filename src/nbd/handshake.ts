/**
 * Fixed-newstyle option haggling (proto.md §"Fixed newstyle negotiation"), written against a
 * two-method byte channel so it needs no socket of its own:
 *
 *   greeting ─► client flags ─► OPT_STRUCTURED_REPLY ─► [OPT_SET_META_CONTEXT] ─► OPT_GO
 *                                       │                                            │ ERR_UNSUP
 *                                       └─► [OPT_LIST_META_CONTEXT ─► OPT_ABORT]      └─► OPT_EXPORT_NAME
 *
 * One option is outstanding at a time ("The client MUST NOT send any option until it has
 * received a final reply to any option it has sent"), so every step is a plain await.
 */
import { BackupError } from '../errors.ts'
import {
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_HS,
  NBD_INFO,
  NBD_LIMIT,
  NBD_OPT,
  NBD_REP,
  NBD_SIZE,
} from './constants.ts'
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeOptionReply,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeString,
  protocolError,
} from './wire.ts'
import type { OptionReply } from './wire.ts'

/** The byte channel the handshake runs on. */
export interface HandshakeIO {
  /** Resolve with exactly `n` bytes; reject with a BackupError when the peer goes away. */
  read(n: number): Promise<Buffer>
  write(data: Buffer): void
}

/** Block size constraints, proto.md §"Block size constraints". */
export interface BlockSize {
  /** Every offset and length is a multiple of this (a power of two ≤ 64 KiB). */
  readonly minimum: number
  /** Requests aligned to this avoid read-modify-write on the server. */
  readonly preferred: number
  /**
   * Largest READ/WRITE/WRITE_ZEROES length this client sends: the server's maximum, capped at
   * 64 MiB ({@link NBD_LIMIT.MAX_PAYLOAD}); 32 MiB when the server advertises none.
   */
  readonly maximum: number
}

/** What the handshake settled. */
export interface Negotiated {
  readonly exportName: string
  readonly size: number
  /** `NBD_FLAG_*` transmission flags. */
  readonly transmissionFlags: number
  readonly blockSize: BlockSize
  /** The server's own maximum request length (0xffffffff = none; 32 MiB if not advertised). */
  readonly serverMaximum: number
  readonly structuredReplies: boolean
  /** Accepted meta context name → context id. */
  readonly metaContexts: Map<string, number>
}

const OPT_NAMES = new Map<number, string>(
  Object.entries(NBD_OPT).map(([k, v]) => [v, `NBD_OPT_${k}`]),
)
const REP_NAMES = new Map<number, string>(
  Object.entries(NBD_REP).map(([k, v]) => [v, `NBD_REP_${k}`]),
)
const optName = (o: number): string => OPT_NAMES.get(o) ?? `option ${o}`

/** Map an `NBD_REP_ERR_*` reply to a BackupError with a message a human can act on. */
export const optionError = (
  option: number,
  reply: { type: number; message: string },
  exportName: string,
): BackupError => {
  const rep = REP_NAMES.get(reply.type) ?? `error reply 0x${reply.type.toString(16)}`
  const said = reply.message ? `: ${reply.message}` : ''
  const details = { option: optName(option), reply: rep, message: reply.message, exportName }
  const err = (code: 'NOT_FOUND' | 'NBD_UNSUPPORTED' | 'NBD_CLOSED' | 'NBD_PROTOCOL', m: string) =>
    new BackupError(code, `${m} (${optName(option)} → ${rep}${said})`, { details })
  switch (reply.type) {
    case NBD_REP.ERR_UNKNOWN:
      return err('NOT_FOUND', `NBD export "${exportName}" is not available on the server`)
    case NBD_REP.ERR_TLS_REQD:
      return err('NBD_UNSUPPORTED', `NBD server requires TLS for export "${exportName}"`)
    case NBD_REP.ERR_UNSUP:
    case NBD_REP.ERR_PLATFORM:
      return err('NBD_UNSUPPORTED', 'NBD server does not support this option')
    case NBD_REP.ERR_POLICY:
      return err('NBD_UNSUPPORTED', 'NBD server policy refused the option')
    case NBD_REP.ERR_TOO_BIG:
      return err('NBD_UNSUPPORTED', 'NBD server found the request too big')
    case NBD_REP.ERR_SHUTDOWN:
      return err('NBD_CLOSED', 'NBD server is shutting down')
    default:
      return err('NBD_PROTOCOL', 'NBD server rejected the option')
  }
}

const isError = (r: OptionReply): r is Extract<OptionReply, { kind: 'error' }> => r.kind === 'error'

/** Send one option, then read one reply to it. */
const ask = async (io: HandshakeIO, option: number, data?: Buffer): Promise<OptionReply> => {
  io.write(encodeOption(option, data))
  return nextReply(io, option)
}

const nextReply = async (io: HandshakeIO, option: number): Promise<OptionReply> => {
  const header = decodeOptionReplyHeader(await io.read(NBD_SIZE.OPTION_REPLY_HEADER))
  if (header.option !== option) {
    throw protocolError(`reply to ${optName(header.option)} while ${optName(option)} is pending`)
  }
  return decodeOptionReply(header, await io.read(header.length))
}

const unexpected = (option: number, r: OptionReply): BackupError =>
  protocolError(`unexpected ${r.kind} reply to ${optName(option)}`)

/** Greeting and client flags; returns whether the server skips the 124 zero bytes. */
const greet = async (io: HandshakeIO): Promise<boolean> => {
  const { handshakeFlags } = decodeGreeting(await io.read(NBD_SIZE.GREETING))
  if ((handshakeFlags & NBD_FLAG_HS.FIXED_NEWSTYLE) === 0) {
    throw new BackupError('NBD_UNSUPPORTED', 'NBD server does not offer fixed newstyle negotiation')
  }
  const noZeroes = (handshakeFlags & NBD_FLAG_HS.NO_ZEROES) !== 0
  io.write(encodeClientFlags(NBD_FLAG_C.FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C.NO_ZEROES : 0)))
  return noZeroes
}

/** NBD_OPT_STRUCTURED_REPLY: true on ACK; any refusal but SHUTDOWN means simple replies. */
const structuredReplies = async (io: HandshakeIO, exportName: string): Promise<boolean> => {
  const r = await ask(io, NBD_OPT.STRUCTURED_REPLY)
  if (r.kind === 'ack') return true
  if (!isError(r)) throw unexpected(NBD_OPT.STRUCTURED_REPLY, r)
  if (r.type === NBD_REP.ERR_SHUTDOWN) throw optionError(NBD_OPT.STRUCTURED_REPLY, r, exportName)
  return false
}

/** Run LIST or SET_META_CONTEXT and collect the contexts until the final ACK. */
const metaContextOption = async (
  io: HandshakeIO,
  option: typeof NBD_OPT.LIST_META_CONTEXT | typeof NBD_OPT.SET_META_CONTEXT,
  exportName: string,
  queries: readonly string[],
): Promise<Map<string, number> | undefined> => {
  const found = new Map<string, number>()
  const ids = new Set<number>()
  let r = await ask(io, option, encodeMetaContextRequest(exportName, queries))
  for (; r.kind === 'meta-context'; r = await nextReply(io, option)) {
    if (found.size >= NBD_LIMIT.MAX_META_CONTEXTS) throw protocolError('too many meta contexts')
    // Context ids are reserved (zero) in LIST replies, unique in SET replies.
    if (option === NBD_OPT.SET_META_CONTEXT && (ids.has(r.id) || found.has(r.name))) {
      throw protocolError(`meta context id ${r.id} (${r.name}) sent twice`)
    }
    ids.add(r.id)
    found.set(r.name, r.id)
  }
  if (r.kind === 'ack') return found
  if (!isError(r)) throw unexpected(option, r)
  if (r.type === NBD_REP.ERR_UNSUP) return undefined
  throw optionError(option, r, exportName)
}

const isPow2 = (n: number): boolean => n > 0 && Number.isInteger(Math.log2(n))

/** Validate NBD_INFO_BLOCK_SIZE (proto.md §"Block size constraints") and cap the maximum. */
const blockSizeOf = (
  info: { minimum: number; preferred: number; maximum: number } | undefined,
): BlockSize => {
  if (info === undefined) {
    return { minimum: 1, preferred: 4096, maximum: NBD_LIMIT.DEFAULT_MAX_BLOCK }
  }
  const { minimum, preferred, maximum } = info
  const bad = (rule: string): never => {
    throw protocolError(`block size ${minimum}/${preferred}/${maximum}: ${rule}`)
  }
  if (!isPow2(minimum) || minimum > 65536) bad('minimum must be a power of 2 up to 64 KiB')
  if (!isPow2(preferred) || preferred < minimum) bad('preferred must be a power of 2 ≥ minimum')
  if (maximum !== NBD_LIMIT.MAX_U32 && (maximum < minimum || maximum % minimum !== 0)) {
    bad('maximum must be a multiple of minimum')
  }
  return { minimum, preferred, maximum: Math.min(maximum, NBD_LIMIT.MAX_PAYLOAD) }
}

/** Options of {@link negotiate}. */
export interface NegotiateOptions {
  /** Export to open; '' is the server's default export. */
  readonly exportName: string
  /** Meta context queries for NBD_OPT_SET_META_CONTEXT (needs structured replies). */
  readonly metaContexts: readonly string[]
}

/** Run the whole handshake up to the transmission phase. */
export const negotiate = async (io: HandshakeIO, opts: NegotiateOptions): Promise<Negotiated> => {
  const { exportName } = opts
  encodeString(exportName, 'export name')
  const noZeroes = await greet(io)
  const structured = await structuredReplies(io, exportName)
  let metaContexts = new Map<string, number>()
  if (structured && opts.metaContexts.length > 0) {
    const set = NBD_OPT.SET_META_CONTEXT
    metaContexts = (await metaContextOption(io, set, exportName, opts.metaContexts)) ?? metaContexts
  }

  // NBD_OPT_GO with an NBD_INFO_BLOCK_SIZE request: we honour the server's constraints.
  const go = NBD_OPT.GO
  let r = await ask(io, go, encodeInfoRequest(exportName, [NBD_INFO.BLOCK_SIZE]))
  let exp: { size: number; flags: number } | undefined
  let bs: { minimum: number; preferred: number; maximum: number } | undefined
  for (; r.kind === 'info'; r = await nextReply(io, go)) {
    if (r.info.type === 'export') exp = r.info
    else if (r.info.type === 'block-size') bs = r.info
  }
  if (isError(r) && r.type === NBD_REP.ERR_UNSUP) {
    // proto.md §"NBD_OPT_GO": fall back to NBD_OPT_EXPORT_NAME on servers without it.
    io.write(encodeOption(NBD_OPT.EXPORT_NAME, encodeString(exportName, 'export name')))
    exp = decodeExportNameReply(await io.read(NBD_SIZE.EXPORT_NAME_REPLY))
    if (!noZeroes) await io.read(NBD_SIZE.EXPORT_NAME_ZEROES)
  } else if (isError(r)) {
    throw optionError(go, r, exportName)
  } else if (r.kind !== 'ack') {
    throw unexpected(go, r)
  }
  if (exp === undefined) throw protocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT')
  if ((exp.flags & NBD_FLAG.HAS_FLAGS) === 0) throw protocolError('NBD_FLAG_HAS_FLAGS not set')
  return {
    exportName,
    size: exp.size,
    transmissionFlags: exp.flags,
    blockSize: blockSizeOf(bs),
    serverMaximum: bs?.maximum ?? NBD_LIMIT.DEFAULT_MAX_BLOCK,
    structuredReplies: structured,
    metaContexts,
  }
}

/**
 * NBD_OPT_LIST_META_CONTEXT, then NBD_OPT_ABORT. An empty `queries` lists every context the
 * server offers for the export. A server without structured replies or without the option
 * has no contexts: the result is empty.
 */
export const listContexts = async (
  io: HandshakeIO,
  exportName: string,
  queries: readonly string[],
): Promise<string[]> => {
  encodeString(exportName, 'export name')
  await greet(io)
  let names: string[] = []
  if (await structuredReplies(io, exportName)) {
    const found = await metaContextOption(io, NBD_OPT.LIST_META_CONTEXT, exportName, queries)
    names = [...(found?.keys() ?? [])]
  }
  // Soft disconnect. The server MUST ACK but may also hang up; the caller ends the socket and
  // waits (bounded) for the server to close it, so a silent server cannot stall us here.
  io.write(encodeOption(NBD_OPT.ABORT))
  return names
}
