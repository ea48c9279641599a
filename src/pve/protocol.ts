/**
 * The line protocol between the Proxmox VE Perl shim and `guestbackup pve-call`
 * (docs/pve-protocol.md): one JSON object per line, ended by `\n`. This module is the pure
 * codec: schemas, encoders and decoders; it does no I/O.
 *
 * One call, as the service writes it on stdout:
 * ```
 * greeting   {"guestbackup":"0.1.0","protocol":1}
 * log*       {"log":{"level":"info","message":"…"}}
 * final      {"result":…,"session":…}  |  {"error":{"code":"…","message":"…"}}
 * ```
 */
import * as z from 'zod'
import { BackupError, ERROR_CODES } from '../errors.ts'
import type { ErrorCode } from '../errors.ts'
import { STORE_ID_RE } from '../provider/directory/options.ts'

/** The protocol number this guestbackup speaks. */
export const PROTOCOL = 1

/** Upper bound of one request line, bytes (the shim sends a few KiB). */
export const MAX_REQUEST_BYTES = 16 * 1024 * 1024

/** Method names as Perl spells them (`backup_vm_query_incremental`). */
export const METHOD_RE = /^[a-z][a-z0-9_]{0,63}$/

/** A JSON value (what Perl's JSON encoder can produce). */
export type JsonValue = z.infer<typeof JsonSchema>

export const JsonSchema = z.json()

/** One line of text: no line break inside (a message is shown as one line by the shim). */
const OneLine = z.string().regex(/^[^\n\r]*$/, 'must be one line')

/** Schema of the request line. */
export const RequestSchema = z.strictObject({
  protocol: z.literal(PROTOCOL),
  /** The Perl method name. */
  method: z.string().regex(METHOD_RE, 'not a method name'),
  /**
   * The Proxmox storage id; `null` for `parse_volname`, which Proxmox calls without storage
   * (pve-storage PVE/Storage/Plugin.pm: `parse_volname($class, $volname)`).
   */
  storeid: z.string().regex(STORE_ID_RE, 'not a storage id').nullable(),
  /** The storage's section of storage.cfg, keys as there. */
  scfg: z.record(z.string(), JsonSchema),
  /** The method's Perl arguments after the object or class (and scfg/storeid). */
  args: z.array(JsonSchema),
  /** Provider methods: the last reply's session, `null` before the first. */
  session: JsonSchema.optional(),
})

/** A decoded request. */
export type PveRequest = z.infer<typeof RequestSchema>

/** Schema of the greeting, the first line the service writes. */
export const GreetingSchema = z.strictObject({
  guestbackup: z.string().min(1),
  protocol: z.number().int().positive(),
})

/** The greeting. */
export type Greeting = z.infer<typeof GreetingSchema>

/** Log levels of a log line (Proxmox's `$log_function` levels). */
export const LOG_LEVELS = ['info', 'warn', 'err'] as const

/** A log level. */
export type PveLogLevel = (typeof LOG_LEVELS)[number]

const LogLineSchema = z.strictObject({
  log: z.strictObject({ level: z.enum(LOG_LEVELS), message: OneLine }),
})

const ResultLineSchema = z.strictObject({
  result: JsonSchema,
  session: JsonSchema.optional(),
})

const ErrorLineSchema = z.strictObject({
  error: z.strictObject({ code: z.enum(ERROR_CODES), message: OneLine }),
})

/** A reply line after the greeting. */
export type ReplyLine =
  | { kind: 'log'; level: PveLogLevel; message: string }
  | { kind: 'result'; result: JsonValue; session?: JsonValue }
  | { kind: 'error'; code: ErrorCode; message: string }

/** The final line of a call (a result or an error). */
export type FinalReply = Exclude<ReplyLine, { kind: 'log' }>

const malformed = (what: string, why: string): BackupError =>
  new BackupError('PVE_PROTOCOL', `malformed ${what}: ${why}`)

/** Parse one line (trailing `\n` allowed) as JSON; `PVE_PROTOCOL` if it is not. */
const parseLine = (line: string, what: string): unknown => {
  const text = line.endsWith('\n') ? line.slice(0, -1) : line
  if (text.includes('\n')) throw malformed(what, 'more than one line')
  try {
    return JSON.parse(text) as unknown
  } catch {
    throw malformed(what, 'not JSON')
  }
}

const issues = (e: z.ZodError): string =>
  e.issues
    .slice(0, 3)
    .map((i) => `${i.path.join('.') || 'line'}: ${i.message}`)
    .join('; ')

/** Make `text` one line: line breaks become spaces. */
export const oneLine = (text: string): string => text.replace(/\r\n|[\n\r]/g, ' ')

/** Encode a line: its JSON and `\n` (JSON.stringify escapes every line break in strings). */
const line = (value: unknown): string => `${JSON.stringify(value)}\n`

/** Encode a request line. */
export const encodeRequest = (req: PveRequest): string => line(req)

/**
 * Decode a request line. A line with a `protocol` other than {@link PROTOCOL} is refused with
 * `UNSUPPORTED` before its shape is looked at (another protocol may have another shape);
 * anything else that is not a request is `PVE_PROTOCOL`.
 */
export const decodeRequest = (text: string): PveRequest => {
  const json = parseLine(text, 'request')
  if (typeof json === 'object' && json !== null && !Array.isArray(json) && 'protocol' in json) {
    const p = json.protocol
    if (p !== PROTOCOL) {
      throw new BackupError(
        'UNSUPPORTED',
        `protocol mismatch (plugin speaks ${JSON.stringify(p)}, guestbackup speaks ${PROTOCOL})`,
      )
    }
  }
  const r = RequestSchema.safeParse(json)
  if (!r.success) throw malformed('request', issues(r.error))
  return r.data
}

/** Encode the greeting. */
export const encodeGreeting = (version: string): string =>
  line({ guestbackup: version, protocol: PROTOCOL } satisfies Greeting)

/** Decode the greeting; `PVE_PROTOCOL` if the line is not one. */
export const decodeGreeting = (text: string): Greeting => {
  const r = GreetingSchema.safeParse(parseLine(text, 'greeting'))
  if (!r.success) throw malformed('greeting', issues(r.error))
  return r.data
}

/** Encode a reply line; messages are made one line. */
export const encodeReply = (reply: ReplyLine): string => {
  switch (reply.kind) {
    case 'log':
      return line({ log: { level: reply.level, message: oneLine(reply.message) } })
    case 'result':
      return line(
        reply.session === undefined
          ? { result: reply.result }
          : { result: reply.result, session: reply.session },
      )
    case 'error':
      return line({ error: { code: reply.code, message: oneLine(reply.message) } })
  }
}

/** Decode a reply line after the greeting; `PVE_PROTOCOL` if it is none of the shapes. */
export const decodeReply = (text: string): ReplyLine => {
  const json = parseLine(text, 'reply')
  const log = LogLineSchema.safeParse(json)
  if (log.success) return { kind: 'log', ...log.data.log }
  const res = ResultLineSchema.safeParse(json)
  if (res.success) {
    const { result, session } = res.data
    return session === undefined ? { kind: 'result', result } : { kind: 'result', result, session }
  }
  const err = ErrorLineSchema.safeParse(json)
  if (err.success) return { kind: 'error', ...err.data.error }
  throw malformed('reply', 'not a log, result or error line')
}
