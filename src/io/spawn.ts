import { spawn } from 'node:child_process'
import type { ChildProcess, StdioOptions } from 'node:child_process'
import type { Readable, Writable } from 'node:stream'
import { BackupError } from '../errors.ts'
import type { ErrorCode } from '../errors.ts'
import type { ToolNamespace } from './userns.ts'

/** The last bytes of stderr kept for error messages. */
const STDERR_TAIL = 4096
/** Upper bound of stdout collected by {@link run}; larger output is a tool misbehaving. */
const MAX_CAPTURE = 16 * 1024 * 1024

/** Options of {@link spawnTool}. */
export interface SpawnOptions {
  /** Kills the child (SIGTERM, then SIGKILL after 5 s) when aborted. */
  signal?: AbortSignal | undefined
  /** Working directory of the child. */
  cwd?: string
  /** stdin/stdout handling; stderr is always piped and kept (tail) for errors. Default: pipe, pipe. */
  stdin?: 'pipe' | 'ignore' | 'inherit' | number
  stdout?: 'pipe' | 'ignore' | 'inherit' | number
  /** Error code used when the tool fails. Default `ARCHIVE_TOOL_FAILED`. */
  errorCode?: ErrorCode
  /** Extra environment variables (added to the current environment). */
  env?: Record<string, string>
  /** The tool's name in messages, when `cmd` is a wrapper (setpriv, prlimit). Default `cmd`. */
  label?: string
  /** Exit codes that count as success. Default [0]. */
  okExitCodes?: readonly number[]
  /**
   * Run through `setpriv --pdeathsig SIGKILL` (util-linux): the kernel kills the tool when
   * guestbackup dies, even by SIGKILL, so a tool writing into the store (mksquashfs) never
   * outlives the run that the next one cleans up after. Default false.
   */
  dieWithParent?: boolean
  /**
   * Run the tool inside this user namespace (`userns.ts`: as an unprivileged container's
   * mapped root). Default: as ourselves.
   */
  namespace?: ToolNamespace | undefined
}

/** A running child process with its streams and a promise of its end. */
export interface Tool {
  readonly child: ChildProcess
  readonly stdin: Writable | null
  readonly stdout: Readable | null
  /** Resolves with the exit code on success; rejects with a {@link BackupError} otherwise. */
  readonly done: Promise<number>
  /** The kept tail of stderr. */
  stderr(): string
}

/**
 * Spawn a tool (tar, qemu-img, mksquashfs …). `done` rejects with the stderr tail when the exit
 * code is not in `okExitCodes`, when the tool cannot be started, or when aborted.
 */
export const spawnTool = (cmd: string, args: readonly string[], opts: SpawnOptions = {}): Tool => {
  const stdio: StdioOptions = [opts.stdin ?? 'pipe', opts.stdout ?? 'pipe', 'pipe']
  const [inner, innerArgs] = opts.namespace ? opts.namespace.wrap(cmd, args) : [cmd, args]
  const [file, argv] =
    opts.dieWithParent === true
      ? ['setpriv', ['--pdeathsig', 'SIGKILL', '--', inner, ...innerArgs]]
      : [inner, innerArgs]
  const child = spawn(file, argv, {
    stdio,
    cwd: opts.cwd,
    env: opts.env ? { ...process.env, ...opts.env } : process.env,
  })
  let tail = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (s: string) => {
    tail = (tail + s).slice(-STDERR_TAIL)
  })
  const code = opts.errorCode ?? 'ARCHIVE_TOOL_FAILED'
  const name = opts.label ?? cmd
  const ok = opts.okExitCodes ?? [0]
  let killTimer: NodeJS.Timeout | undefined
  const onAbort = (): void => {
    child.kill('SIGTERM')
    killTimer = setTimeout(() => child.kill('SIGKILL'), 5000)
    killTimer.unref()
  }
  // A signal that is already aborted fires no 'abort' event: such a tool is stopped at once
  // rather than left running (and keeping the process alive) with nobody to end it.
  if (opts.signal?.aborted === true) onAbort()
  else opts.signal?.addEventListener('abort', onAbort, { once: true })
  const done = new Promise<number>((resolve, reject) => {
    child.once('error', (err) => {
      reject(new BackupError(code, `cannot run ${name}: ${err.message}`, { cause: err }))
    })
    child.once('close', (exit, sig) => {
      opts.signal?.removeEventListener('abort', onAbort)
      if (killTimer) clearTimeout(killTimer)
      if (opts.signal?.aborted === true) {
        reject(new BackupError('ABORTED', `${name} aborted`, { cause: opts.signal.reason }))
      } else if (exit !== null && ok.includes(exit)) {
        resolve(exit)
      } else {
        const how = exit === null ? `killed by ${String(sig)}` : `exit code ${exit}`
        const msg = tail.trim().split('\n').slice(-3).join('; ')
        reject(
          new BackupError(code, `${name} failed (${how})${msg ? `: ${msg}` : ''}`, {
            details: { cmd, args, exit, signal: sig, stderr: tail },
          }),
        )
      }
    })
  })
  // Never leave a rejected `done` unobserved when a caller only awaits a pipeline.
  done.catch(() => undefined)
  return { child, stdin: child.stdin, stdout: child.stdout, done, stderr: () => tail }
}

/** Result of {@link run}. */
export interface RunResult {
  stdout: string
  stderr: string
}

/** Run a tool to completion and capture its stdout (bounded). */
export const run = async (
  cmd: string,
  args: readonly string[],
  opts: Omit<SpawnOptions, 'stdout'> = {},
): Promise<RunResult> => {
  const tool = spawnTool(cmd, args, { stdin: 'ignore', ...opts, stdout: 'pipe' })
  const chunks: Buffer[] = []
  let size = 0
  tool.stdout?.on('data', (b: Buffer) => {
    size += b.length
    if (size > MAX_CAPTURE) {
      tool.child.kill('SIGKILL')
      return
    }
    chunks.push(b)
  })
  await tool.done
  if (size > MAX_CAPTURE) {
    throw new BackupError(
      opts.errorCode ?? 'ARCHIVE_TOOL_FAILED',
      `${opts.label ?? cmd} printed too much output`,
    )
  }
  return { stdout: Buffer.concat(chunks).toString('utf8'), stderr: tool.stderr() }
}
