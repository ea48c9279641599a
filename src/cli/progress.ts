/**
 * Progress on stderr when it is a terminal: one line, redrawn at most 10 times a second, with
 * bytes done, rate and ETA. Nothing is printed when stderr is not a TTY.
 */
import type { ProgressEvent } from '../api/progress.ts'

const fmtBytes = (n: number): string => {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${u[i] ?? 'B'}`
}

const fmtEta = (s: number): string => {
  if (!Number.isFinite(s)) return '--:--'
  const m = Math.floor(s / 60)
  const sec = Math.floor(s % 60)
  return `${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`
}

/** A progress line renderer. */
export class Progress {
  readonly #enabled: boolean
  #last = 0
  #start = 0
  #item = ''
  #shown = false

  readonly #out: { write(text: string): unknown }

  /** `enabled`: draw at all (default: stderr is a terminal); `out`: where (default: stderr). */
  constructor(
    enabled: boolean = process.stderr.isTTY,
    out: { write(text: string): unknown } = process.stderr,
  ) {
    this.#enabled = enabled
    this.#out = out
  }

  /** Report progress of one item. */
  update(vmid: number, ev: ProgressEvent): void {
    if (!this.#enabled) return
    const now = performance.now()
    const key = `${vmid}/${ev.item}`
    if (key !== this.#item) {
      this.#item = key
      this.#start = now
    }
    if (now - this.#last < 100 && ev.done < ev.total) return
    this.#last = now
    const secs = (now - this.#start) / 1000
    const rate = secs > 0 ? ev.done / secs : 0
    const pct = ev.total > 0 ? Math.floor((ev.done * 100) / ev.total) : 100
    const eta = rate > 0 ? (ev.total - ev.done) / rate : Number.POSITIVE_INFINITY
    const line = `${vmid} ${ev.item}: ${fmtBytes(ev.done)} / ${fmtBytes(ev.total)} (${pct}%) ${fmtBytes(rate)}/s ETA ${fmtEta(eta)}`
    this.#out.write(`\r\x1b[K${line}`)
    this.#shown = true
  }

  /** End the progress line. */
  done(): void {
    if (this.#shown) this.#out.write('\n')
    this.#shown = false
  }
}

export { fmtBytes }
