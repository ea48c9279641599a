/**
 * The guestbackup executable (bin/guestbackup runs it): the only module of the CLI that touches
 * the process. It turns SIGINT/SIGTERM into an abort of the run, quits quietly when the reader
 * of stdout goes away, and sets the exit code {@link run} returns.
 */
import { BackupError } from '../errors.ts'
import { run } from './run.ts'
import { logLine } from './output/log-json.ts'

const controller = new AbortController()
let interrupted = false
// The first signal aborts the run, which tears the backup down and returns 130; a second one
// exits at once, for when the teardown itself hangs.
const onSignal = (sig: NodeJS.Signals): void => {
  if (interrupted) process.exit(130)
  interrupted = true
  const msg = `${sig}: aborting (again to exit at once)`
  // With --log-json this line is JSON too; else on a line of its own after a progress line.
  const json = process.argv.slice(2).includes('--log-json')
  process.stderr.write(json ? logLine('warn', msg) : `\n${msg}\n`)
  controller.abort(new BackupError('ABORTED', `interrupted by ${sig}`))
}
process.on('SIGINT', onSignal)
// A file size limit (RLIMIT_FSIZE) must fail the write with EFBIG, not kill the process.
process.on('SIGXFSZ', () => undefined)
process.on('SIGTERM', onSignal)

// Node ignores SIGPIPE, so a closed pipe (`guestbackup list | head -1`) surfaces as an EPIPE
// 'error' on stdout, which unhandled would crash with a stack trace. The reader wants no more
// output: stop as a tool killed by SIGPIPE would, keeping the exit code already decided.
// https://nodejs.org/api/process.html#signal-events
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0)
  throw e
})

process.exitCode = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  signal: controller.signal,
  stdin: process.stdin,
})
