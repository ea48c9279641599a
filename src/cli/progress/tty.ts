/**
 * The terminal view: one status line per job, redrawn at most 10 times a second and at least
 * once a second, with the total over all the job's disks, bytes done (skipped ones apart),
 * the data rate, the time elapsed and an estimate of the time left.
 */
import type { ProgressEvent } from '../../api/progress.ts'
import { fmtBytes, fmtClock } from './format.ts'
import type { StatusLine } from './status-line.ts'
import { JobTotals } from './totals.ts'
import type { Totals } from './totals.ts'
import type { Clock, JobView } from './view.ts'

const MIN_REDRAW_MS = 100
const TICK_MS = 1000

/**
 * The status line's text: `TITLE: PCT% DONE of TOTAL (SKIPPED skipped), RATE/s, ELAPSED
 * elapsed, ETA LEFT`. The rate counts data copied only; the estimate extrapolates the walk
 * (copied and skipped bytes), as skipped stretches pass fast.
 */
export const ttyLine = (title: string, t: Totals, elapsedMs: number, final = false): string => {
  const secs = elapsedMs / 1000
  const pct = t.total > 0 ? Math.floor((t.done * 100) / t.total) : final ? 100 : 0
  const skipped = t.knowsSkipped ? ` (${fmtBytes(t.done - t.copied)} skipped)` : ''
  const rate = secs > 0 ? t.copied / secs : 0
  const walk = secs > 0 ? t.done / secs : 0
  const eta = walk > 0 ? (t.total - t.done) / walk : Number.POSITIVE_INFINITY
  const tail = final
    ? `done in ${fmtClock(secs)}`
    : `${fmtClock(secs)} elapsed, ETA ${fmtClock(eta)}`
  return `${title}: ${pct}% ${fmtBytes(t.done)} of ${fmtBytes(t.total)}${skipped}, ${fmtBytes(rate)}/s, ${tail}`
}

/** A job's status line on a terminal. */
export class TtyView implements JobView {
  readonly #line: StatusLine
  readonly #title: string
  readonly #now: Clock
  readonly #start: number
  readonly #totals = new JobTotals()
  readonly #tick: NodeJS.Timeout
  #drawn = Number.NEGATIVE_INFINITY
  #seen = false

  /** Draw on `line`, each line starting with `title`; `now`: the clock (ms). */
  constructor(line: StatusLine, title: string, now: Clock = () => performance.now()) {
    this.#line = line
    this.#title = title
    this.#now = now
    this.#start = now()
    // Elapsed time and the estimate move while a slow disk reports nothing.
    this.#tick = setInterval(() => {
      if (this.#seen) this.#draw()
    }, TICK_MS)
    this.#tick.unref()
  }

  update(ev: ProgressEvent): void {
    this.#totals.update(ev)
    this.#seen = true
    if (this.#now() - this.#drawn >= MIN_REDRAW_MS) this.#draw()
  }

  finish(): void {
    clearInterval(this.#tick)
    if (!this.#seen) return
    this.#line.show(ttyLine(this.#title, this.#totals.get(), this.#now() - this.#start, true))
    this.#line.clear(true)
  }

  [Symbol.dispose](): void {
    clearInterval(this.#tick)
    // Where a failed job stopped stays visible above the error line.
    this.#line.clear(true)
  }

  #draw(): void {
    this.#drawn = this.#now()
    this.#line.show(ttyLine(this.#title, this.#totals.get(), this.#drawn - this.#start))
  }
}
