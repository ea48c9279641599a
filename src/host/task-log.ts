/**
 * The per-guest task log (vzdump's `tmplog`): every line the host and the provider log for one
 * guest, handed to `backupHandleLogFile` at the end. Unlike vzdump, provider messages are in it
 * too (pve-backup-provider-api.md §2.2 notes vzdump leaves them out).
 */
import { appendFileSync, writeFileSync } from 'node:fs'
import { basename, dirname } from 'node:path'
import type { LogFields, ProviderLogLevel } from '../api/provider.ts'
import { isNoSpace, noSpaceIn } from '../errors.ts'
import type { Logger } from '../log.ts'

/** Warning lines a task log keeps for the report (all are counted, and all are in the file). */
export const WARNINGS_KEPT = 100

/**
 * A task log file (in a temp dir) plus the structured logger it mirrors to. Creating it on a full
 * temp dir fails with `NO_SPACE` naming the temp dir; once the temp dir fills later, lines still
 * reach the logger, and the file keeps what it had (a log line never fails the task).
 */
export class TaskLog {
  readonly path: string
  readonly #logger: Logger
  #warnings = 0
  readonly #warningTexts: string[] = []
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

  /** The first {@link WARNINGS_KEPT} warning lines logged, for the backup's report. */
  get warningMessages(): readonly string[] {
    return this.#warningTexts
  }

  /**
   * Log one line at a provider level; `fields` (vmid, device, bytes…) go to the structured
   * log only (`--log-json`), the task log file has the line.
   */
  log(level: ProviderLogLevel, message: string, fields: LogFields = {}): void {
    if (level === 'warn') {
      this.#warnings++
      if (this.#warningTexts.length < WARNINGS_KEPT) this.#warningTexts.push(message)
    }
    this.record(level, message)
    if (level === 'err') this.#logger.error(fields, message)
    else if (level === 'warn') this.#logger.warn(fields, message)
    else this.#logger.info(fields, message)
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

  info(message: string, fields?: LogFields): void {
    this.log('info', message, fields)
  }
  warn(message: string, fields?: LogFields): void {
    this.log('warn', message, fields)
  }
  error(message: string, fields?: LogFields): void {
    this.log('err', message, fields)
  }
}
