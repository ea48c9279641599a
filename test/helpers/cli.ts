/** Run the guestbackup CLI from the checkout, as a user would. */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

/** Path of `bin/guestbackup`. */
export const BIN = fileURLToPath(new URL('../../bin/guestbackup', import.meta.url))

/** `backup --store STORE --vmid VMID --config CONFIG REST…`, the arguments of a backup run. */
export const backupArgs = (
  store: string,
  vmid: string | number,
  config: string,
  ...rest: string[]
): string[] => ['backup', '--store', store, '--vmid', String(vmid), '--config', config, ...rest]

/** Result of {@link cli}. */
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

/** Like {@link cli} but throws unless the exit code is 0. */
export const cliOk = async (args: readonly string[]): Promise<CliResult> => {
  const r = await cli(args)
  if (r.code !== 0) {
    throw new Error(`guestbackup ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  }
  return r
}
