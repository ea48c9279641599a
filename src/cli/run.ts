/**
 * One run of the guestbackup command line, in-process: it parses `argv`, runs the command and
 * returns the exit code. Importing this module does nothing to the process (no signal handlers,
 * no exit); bin.ts is the executable that wires a run to the process.
 *
 * Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 130 after the signal aborted
 * (what --help and guestbackup(1) say of them is ./help/exit-codes.ts: keep the two in step).
 */
import { CommanderError } from 'commander'
import { toBackupError } from '../errors.ts'
import { errorLine, logJson } from './output/log-json.ts'
import type { ErrorCode } from '../errors.ts'
import type { CliIO } from './io.ts'
import { createProgram } from './program.ts'

export type { CliIO, CliStream } from './io.ts'

// Errors in what the user gave (options, files, the store), as opposed to failures of a run.
const USAGE_CODES: ReadonlySet<ErrorCode> = new Set(['USAGE', 'CONFIG_INVALID', 'STORE_INVALID'])

/**
 * Run the CLI with `argv` (the arguments after the program name, as in
 * `process.argv.slice(2)`). Never throws and never exits the process: every error is printed on
 * `io.stderr` as one line (`guestbackup: …`, or commander's `error: … (see --help)`) and mapped
 * to the exit code returned.
 */
export const run = async (argv: readonly string[], io: CliIO): Promise<number> => {
  const { program, exitCode } = createProgram(io, argv)
  try {
    await program.parseAsync([...argv], { from: 'user' })
    return exitCode()
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version exit 0; every parse error is a usage error (commander printed it).
      return e.exitCode === 0 ? 0 : 2
    }
    const err = toBackupError(e)
    const debug = program.opts<{ debug?: boolean }>().debug === true
    const bug = err.code === 'INTERNAL' ? 'internal error (a bug in guestbackup): ' : ''
    const stack = debug && e instanceof Error ? e.stack : undefined
    if (logJson(program.opts(), argv)) {
      io.stderr.write(errorLine(`${bug}${err.message}`, { code: err.code, stack }))
    } else {
      io.stderr.write(`guestbackup: ${bug}${err.message}\n`)
      if (stack !== undefined) io.stderr.write(`${stack}\n`)
    }
    if (err.code === 'ABORTED' || io.signal.aborted) return 130
    return USAGE_CODES.has(err.code) ? 2 : 1
  }
}
