/**
 * Progress of long operations on stderr. On a terminal: one status line per job, redrawn in
 * place, that log lines never glue onto (tty.ts, status-line.ts). Otherwise: vzdump's periodic
 * `INFO:` lines (vzdump.ts), so cron mail and journald show progress too. `--quiet` and
 * `--no-progress` show none.
 */
import type { CliStream } from '../io.ts'
import { StatusLine } from './status-line.ts'
import { TtyView } from './tty.ts'
import { VzdumpLinesView } from './vzdump.ts'
import { NO_VIEW } from './view.ts'
import type { JobView } from './view.ts'

export { fmtBytes, fmtClock, renderBytes, renderDuration, renderRate } from './format.ts'
export { StatusLine } from './status-line.ts'
export { TtyView, ttyLine } from './tty.ts'
export { VzdumpLinesView } from './vzdump.ts'
export { NO_VIEW } from './view.ts'
export type { Clock, JobView } from './view.ts'

/** How progress is shown on a run's stderr. */
export interface ProgressSettings {
  /** Show progress at all (false with `--quiet` and `--no-progress`). Default true. */
  show?: boolean
  /**
   * Without a terminal, write vzdump's INFO lines. Default true; false with `--log-json`,
   * whose stream carries JSON lines only.
   */
  lines?: boolean
}

/**
 * A run's stderr: everything written to it (logs, warnings) goes above the status line on a
 * terminal. Commands open their job's view with {@link jobView}.
 */
export class ProgressStream implements CliStream {
  readonly #out: CliStream
  readonly #status: StatusLine | undefined
  #settings: Required<ProgressSettings> = { show: true, lines: true }

  /** `out`: the run's stderr; a status line is kept only when it is a terminal. */
  constructor(out: CliStream) {
    this.#out = out
    this.#status = out.isTTY === true ? new StatusLine(out) : undefined
  }

  /** As `out`'s. */
  get isTTY(): boolean {
    return this.#out.isTTY === true
  }

  /** As `out`'s (default 80). */
  get columns(): number {
    return this.#out.columns ?? 80
  }

  /** Write text (a log line), above the status line if one is shown. */
  write(text: string): void {
    ;(this.#status ?? this.#out).write(text)
  }

  /** Apply the run's options (once they are parsed). */
  configure(s: ProgressSettings): void {
    this.#settings = { ...this.#settings, ...s }
  }

  /** The view of a job called `title` (e.g. `100 backup`); `readOnly`: it writes nothing. */
  job(title: string, readOnly = false): JobView {
    if (!this.#settings.show) return NO_VIEW
    if (this.#status !== undefined) return new TtyView(this.#status, title)
    return this.#settings.lines
      ? new VzdumpLinesView(this.#out, () => performance.now(), readOnly)
      : NO_VIEW
  }
}

/** The view of a job on `stream`: the run's {@link ProgressStream}, or a new one around it. */
export const jobView = (stream: CliStream, title: string, readOnly = false): JobView =>
  (stream instanceof ProgressStream ? stream : new ProgressStream(stream)).job(title, readOnly)

/** Whether a view will draw anything: commands skip costly preparation (a pre-walk) if not. */
export const showsProgress = (view: JobView): boolean => view !== NO_VIEW
