/**
 * Child processes of the benchmark, tracked by PID so that every one of them (and whatever it
 * started in turn) can be stopped on error or SIGINT. Nothing is ever killed by name.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { readFile, rm } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { startQemuNbd } from '../../src/qemu/nbd-server.ts'
import type { QemuNbdOptions } from '../../src/qemu/nbd-server.ts'

/** GNU time, used for the peak RSS column when installed. */
export const GNU_TIME = '/usr/bin/time'
export const hasGnuTime = existsSync(GNU_TIME)

/** Options of {@link run}. */
export interface RunOptions {
  cwd?: string
  /** Extra environment variables. */
  env?: Record<string, string>
  /** Kill the process tree after this long. Default 300 s. */
  timeoutMs?: number
}

/** Captured output of a finished tool. */
export interface RunResult {
  stdout: string
  stderr: string
}

const MAX_CAPTURE = 1 << 20
const live = new Map<number, ChildProcess>()
const stoppers = new Set<() => Promise<void>>()
/** PIDs of the servers and VMs stopped by {@link stoppers}, for {@link killAllNow}. */
const trackedPids = new Set<number>()

/** PIDs of the servers and VMs the benchmark keeps running (started untimed or inside a run). */
export const trackedServerPids = (): number[] => [...trackedPids]

/** PIDs of all descendants of `pid` (children first), from /proc. */
export const descendants = (pid: number): number[] => {
  const out: number[] = []
  let tasks: string[] = []
  try {
    tasks = readdirSync(`/proc/${pid}/task`)
  } catch {
    return out
  }
  for (const tid of tasks) {
    let text = ''
    try {
      text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
    } catch {
      continue
    }
    for (const c of text.split(' ')) {
      const n = Number(c)
      if (c.trim() !== '' && Number.isInteger(n)) out.push(n, ...descendants(n))
    }
  }
  return out
}

/** True while `pid` exists and is not a zombie. */
const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

const signalAll = (pids: readonly number[], sig: NodeJS.Signals): void => {
  for (const p of pids) {
    try {
      process.kill(p, sig)
    } catch {
      // already gone
    }
  }
}

/**
 * Stop `pid` and its descendants: SIGTERM to each PID (guestbackup and qemu-nbd shut down
 * cleanly on it), SIGKILL to those still there after `graceMs`.
 */
export const killTree = async (pid: number, graceMs = 10_000): Promise<void> => {
  const pids = [pid, ...descendants(pid)]
  signalAll(pids, 'SIGTERM')
  const deadline = Date.now() + graceMs
  while (pids.some(alive) && Date.now() < deadline) await sleep(50)
  signalAll(pids.filter(alive), 'SIGKILL')
}

/**
 * Run a tool to completion; rejects with the stderr tail on a non-zero exit. The process is
 * tracked until it ends, so {@link stopAll} can stop it.
 */
export const run = (
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env === undefined ? process.env : { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const pid = child.pid
    if (pid !== undefined) live.set(pid, child)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8')
    child.stderr.setEncoding('utf8')
    child.stdout.on('data', (s: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += s
    })
    child.stderr.on('data', (s: string) => {
      stderr = (stderr + s).slice(-8192)
    })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      if (pid !== undefined) void killTree(pid)
    }, opts.timeoutMs ?? 300_000)
    child.once('error', (e) => {
      clearTimeout(timer)
      if (pid !== undefined) live.delete(pid)
      reject(new Error(`cannot run ${cmd}: ${e.message}`))
    })
    child.once('close', (code, sig) => {
      clearTimeout(timer)
      if (pid !== undefined) live.delete(pid)
      if (code === 0) {
        resolve({ stdout, stderr })
        return
      }
      const how = timedOut
        ? 'timed out'
        : code === null
          ? `killed by ${String(sig)}`
          : `exit ${code}`
      const tail = stderr.trim().split('\n').slice(-5).join('\n  ')
      reject(new Error(`${cmd} ${args.join(' ')} failed (${how})${tail ? `:\n  ${tail}` : ''}`))
    })
  })

/**
 * Node preload (a data: URL, so no file is needed) that writes the process's own peak RSS in
 * KiB to $BENCH_RSS_FILE on exit: the fallback when GNU time is missing.
 */
const RSS_PROBE =
  "--import=data:text/javascript,import{writeFileSync}from'node:fs';" +
  "process.on('exit',()=>writeFileSync(process.env.BENCH_RSS_FILE,String(process.resourceUsage().maxRSS)))"

/** A timed tool call's outcome. */
export interface Measured {
  /** Peak RSS in KiB, when it could be measured. */
  rssKiB?: number
}

/**
 * Run a tool and measure its peak RSS: with GNU time (`%M`: the process and the children it
 * waited for), otherwise, for a Node program (`node: true`), with a preload probe.
 */
export const runMeasured = async (
  cmd: string,
  args: readonly string[],
  rssFile: string,
  opts: RunOptions & { node?: boolean } = {},
): Promise<Measured> => {
  await rm(rssFile, { force: true })
  if (hasGnuTime) {
    await run(GNU_TIME, ['-f', '%M', '-o', rssFile, cmd, ...args], opts)
  } else if (opts.node === true) {
    const nodeOptions = [process.env['NODE_OPTIONS'] ?? '', RSS_PROBE].join(' ').trim()
    await run(cmd, args, {
      ...opts,
      env: { ...opts.env, NODE_OPTIONS: nodeOptions, BENCH_RSS_FILE: rssFile },
    })
  } else {
    await run(cmd, args, opts)
    return {}
  }
  const text = await readFile(rssFile, 'utf8').catch(() => '')
  const last = text.trim().split('\n').pop() ?? ''
  const kib = Number(last)
  return last !== '' && Number.isFinite(kib) ? { rssKiB: kib } : {}
}

/** A qemu-nbd started by the benchmark. */
export interface Server {
  readonly uri: string
  readonly pid: number
  /** Idempotent. */
  stop(): Promise<void>
}

/** Start qemu-nbd with guestbackup's own launcher (same flags as a backup uses). */
export const serve = async (opts: QemuNbdOptions): Promise<Server> => {
  const s = await startQemuNbd(opts)
  const stop = async (): Promise<void> => {
    stoppers.delete(stop)
    await s.stop()
    trackedPids.delete(s.pid)
  }
  stoppers.add(stop)
  trackedPids.add(s.pid)
  return { uri: s.uri, pid: s.pid, stop }
}

/**
 * Track a long-running child started by other code (the QEMU of the live-VM scenario), so that
 * {@link stopAll} stops it with `stop` and {@link killAllNow} SIGKILLs its PID. `stop` must wait
 * until the process has exited. Returns an idempotent stop function that also untracks it.
 */
export const trackChild = (pid: number, stop: () => Promise<void>): (() => Promise<void>) => {
  const stopIt = async (): Promise<void> => {
    stoppers.delete(stopIt)
    await stop()
    trackedPids.delete(pid)
  }
  stoppers.add(stopIt)
  trackedPids.add(pid)
  return stopIt
}

/** Stop every server and every running tool (with its descendants), by PID. */
export const stopAll = async (): Promise<void> => {
  await Promise.allSettled([...stoppers].map((stop) => stop()))
  await Promise.allSettled([...live.keys()].map((pid) => killTree(pid)))
}

/** Last resort on a second SIGINT: SIGKILL everything known at once. */
export const killAllNow = (): void => {
  for (const pid of [...live.keys(), ...trackedPids]) {
    signalAll([pid, ...descendants(pid)], 'SIGKILL')
  }
}
