/**
 * A stream with one status line kept at its bottom, for a terminal: other text (log lines,
 * warnings) clears the line, is written, and the line is drawn again after it, so a log line
 * is never glued onto the progress line.
 */
import type { CliStream } from '../io.ts'

const CLEAR = '\r\x1b[K'

/** Wraps a terminal stream; everything written to stderr during a run goes through it. */
export class StatusLine implements CliStream {
  readonly #out: CliStream
  #line = ''
  /** The last text written did not end a line: the status line waits for the rest of it. */
  #partial = false

  /** `out`: the terminal (its `columns` bound the line; default 80). */
  constructor(out: CliStream) {
    this.#out = out
  }

  /** As `out`'s. */
  get isTTY(): boolean {
    return this.#out.isTTY === true
  }

  /** As `out`'s (default 80). */
  get columns(): number {
    return this.#out.columns ?? 80
  }

  /** Write text above the status line. */
  write(text: string): void {
    if (text === '') return
    if (this.#line !== '' && !this.#partial) this.#out.write(CLEAR)
    this.#out.write(text)
    this.#partial = !text.endsWith('\n')
    if (this.#line !== '' && !this.#partial) this.#out.write(this.#line)
  }

  /**
   * Show `line` as the status line (cut to the terminal's width: a wrapped line could not be
   * redrawn in place with a carriage return).
   */
  show(line: string): void {
    const width = Math.max((this.#out.columns ?? 80) - 1, 10)
    const cut = line.length > width ? line.slice(0, width) : line
    if (this.#partial) {
      this.#out.write('\n')
      this.#partial = false
    }
    this.#line = cut
    this.#out.write(`${CLEAR}${cut}`)
  }

  /** Remove the status line; with `keep`, leave its last state on the screen as a line. */
  clear(keep = false): void {
    if (this.#line === '') return
    this.#out.write(keep ? '\n' : CLEAR)
    this.#line = ''
  }
}
