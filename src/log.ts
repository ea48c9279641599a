import { pino } from 'pino'
import type { Logger } from 'pino'
import { jsonLevel } from './log-levels.ts'

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

/** Where log lines go: anything with `write(string)`, such as `process.stderr`. */
export interface LogSink {
  /** Write one serialised line, newline included. */
  write(line: string): unknown
}

/** A pino destination printing `level: message` lines on `out`, for people reading a terminal. */
const humanLines = (out: LogSink): LogSink => ({
  write(line: string): void {
    try {
      const o = JSON.parse(line) as { level?: number; msg?: string; vmid?: number }
      const lvl = LEVEL_NAMES[o.level ?? 30] ?? 'info'
      const who = o.vmid === undefined ? '' : `[${o.vmid}] `
      out.write(`${lvl}: ${who}${o.msg ?? ''}\n`)
    } catch {
      out.write(line)
    }
  },
})

/**
 * A pino logger writing to `out` (default: stderr, fd 2, synchronously), so stdout stays free
 * for results: JSON lines with `json`, otherwise one readable line per message. Each call makes
 * a new logger; none is shared, so a CLI run in-process logs to its own stream.
 */
export const createLogger = (level: LogLevel = 'info', json = false, out?: LogSink): Logger => {
  if (json) {
    // {"level":"warn","time":"2026-12-02T06:40:00.000Z","vmid":100,"msg":"…"}: one object a line.
    return pino(
      {
        level,
        base: null,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: jsonLevel(label) }) },
      },
      out ?? pino.destination({ dest: 2, sync: true }),
    )
  }
  return pino({ level, base: null, timestamp: false }, humanLines(out ?? process.stderr))
}

/** A logger that drops everything: the default for library calls without one. */
export const silentLogger = (): Logger => pino({ level: 'silent' })
