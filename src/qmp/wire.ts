/**
 * Pure QMP wire codec: byte stream → lines → typed messages, and command → bytes. No sockets and
 * no timers live here, so every function is unit-testable with arbitrary input.
 *
 * Framing (qmp-spec.rst §"General Definitions"): every server message is one JSON object
 * terminated by CRLF; QEMU never puts a raw newline inside a message because JSON strings escape
 * control characters. We therefore split on LF, drop a trailing CR and ignore blank lines.
 */
import { BackupError } from '../errors.ts'

/**
 * Longest line accepted from the server, in bytes (without the line terminator). The largest
 * reply we expect is `query-qmp-schema` (≈200 KiB on 7.2); 16 MiB leaves room for big
 * `query-named-block-nodes` answers while bounding what a misbehaving peer can make us buffer.
 */
export const QMP_MAX_LINE = 16 * 1024 * 1024

/** The transaction id QMP echoes back (qmp-spec.rst §"Issuing Commands"); we send integers. */
export type QmpId = number | string

/** Event time as sent by QEMU; both members are -1 if the host clock failed. */
export interface QmpTimestamp {
  /** Seconds since the Unix epoch. */
  readonly seconds: number
  /** Microseconds within the second. */
  readonly microseconds: number
}

/** The `qemu` member of `query-version` and of the greeting. */
export interface QmpVersionTriple {
  readonly major: number
  readonly minor: number
  readonly micro: number
}

/** The first message of a connection (qmp-spec.rst §"Server Greeting"). */
export interface QmpGreetingMessage {
  readonly kind: 'greeting'
  readonly version: QmpVersionTriple
  /** Distribution package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18+b3`. */
  readonly package: string
  /** Optional protocol features offered, e.g. `oob`. */
  readonly capabilities: readonly string[]
}

/** A success response (qmp-spec.rst §"Success"). `id` is absent only if we sent none. */
export interface QmpReturnMessage {
  readonly kind: 'return'
  readonly id: QmpId | undefined
  readonly value: unknown
}

/**
 * An error response (qmp-spec.rst §"Error"). `id` is absent when the server failed before it
 * could read the request's id, e.g. on a JSON parse error.
 */
export interface QmpErrorMessage {
  readonly kind: 'error'
  readonly id: QmpId | undefined
  /** E.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  readonly errorClass: string
  /** Human-readable; the spec says clients must not parse it. */
  readonly desc: string
}

/** An asynchronous event (qmp-spec.rst §"Asynchronous events"). */
export interface QmpEventMessage {
  readonly kind: 'event'
  readonly event: string
  /** Event-specific payload; `{}` when the server sent no `data`. */
  readonly data: Readonly<Record<string, unknown>>
  readonly timestamp: QmpTimestamp
}

/** Every message a QMP server can send. */
export type QmpMessage = QmpGreetingMessage | QmpReturnMessage | QmpErrorMessage | QmpEventMessage

/** A command as put on the wire (qmp-spec.rst §"Issuing Commands"). */
export interface QmpRequest {
  readonly execute: string
  readonly arguments?: object | undefined
  readonly id: QmpId
}

const protocolError = (message: string, details?: Record<string, unknown>): BackupError =>
  new BackupError('QMP_PROTOCOL', message, details ? { details } : undefined)

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** A short, printable excerpt of bad input for error messages. */
const excerpt = (s: string): string => JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s)

/**
 * Splits a byte stream into lines, holding at most {@link QMP_MAX_LINE} bytes of an unfinished
 * line. Chunks are kept as a list and joined once per line, so a reply arriving in many small
 * reads costs one copy, not one per read.
 */
export class QmpLineSplitter {
  readonly #maxLine: number
  #parts: Buffer[] = []
  #partsLength = 0

  /** @param maxLine longest accepted line in bytes; default {@link QMP_MAX_LINE}. */
  constructor(maxLine: number = QMP_MAX_LINE) {
    this.#maxLine = maxLine
  }

  /** Bytes of an unfinished line currently held. */
  get buffered(): number {
    return this.#partsLength
  }

  /**
   * Feed bytes; returns the complete non-blank lines they finish, decoded as UTF-8 without the
   * line terminator. Throws `QMP_PROTOCOL` for an over-long line or invalid UTF-8; the splitter
   * must not be used after that.
   */
  push(chunk: Uint8Array): string[] {
    const bytes = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length)
    const lines: string[] = []
    let start = 0
    while (start < bytes.length) {
      const nl = bytes.indexOf(0x0a, start)
      const end = nl === -1 ? bytes.length : nl
      if (this.#partsLength + (end - start) > this.#maxLine) {
        throw protocolError(`QMP line longer than ${this.#maxLine} bytes`, {
          maxLine: this.#maxLine,
        })
      }
      if (nl === -1) {
        this.#parts.push(bytes.subarray(start))
        this.#partsLength += bytes.length - start
        break
      }
      let line = bytes.subarray(start, nl)
      if (this.#parts.length > 0) {
        this.#parts.push(line)
        line = Buffer.concat(this.#parts, this.#partsLength + line.length)
        this.#parts = []
        this.#partsLength = 0
      }
      start = nl + 1
      const text = decodeLine(line)
      if (text !== '') lines.push(text)
    }
    return lines
  }
}

const decodeLine = (line: Buffer): string => {
  let text: string
  try {
    text = utf8.decode(line)
  } catch (e) {
    throw new BackupError('QMP_PROTOCOL', 'QMP line is not valid UTF-8', { cause: e })
  }
  return text.trim() === '' ? '' : text.replace(/\r$/, '')
}

type JsonObject = Record<string, unknown>

const isObject = (v: unknown): v is JsonObject =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

const has = (o: JsonObject, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key)

const isCount = (v: unknown): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0

const parseId = (o: JsonObject, line: string): QmpId | undefined => {
  if (!has(o, 'id')) return undefined
  const id = o['id']
  // We only ever send integer ids, so anything else cannot be an echo of ours.
  if (typeof id === 'number' || typeof id === 'string') return id
  throw protocolError(`QMP response with an unexpected id: ${excerpt(line)}`)
}

const parseGreeting = (qmp: unknown, line: string): QmpGreetingMessage => {
  const bad = (): BackupError => protocolError(`malformed QMP greeting: ${excerpt(line)}`)
  if (!isObject(qmp) || !isObject(qmp['version'])) throw bad()
  const { qemu, package: pkg } = qmp['version']
  if (!isObject(qemu)) throw bad()
  const { major, minor, micro } = qemu
  if (!isCount(major) || !isCount(minor) || !isCount(micro)) throw bad()
  const caps = qmp['capabilities'] ?? []
  if (!Array.isArray(caps) || !caps.every((c) => typeof c === 'string')) throw bad()
  return {
    kind: 'greeting',
    version: { major, minor, micro },
    package: typeof pkg === 'string' ? pkg : '',
    capabilities: caps,
  }
}

const parseTimestamp = (ts: unknown, line: string): QmpTimestamp => {
  // Mandatory per spec; be liberal and use the spec's "clock failed" value when it is missing.
  if (ts === undefined) return { seconds: -1, microseconds: -1 }
  if (!isObject(ts)) throw protocolError(`malformed QMP event timestamp: ${excerpt(line)}`)
  const { seconds, microseconds } = ts
  if (typeof seconds !== 'number' || typeof microseconds !== 'number') {
    throw protocolError(`malformed QMP event timestamp: ${excerpt(line)}`)
  }
  return { seconds, microseconds }
}

/**
 * Parse one line from the server into a {@link QmpMessage}. Anything that is not one of the four
 * message shapes of qmp-spec.rst throws `QMP_PROTOCOL`. Unknown extra members are ignored
 * (§"Compatibility Considerations": clients must accept new keys).
 */
export const parseMessage = (line: string): QmpMessage => {
  let v: unknown
  try {
    v = JSON.parse(line)
  } catch (e) {
    throw new BackupError('QMP_PROTOCOL', `QMP line is not JSON: ${excerpt(line)}`, { cause: e })
  }
  if (!isObject(v)) throw protocolError(`QMP message is not a JSON object: ${excerpt(line)}`)
  if (has(v, 'QMP')) return parseGreeting(v['QMP'], line)
  if (has(v, 'return')) return { kind: 'return', id: parseId(v, line), value: v['return'] }
  if (has(v, 'error')) {
    const err = v['error']
    if (!isObject(err) || typeof err['class'] !== 'string' || typeof err['desc'] !== 'string') {
      throw protocolError(`malformed QMP error response: ${excerpt(line)}`)
    }
    return { kind: 'error', id: parseId(v, line), errorClass: err['class'], desc: err['desc'] }
  }
  if (has(v, 'event')) {
    const event = v['event']
    const data = v['data'] ?? {}
    if (typeof event !== 'string' || event === '' || !isObject(data)) {
      throw protocolError(`malformed QMP event: ${excerpt(line)}`)
    }
    return { kind: 'event', event, data, timestamp: parseTimestamp(v['timestamp'], line) }
  }
  throw protocolError(`unknown QMP message: ${excerpt(line)}`)
}

/**
 * Encode a command as one JSON line. Throws `QMP_PROTOCOL` if `execute` is empty or the
 * arguments cannot be serialised (cycles, BigInt): that is a caller bug, caught before sending.
 */
export const encodeCommand = (req: QmpRequest): Buffer => {
  if (typeof req.execute !== 'string' || req.execute === '') {
    throw protocolError('QMP command name must be a non-empty string')
  }
  const msg: JsonObject = { execute: req.execute }
  if (req.arguments !== undefined) {
    if (!isObject(req.arguments)) {
      throw protocolError(`arguments of QMP ${req.execute} must be a JSON object`)
    }
    msg['arguments'] = req.arguments
  }
  msg['id'] = req.id
  let text: string
  try {
    text = JSON.stringify(msg)
  } catch (e) {
    throw new BackupError('QMP_PROTOCOL', `cannot encode QMP ${req.execute} arguments`, {
      cause: e,
    })
  }
  // JSON.stringify escapes every control character, so the only LF is our terminator.
  return Buffer.from(`${text}\n`, 'utf8')
}
