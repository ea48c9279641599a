/**
 * Long-running helper processes (qemu-nbd, qemu-storage-daemon): started so that they die with
 * us, their stderr tail kept for error messages, stopped with SIGTERM and, if they linger,
 * SIGKILL.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'

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
 * Start `command args…` through `setpriv --pdeathsig SIGTERM` (util-linux): the kernel sends
 * it SIGTERM when guestbackup dies, even by SIGKILL, so no server or mount outlives us. Its PID
 * stays the one we manage (setpriv execs the command).
 */
export const startDaemon = (command: string, args: readonly string[]): Daemon => {
  const child = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', command, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
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
