import { pino } from 'pino'
import type { Logger } from 'pino'

export type { Logger }

/** Log levels accepted by {@link createLogger}. */
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

/** A pino logger writing JSON lines to stderr, so stdout stays free for results. */
export const createLogger = (level: LogLevel = 'info'): Logger =>
  pino({ level, base: null }, pino.destination({ dest: 2, sync: true }))

/** A logger that drops everything: the default for library calls without one. */
export const silentLogger = (): Logger => pino({ level: 'silent' })
