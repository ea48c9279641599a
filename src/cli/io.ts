/** What a CLI run reads and writes instead of the process: its streams and its cancellation. */

/**
 * A text output: `process.stdout`, `process.stderr`, or a test's collector. Writes are
 * fire-and-forget, as with `console.log`; the return value is ignored.
 */
export interface CliStream {
  /** Write `text` as is (no newline added). */
  write(text: string): unknown
  /** True for a terminal: only then is a progress line drawn. Default: false. */
  readonly isTTY?: boolean
  /** Terminal width in columns, used to wrap help text when `isTTY`. Default: commander's 80. */
  readonly columns?: number
}

/** The environment of one run of the CLI (`run` in run.ts). */
export interface CliIO {
  /** Results: volume ids, listings, JSON. */
  readonly stdout: CliStream
  /** Logs, progress and the one-line error messages. */
  readonly stderr: CliStream
  /**
   * Cancels the running command (a backup is torn down, nothing partial is kept); the run then
   * returns 130. The process entry aborts it on SIGINT and SIGTERM.
   */
  readonly signal: AbortSignal
  /**
   * The input, for the commands that read one (`pve-call`): `process.stdin`, or a test's
   * chunks. Absent: nothing to read (such a command fails cleanly).
   */
  readonly stdin?: AsyncIterable<Buffer | string>
}

/** Write `text` and a newline, byte for byte what `console.log(text)` prints for a string. */
export const writeLine = (stream: CliStream, text: string): void => {
  stream.write(`${text}\n`)
}
