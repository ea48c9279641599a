/**
 * Long-running helper processes (qemu-nbd, qemu-storage-daemon): started so that they die with
 * us, their stderr tail kept for error messages, stopped with SIGTERM and, if they linger,
 * SIGKILL.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { BackupError } from '../errors.ts'

/** True while the process `pid` exists (also when it is not ours to signal). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** True once `child` has exited. */
export const hasExited = (child: ChildProcess): boolean =>
  child.exitCode !== null || child.signalCode !== null

/** Resolves true when `child` exits within `ms`, false otherwise. */
export const waitExit = (child: ChildProcess, ms: number): Promise<boolean> =>
  new Promise((resolve) => {
    if (hasExited(child)) {
      resolve(true)
      return
    }
    const t = setTimeout(() => {
      resolve(false)
    }, ms)
    child.once('exit', () => {
      clearTimeout(t)
      resolve(true)
    })
  })

/** A started daemon. */
export interface Daemon {
  readonly child: ChildProcess
  /** The last 4 KiB of its stderr. */
  stderr(): string
  /** The spawn error, if it could not be started. */
  spawnError(): Error | undefined
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. Idempotent. */
  stop(graceMs?: number): Promise<void>
}

/**
 * Start `command args…` (with `env` added to ours) through `setpriv --pdeathsig SIGTERM`
 * (util-linux): the kernel sends
 * it SIGTERM when guestbackup dies, even by SIGKILL, so no server or mount outlives us. Its PID
 * stays the one we manage (setpriv execs the command).
 */
export const startDaemon = (
  command: string,
  args: readonly string[],
  env: Readonly<Record<string, string>> = {},
): Daemon => {
  const child = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', command, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (s: string) => {
    stderr = (stderr + s).slice(-4096)
  })
  let spawnError: Error | undefined
  child.once('error', (e) => {
    spawnError = e
  })
  let stopping: Promise<void> | undefined
  const stop = (graceMs = 10_000): Promise<void> => {
    stopping ??= (async () => {
      if (hasExited(child) || spawnError !== undefined) return
      child.kill('SIGTERM')
      if (!(await waitExit(child, graceMs))) {
        child.kill('SIGKILL')
        await waitExit(child, 5_000)
      }
    })()
    return stopping
  }
  return { child, stderr: () => stderr, spawnError: () => spawnError, stop }
}

/** Options of {@link awaitReady}. */
export interface ReadyOptions {
  /** True once the daemon serves (it may throw to refuse what it sees). */
  ready: () => Promise<boolean>
  timeoutMs: number
  /** Longest pause between two checks, ms. Default 20. */
  pollMs?: number
  signal?: AbortSignal | undefined
  /** What is starting, for the abort message (`qemu-nbd`, `FUSE export`). */
  what: string
  /** Stops the daemon and throws the start failure with its stderr. */
  fail: (msg: string, cause?: unknown) => Promise<never>
  /** Stops the daemon and releases what came with it (on abort). */
  stop: () => Promise<void>
  /** The failure when `timeoutMs` passed. */
  timeoutMessage: string
}

/**
 * Wait until `o.ready()` holds, failing (through `o.fail`) when the daemon cannot start, exits
 * first or takes longer than `o.timeoutMs`; `ABORTED` (after stopping it) on `o.signal`.
 */
export const awaitReady = async (daemon: Daemon, o: ReadyOptions): Promise<void> => {
  const deadline = Date.now() + o.timeoutMs
  // The pause doubles from 1 ms up to pollMs: a qemu-nbd serves some 10-20 ms after its start
  // here, which a fixed 20 ms pause saw ~10 ms late on average, for each of a backup's servers.
  let pause = 1
  for (;;) {
    const spawnError = daemon.spawnError()
    if (spawnError) return o.fail('cannot start', spawnError)
    if (hasExited(daemon.child)) return o.fail('exited early')
    if (o.signal?.aborted === true) {
      await o.stop()
      throw new BackupError('ABORTED', `${o.what} start aborted`, { cause: o.signal.reason })
    }
    if (Date.now() >= deadline) return o.fail(o.timeoutMessage)
    if (await o.ready()) return
    await sleep(pause)
    pause = Math.min(pause * 2, o.pollMs ?? 20)
  }
}
