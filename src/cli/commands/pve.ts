/**
 * `guestbackup pve-call`, for the Proxmox VE plugin (docs/pve-protocol.md): the greeting on
 * stdout, then one request line read from stdin, then the call's log lines and its final line
 * (a result or an error). Nothing else is ever written on stdout; logs of the CLI itself go to
 * stderr.
 */
import { BackupError } from '../../errors.ts'
import {
  decodeRequest,
  encodeGreeting,
  encodeReply,
  MAX_REQUEST_BYTES,
} from '../../pve/protocol.ts'
import type { FinalReply } from '../../pve/protocol.ts'
import { HoldRequestSchema, runHolder } from '../../pve/holder.ts'
import { errorReply, serveCall } from '../../pve/service.ts'
import type { CliIO } from '../io.ts'

/**
 * Read the first line of `input` (up to `\n`, or to the end of the input), at most `max`
 * bytes, as UTF-8; stops reading at the newline.
 * @throws BackupError `PVE_PROTOCOL` when there is no line, it is too long or not UTF-8.
 */
export const readRequestLine = async (
  input: AsyncIterable<Buffer | string> | undefined,
  max = MAX_REQUEST_BYTES,
): Promise<string> => {
  if (input === undefined) throw new BackupError('PVE_PROTOCOL', 'no request on stdin')
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of input) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    const nl = buf.indexOf(0x0a)
    const part = nl === -1 ? buf : buf.subarray(0, nl)
    size += part.length
    if (size > max) {
      throw new BackupError('PVE_PROTOCOL', `the request line is longer than ${max} bytes`)
    }
    chunks.push(part)
    if (nl !== -1) break
  }
  if (size === 0) throw new BackupError('PVE_PROTOCOL', 'no request line on stdin')
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks))
  } catch (e) {
    throw new BackupError('PVE_PROTOCOL', 'the request line is not UTF-8', { cause: e })
  }
}

/** Run one call; returns the exit code (0: a final line was written). */
export const pveCallCommand = async (io: CliIO, version: string): Promise<number> => {
  io.stdout.write(encodeGreeting(version))
  let final: FinalReply
  try {
    const request = decodeRequest(await readRequestLine(io.stdin))
    final = await serveCall(
      request,
      {
        log: (level, message) => io.stdout.write(encodeReply({ kind: 'log', level, message })),
      },
      io.signal,
    )
  } catch (e) {
    final = errorReply(e)
  }
  io.stdout.write(encodeReply(final))
  return 0
}

/**
 * `guestbackup pve-hold`: one hold request (./pve/holder.ts) on stdin, one result line on
 * stdout, then hold until SIGTERM (the CLI's abort signal) or the watched process is gone.
 */
export const pveHoldCommand = async (io: CliIO): Promise<number> => {
  let request
  try {
    request = HoldRequestSchema.parse(JSON.parse(await readRequestLine(io.stdin)))
  } catch (e) {
    io.stdout.write(`${JSON.stringify({ error: { code: 'PVE_PROTOCOL', message: String(e) } })}\n`)
    return 2
  }
  await runHolder(
    request,
    (line) => {
      // The starter reads one line and goes away: a later EPIPE is not ours to report.
      try {
        io.stdout.write(`${JSON.stringify(line)}\n`)
      } catch {
        // ignored
      }
    },
    io.signal,
  )
  return 0
}
