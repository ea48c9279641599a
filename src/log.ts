import { pino } from 'pino'
import type { Logger } from 'pino'

export type { Logger }

/** Log levels accepted by {@link createLogger}. */
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

const LEVEL_NAMES: Record<number, string> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
}

/** A pino destination printing `level: message` lines, for people reading a terminal. */
const humanStderr = {
  write(line: string): void {
    try {
      const o = JSON.parse(line) as { level?: number; msg?: string; vmid?: number }
      const lvl = LEVEL_NAMES[o.level ?? 30] ?? 'info'
      const who = o.vmid === undefined ? '' : `[${o.vmid}] `
      process.stderr.write(`${lvl}: ${who}${o.msg ?? ''}\n`)
    } catch {
      process.stderr.write(line)
    }
  },
}

/**
 * A pino logger writing to stderr, so stdout stays free for results: JSON lines with `json`,
 * otherwise one readable line per message.
 */
export const createLogger = (level: LogLevel = 'info', json = false): Logger =>
  json
    ? pino({ level, base: null }, pino.destination({ dest: 2, sync: true }))
    : pino({ level, base: null, timestamp: false }, humanStderr)

/** A logger that drops everything: the default for library calls without one. */
export const silentLogger = (): Logger => pino({ level: 'silent' })
