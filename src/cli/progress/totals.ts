/** The sums over the disks (or archive) of one job, from the latest event of each. */
import type { ProgressEvent } from '../../api/progress.ts'

/** A snapshot of a job's progress, summed over its items. */
export interface Totals {
  /** Bytes walked: copied or skipped. */
  done: number
  /** Bytes of every item announced so far. */
  total: number
  /** Bytes read and written as data. */
  copied: number
  /** Skipped bytes of zero ranges and holes. */
  zero: number
  /** Skipped bytes of clean areas (an incremental's unchanged data). */
  clean: number
  /** Some item reported what it skipped: `done - copied` means something. */
  knowsSkipped: boolean
}

/** Accumulates {@link ProgressEvent}s of one job. */
export class JobTotals {
  readonly #items = new Map<string, ProgressEvent>()

  /** Take the item's latest state; `done` never goes back. */
  update(ev: ProgressEvent): void {
    const prev = this.#items.get(ev.item)
    if (prev !== undefined && ev.done < prev.done) return
    this.#items.set(ev.item, ev)
  }

  /** The sums now. */
  get(): Totals {
    const t: Totals = { done: 0, total: 0, copied: 0, zero: 0, clean: 0, knowsSkipped: false }
    for (const ev of this.#items.values()) {
      t.done += ev.done
      t.total += Math.max(ev.total, ev.done)
      if (ev.copied === undefined) {
        t.copied += ev.done
        continue
      }
      t.knowsSkipped = true
      const copied = Math.min(ev.copied, ev.done)
      const zero = Math.min(ev.zero ?? 0, ev.done - copied)
      t.copied += copied
      t.zero += zero
      t.clean += ev.done - copied - zero
    }
    return t
  }
}
