/**
 * The per-guest task log (vzdump's `tmplog`): every line the host and the provider log for one
 * guest, handed to `backupHandleLogFile` at the end. Unlike vzdump, provider messages are in it
 * too (pve-backup-provider-api.md §2.2 notes vzdump leaves them out).
 */
import { appendFileSync, writeFileSync } from 'node:fs'
import { basename, dirname } from 'node:path'
import type { ProviderLogLevel } from '../api/provider.ts'
import { isNoSpace, noSpaceIn } from '../errors.ts'
import type { Logger } from '../log.ts'

/**
 * A task log file (in a temp dir) plus the structured logger it mirrors to. Creating it on a full
 * temp dir fails with `NO_SPACE` naming the temp dir; once the temp dir fills later, lines still
 * reach the logger, and the file keeps what it had (a log line never fails the task).
 */
export class TaskLog {
  readonly path: string
  readonly #logger: Logger
  #warnings = 0
  #full = false

  constructor(path: string, logger: Logger) {
    this.path = path
    this.#logger = logger
    try {
      writeFileSync(path, '', { mode: 0o600 })
    } catch (e) {
      if (isNoSpace(e)) throw noSpaceIn('temp dir', dirname(path), e, `writing ${basename(path)}`)
      throw e
    }
  }

  /** Number of warnings logged so far. */
  get warnings(): number {
    return this.#warnings
  }

  /** Log one line at a provider level. */
  log(level: ProviderLogLevel, message: string): void {
    if (level === 'warn') this.#warnings++
    this.record(level, message)
    if (level === 'err') this.#logger.error(message)
    else if (level === 'warn') this.#logger.warn(message)
    else this.#logger.info(message)
  }

  /** Write a line to the task log file only (the caller reports it another way). */
  record(level: ProviderLogLevel, message: string): void {
    const tag = level === 'err' ? 'ERROR' : level.toUpperCase()
    if (this.#full) return
    try {
      appendFileSync(this.path, `${new Date().toISOString()} ${tag}: ${message}\n`)
    } catch (e) {
      if (!isNoSpace(e)) throw e
      this.#full = true
    }
  }

  info(message: string): void {
    this.log('info', message)
  }
  warn(message: string): void {
    this.log('warn', message)
  }
  error(message: string): void {
    this.log('err', message)
  }
}
