/**
 * What a timed run costs besides wall time: the CPU seconds of every process that worked for it
 * and the peak resident memory of each, read from /proc (proc(5): `/proc/<pid>/stat` fields 14–17
 * utime, stime, cutime, cstime in clock ticks; `/proc/<pid>/status` VmHWM).
 */
import { readFileSync } from 'node:fs'
import { descendants, trackedServerPids } from './procs.ts'

/** `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture Debian ships. */
const CLOCK_TICKS = 100

/** Fields after the `(comm)` of a stat line: index 0 is field 3 (state). */
const statFields = (pid: number | 'self'): string[] | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return text.slice(text.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

/** utime + stime of `pid` (own threads), in seconds; 0 once it is gone. */
export const ownCpu = (pid: number): number => {
  const f = statFields(pid)
  return f === undefined ? 0 : (Number(f[11]) + Number(f[12])) / CLOCK_TICKS
}

/** cutime + cstime of the benchmark itself: every child it has waited for, in seconds. */
const reapedCpu = (): number => {
  const f = statFields('self')
  return f === undefined ? 0 : (Number(f[13]) + Number(f[14])) / CLOCK_TICKS
}

/** A CPU reading taken before a timed run. */
export interface CpuMark {
  reaped: number
  servers: Map<number, number>
}

/**
 * Mark the CPU time so far: the children the benchmark reaped (the timed tool with all the
 * processes it waited for, and any server started and stopped inside the run) and the servers
 * that stay up across runs (a source qemu-nbd started untimed, the live-VM QEMU).
 */
export const markCpu = (): CpuMark => ({
  reaped: reapedCpu(),
  servers: new Map(trackedServerPids().map((p) => [p, ownCpu(p)])),
})

/**
 * CPU seconds spent since `mark` by the processes that did the run's work. The benchmark's own
 * Node process is not counted: it only waits.
 */
export const cpuSince = (mark: CpuMark): number => {
  let sec = reapedCpu() - mark.reaped
  for (const [pid, before] of mark.servers) {
    const now = ownCpu(pid)
    // A server gone during the run was reaped: its whole life is in `reaped` already.
    if (now > 0) sec += now - before
  }
  return sec
}

/** Processes whose memory is not the tools': the measuring wrappers. */
const IGNORED = new Set(['time', 'sync', 'sh'])

/** Peak RSS in KiB per process name, sampled while a run lasts. */
export class RssSampler {
  readonly #peaks = new Map<string, number>()
  readonly #timer: NodeJS.Timeout
  /** Helpers of the benchmark itself (tsx's esbuild service), there before the run. */
  readonly #before: Set<number>

  /**
   * Start sampling every `intervalMs` the descendants of this benchmark process: those the run
   * starts and the servers kept running for it, not the benchmark's own helpers.
   */
  constructor(intervalMs = 100) {
    const servers = new Set(trackedServerPids())
    this.#before = new Set(descendants(process.pid).filter((p) => !servers.has(p)))
    this.#timer = setInterval(() => {
      this.sample()
    }, intervalMs)
    this.#timer.unref()
  }

  /** Read VmHWM (the process's own peak so far) of every descendant now. */
  sample(): void {
    for (const pid of descendants(process.pid)) {
      if (this.#before.has(pid)) continue
      let text = ''
      try {
        text = readFileSync(`/proc/${pid}/status`, 'utf8')
      } catch {
        continue
      }
      const name = /^Name:\s*(\S+)/m.exec(text)?.[1]
      const hwm = Number(/^VmHWM:\s*(\d+) kB/m.exec(text)?.[1] ?? NaN)
      if (name === undefined || !Number.isFinite(hwm) || IGNORED.has(name)) continue
      this.#peaks.set(name, Math.max(this.#peaks.get(name) ?? 0, hwm))
    }
  }

  /** Stop sampling; the peaks seen, by process name. */
  stop(): Map<string, number> {
    clearInterval(this.#timer)
    this.sample()
    return this.#peaks
  }
}
