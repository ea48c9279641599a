/**
 * The exit codes of guestbackup, for `--help` and the man page. They are what ../run.ts maps an
 * outcome to (a usage error of commander, a BackupError's code, an aborted signal) and what the
 * commands return (./../commands/*.ts); ../bin.ts exits 130 at once on a second signal.
 */

/** One exit code and what it means. */
export interface ExitCode {
  readonly code: number
  readonly meaning: string
}

/** The codes every command shares (../run.ts). */
export const EXIT_CODES: readonly ExitCode[] = [
  { code: 0, meaning: 'success' },
  { code: 1, meaning: 'failure: the command ran and did not succeed (see each command)' },
  {
    code: 2,
    meaning:
      'usage or input error: a bad option or argument, an unreadable or invalid ' +
      'file (job file, store options), a directory that is not a store',
  },
  {
    code: 130,
    meaning: 'interrupted by SIGINT or SIGTERM (a second signal exits at once)',
  },
]

/**
 * What exit code 1 means, for the commands that return it themselves (by
 * command path, as ./examples.ts).
 */
export const COMMAND_EXIT: Readonly<Record<string, string>> = {
  verify: 'failure, or a backup failed verification (or --restored does not match)',
  check: 'failure, or findings remain unrepaired',
  'job run': 'failure, or a guest failed (the others were still backed up)',
  'job check': 'failure, or the job file is invalid',
}
