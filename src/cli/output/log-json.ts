/**
 * `--log-json` outside the logger: the final error line of a run and commander's usage errors
 * are JSON objects too, shaped as the logger's lines (`level`, `time`, fields, `msg`).
 */
import { jsonLevel } from '../../log-levels.ts'

/**
 * Whether stderr is JSON lines: `--log-json` parsed, or present where commander did not get to
 * it (a usage error before it).
 */
export const logJson = (opts: { logJson?: boolean }, argv: readonly string[]): boolean =>
  opts.logJson === true || argv.includes('--log-json')

/** One line at pino's level `label`: `msg` and the defined `fields`. */
export const logLine = (
  label: 'info' | 'warn' | 'error',
  msg: string,
  fields: Record<string, string | undefined> = {},
): string =>
  `${JSON.stringify({
    level: jsonLevel(label),
    time: new Date().toISOString(),
    ...Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)),
    msg,
  })}\n`

/** One `err` line: `msg` and the defined `fields` (an error code, a stack with --debug). */
export const errorLine = (msg: string, fields: Record<string, string | undefined> = {}): string =>
  logLine('error', msg, fields)
