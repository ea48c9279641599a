/** What a command drives while a long operation runs: one view per job (a guest, a restore). */
import type { ProgressEvent } from '../../api/progress.ts'

/** The progress of one job, shown one way or another; disposing it ends the display. */
export interface JobView extends Disposable {
  /** An item (disk, archive) advanced. Cheap: may be called for every piece copied. */
  update(ev: ProgressEvent): void
  /** The job succeeded: show its final state. Dispose still follows. */
  finish(): void
}

/** The view showing nothing (`--quiet`, `--no-progress`). */
export const NO_VIEW: JobView = Object.freeze({
  update: () => undefined,
  finish: () => undefined,
  [Symbol.dispose]: () => undefined,
})

/** Milliseconds of a monotonic clock: `performance.now`, or a test's. */
export type Clock = () => number
