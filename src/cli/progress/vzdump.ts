/**
 * Progress without a terminal (cron mail, journald, a task log): the lines vzdump writes for a
 * VM backup, from qemu-server `src/PVE/VZDump/QemuServer.pm` (`$query_backup_status_loop`):
 *
 *     INFO:  10% (2.0 GiB of 20.0 GiB) in 5s, read: 400.0 MiB/s, write: 380.0 MiB/s
 *
 * vzdump polls QEMU once a second and prints a line when the percentage changed and more than
 * 2 whole seconds passed since the last line (`$timediff > 2`, on `time()`'s seconds); the
 * rates are over that interval, `read` counting every byte walked and `write` the bytes less
 * the zero ones. At the end: the last status line (if the job had not printed 100 % yet), then
 * `backup is sparse: …` when zero ranges were skipped, `backup was done incrementally,
 * reused …` when clean areas were, and `transferred … in N seconds (…)`.
 *
 * Here `transferred` is the bytes walked (copied or skipped, as QEMU's counter includes zero
 * clusters) and clean areas of an incremental are counted in it too, so the percentage is of
 * the whole disks, where vzdump's is of the dirty bytes. A job that only reads (verify) has no
 * `write` rate, as proxmox-backup's verify task log gives none.
 */
import type { ProgressEvent } from '../../api/progress.ts'
import type { CliStream } from '../io.ts'
import { renderBytes, renderDuration, renderRate } from './format.ts'
import { JobTotals } from './totals.ts'
import type { Clock, JobView } from './view.ts'

/** Whole seconds of `ms`, as Perl's `time()` counts them. */
const wholeSecs = (ms: number): number => Math.floor(ms / 1000)

/** vzdump-style INFO lines of one job on a non-terminal stream. */
export class VzdumpLinesView implements JobView {
  readonly #out: CliStream
  readonly #now: Clock
  readonly #start: number
  readonly #totals = new JobTotals()
  #lastTime: number
  #lastPercent = -1
  #lastDone = 0
  #lastCopied = 0
  #seen = false
  readonly #readOnly: boolean

  /**
   * Write lines to `out`; `now`: the clock (ms; its whole seconds count, as `time()`'s);
   * `readOnly`: the job writes nothing (no `write` rate).
   */
  constructor(out: CliStream, now: Clock = () => performance.now(), readOnly = false) {
    this.#out = out
    this.#now = now
    this.#readOnly = readOnly
    this.#start = wholeSecs(now())
    this.#lastTime = this.#start
  }

  update(ev: ProgressEvent): void {
    this.#seen = true
    this.#totals.update(ev)
    const t = this.#totals.get()
    const percent = this.#percent(t.done, t.total)
    const now = wholeSecs(this.#now())
    if (percent !== this.#lastPercent && now - this.#lastTime > 2) this.#status(now)
  }

  finish(): void {
    // A job with nothing to show (a prune that merged nothing) prints nothing.
    if (!this.#seen) return
    const now = wholeSecs(this.#now())
    const t = this.#totals.get()
    if (this.#lastPercent < 100) this.#status(now)
    if (t.zero > 0) {
      const per = t.total > 0 ? Math.floor((t.zero * 100) / t.total) : 0
      this.#info(`backup is sparse: ${renderBytes(t.zero)} (${per}%) total zero data`)
    }
    if (t.clean > 0) {
      const per = t.total > 0 ? Math.floor((t.clean * 100) / t.total) : 0
      this.#info(`backup was done incrementally, reused ${renderBytes(t.clean)} (${per}%)`)
    }
    if (t.done > 0) {
      const duration = now - this.#start
      this.#info(
        duration > 0
          ? `transferred ${renderBytes(t.done)} in ${duration} seconds (${renderRate(t.done, duration)})`
          : `transferred ${renderBytes(t.done)} in <1 seconds`,
      )
    }
  }

  [Symbol.dispose](): void {
    // Nothing is held: every line is complete once written.
  }

  #percent(done: number, total: number): number {
    return total > 0 ? Math.floor((done * 100) / total) : 100
  }

  #status(now: number): void {
    const t = this.#totals.get()
    const percent = this.#percent(t.done, t.total)
    const diff = now - this.#lastTime || 1
    const read = renderRate(t.done - this.#lastDone, diff)
    const write = this.#readOnly ? '' : `, write: ${renderRate(t.copied - this.#lastCopied, diff)}`
    const pct = String(percent).padStart(3)
    this.#info(
      `${pct}% (${renderBytes(t.done, 1)} of ${renderBytes(t.total, 1)}) in ${renderDuration(now - this.#start)}, read: ${read}${write}`,
    )
    this.#lastPercent = percent
    this.#lastTime = now
    this.#lastDone = t.done
    this.#lastCopied = t.copied
  }

  #info(msg: string): void {
    this.#out.write(`INFO: ${msg}\n`)
  }
}
