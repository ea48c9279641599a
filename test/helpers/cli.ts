/**
 * Run the guestbackup CLI: {@link cli} starts bin/guestbackup as a user would, for what needs a
 * real process (signals, resource limits, exit); {@link runCliInProcess} calls `run()` in the
 * test's own process, for what is the CLI's own behaviour (parsing, messages, output).
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { run } from '../../src/cli/run.ts'
import type { CliStream } from '../../src/cli/run.ts'

/** Path of `bin/guestbackup`. */
export const BIN = fileURLToPath(new URL('../../bin/guestbackup', import.meta.url))

/** `backup --store STORE --vmid VMID --config CONFIG REST…`, the arguments of a backup run. */
export const backupArgs = (
  store: string,
  vmid: string | number,
  config: string,
  ...rest: string[]
): string[] => ['backup', '--store', store, '--vmid', String(vmid), '--config', config, ...rest]

/** Result of {@link cli} and {@link runCliInProcess}. */
export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Run `bin/guestbackup ARGS` (optionally through a wrapper command like prlimit). */
export const cli = (args: readonly string[], wrapper: readonly string[] = []): Promise<CliResult> =>
  new Promise((resolve, reject) => {
    const [cmd, ...rest] = [...wrapper, BIN, ...args]
    const child = spawn(cmd ?? BIN, rest, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    child.once('error', reject)
    child.once('close', (code) => {
      resolve({ code, stdout, stderr })
    })
  })

const ok = (args: readonly string[], r: CliResult): CliResult => {
  if (r.code !== 0) {
    throw new Error(`guestbackup ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  }
  return r
}

/** Like {@link cli} but throws unless the exit code is 0. */
export const cliOk = async (args: readonly string[]): Promise<CliResult> =>
  ok(args, await cli(args))

/** Options of {@link runCliInProcess}. */
export interface InProcessOptions {
  /** Aborting it cancels the run, as SIGINT does for the process. Default: never aborted. */
  signal?: AbortSignal
  /** What the run reads on stdin (given as one chunk). Default: no stdin. */
  stdin?: string | Buffer
}

/** A stream that keeps what is written to it; not a terminal, so no progress is drawn. */
const collector = (): CliStream & { text: string } => ({
  text: '',
  write(s: string) {
    this.text += s
    return true
  },
})

/** An async iterable of the given chunks, as a readable stream yields them. */
async function* chunks(parts: readonly (string | Buffer)[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p)
}

/**
 * Run the CLI with `args` inside this process (`run()` of src/cli/run.ts) and collect what it
 * prints: the same result as {@link cli}, without the ~1 s of starting node and tsx.
 */
export const runCliInProcess = async (
  args: readonly string[],
  opts: InProcessOptions = {},
): Promise<CliResult> => {
  const [stdout, stderr] = [collector(), collector()]
  const code = await run(args, {
    stdout,
    stderr,
    signal: opts.signal ?? new AbortController().signal,
    ...(opts.stdin === undefined ? {} : { stdin: chunks([opts.stdin]) }),
  })
  return { code, stdout: stdout.text, stderr: stderr.text }
}

/** Like {@link runCliInProcess} but throws unless the exit code is 0. */
export const runCliInProcessOk = async (args: readonly string[]): Promise<CliResult> =>
  ok(args, await runCliInProcess(args))
