/**
 * Calls of `guestbackup pve-call` in-process, as the Proxmox VE shim makes them: one request
 * line on stdin, the greeting, log lines and one final line on stdout (docs/pve-protocol.md).
 */
import assert from 'node:assert/strict'
import { decodeGreeting, decodeReply, encodeRequest, PROTOCOL } from '../../src/pve/protocol.ts'
import type { JsonValue, ReplyLine } from '../../src/pve/protocol.ts'
import { runCliInProcess } from './cli.ts'

/** What one call printed, decoded. */
export interface PveCallResult {
  greeting: { guestbackup: string; protocol: number }
  logs: { level: string; message: string }[]
  final: Exclude<ReplyLine, { kind: 'log' }>
  stderr: string
}

/** Run `pve-call` with `stdin` as given; checks the exit code and every stdout line. */
export const pveRaw = async (stdin: string | Buffer): Promise<PveCallResult> => {
  const r = await runCliInProcess(['pve-call'], { stdin })
  assert.equal(r.code, 0, `pve-call exited ${r.code}: ${r.stderr}`)
  assert.ok(r.stdout.endsWith('\n'), 'stdout ends with a newline')
  const lines = r.stdout.slice(0, -1).split('\n')
  const greeting = decodeGreeting(lines[0] ?? '')
  const replies = lines.slice(1).map((l) => decodeReply(l))
  const final = replies.pop()
  assert.ok(final !== undefined && final.kind !== 'log', 'the last line is a final line')
  const logs: PveCallResult['logs'] = []
  for (const x of replies) {
    if (x.kind !== 'log') assert.fail('only log lines come before the final line')
    logs.push({ level: x.level, message: x.message })
  }
  return { greeting, logs, final, stderr: r.stderr }
}

/** Options of {@link pveCall}. */
export interface PveCallOptions {
  /** Default `gb`; `null` sends no storage (as the shim does for `parse_volname`). */
  storeid?: string | null
  session?: JsonValue
  /** Extra storage.cfg keys. */
  scfg?: Record<string, JsonValue>
}

/** One call of `method` on the store at `path` with Perl `args`. */
export const pveCall = (
  path: string,
  method: string,
  args: JsonValue[],
  opts: PveCallOptions = {},
): Promise<PveCallResult> =>
  pveRaw(
    encodeRequest({
      protocol: PROTOCOL,
      method,
      storeid: opts.storeid === undefined ? 'gb' : opts.storeid,
      scfg:
        opts.storeid === null ? {} : { type: 'guestbackup', path, content: 'backup', ...opts.scfg },
      args,
      session: opts.session ?? null,
    }),
  )

/** {@link pveCall} that must succeed; returns the result and session. */
export const pveOk = async (
  path: string,
  method: string,
  args: JsonValue[],
  opts: PveCallOptions = {},
): Promise<{ result: JsonValue; session: JsonValue | undefined; logs: PveCallResult['logs'] }> => {
  const r = await pveCall(path, method, args, opts)
  if (r.final.kind === 'error') {
    assert.fail(`${method} failed: ${r.final.code}: ${r.final.message}`)
  }
  return { result: r.final.result, session: r.final.session, logs: r.logs }
}

/** {@link pveCall} that must fail; returns the error code and message. */
export const pveErr = async (
  path: string,
  method: string,
  args: JsonValue[],
  opts: PveCallOptions = {},
): Promise<{ code: string; message: string }> => {
  const r = await pveCall(path, method, args, opts)
  if (r.final.kind !== 'error') assert.fail(`${method} succeeded: ${JSON.stringify(r.final)}`)
  return { code: r.final.code, message: r.final.message }
}
