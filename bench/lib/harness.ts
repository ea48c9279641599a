/** Runs the variants of a scenario, interleaved round by round, and collects the timings. */
import { loadavg } from 'node:os'
import { run } from './procs.ts'
import type { Measured } from './procs.ts'
import { warmRead } from './source.ts'
import { cpuSince, markCpu, RssSampler } from './usage.ts'
import type { PreparedScenario, Role } from './types.ts'

/** The timings of one variant. */
export interface VariantResult {
  label: string
  role: Role
  /** Bytes of guest data copied per run, when it differs from the scenario's. */
  dataBytes?: number
  /** Wall-clock seconds of each run (tool + final sync). */
  seconds: number[]
  /** Peak RSS in KiB of each run, when measured. */
  rssKiB: number[]
  /** CPU seconds of each run: the timed tool, every process it waited for, running servers. */
  cpuSec: number[]
  /** Peak RSS in KiB per process name over all runs (sampled from /proc). */
  rssByName: Map<string, number>
  /** Who flushes and who fsyncs, as the variant states it. */
  durability?: string
}

/** The timings of one scenario. */
export interface ScenarioResult {
  title: string
  description: string
  dataBytes: number
  variants: VariantResult[]
  /** Extra Markdown lines of the scenario ({@link PreparedScenario.details}). */
  details?: readonly string[]
  /** 1-minute load average after each timed run. */
  load: number[]
}

/**
 * Measure every variant `runs` times. Rounds are interleaved (A B C, A B C, …) so that slow
 * drifts of the machine (writeback, other load) spread over all variants alike.
 */
export const runScenario = async (
  s: PreparedScenario,
  runs: number,
  signal: AbortSignal,
  log: (msg: string) => void,
): Promise<ScenarioResult> => {
  const results: VariantResult[] = s.variants.map((v) => ({
    label: v.label,
    role: v.role,
    ...(v.dataBytes === undefined ? {} : { dataBytes: v.dataBytes }),
    ...(v.durability === undefined ? {} : { durability: v.durability }),
    seconds: [],
    rssKiB: [],
    cpuSec: [],
    rssByName: new Map<string, number>(),
  }))
  const load: number[] = []
  try {
    for (let round = 1; round <= runs; round++) {
      for (const [i, v] of s.variants.entries()) {
        signal.throwIfAborted()
        const r = results[i]
        if (r === undefined) continue
        await v.prepare?.()
        for (const f of s.warmFiles) await warmRead(f)
        await run('sync', [])
        signal.throwIfAborted()
        const sampler = new RssSampler()
        const cpu = markCpu()
        const t0 = performance.now()
        let m: Measured = {}
        try {
          m = await v.run()
          await run('sync', [])
        } finally {
          for (const [name, kib] of sampler.stop()) {
            r.rssByName.set(name, Math.max(r.rssByName.get(name) ?? 0, kib))
          }
        }
        const sec = (performance.now() - t0) / 1000
        const cpuSec = cpuSince(cpu)
        r.seconds.push(sec)
        r.cpuSec.push(cpuSec)
        load.push(loadavg()[0] ?? 0)
        if (m.rssKiB !== undefined) r.rssKiB.push(m.rssKiB)
        log(`  [${round}/${runs}] ${v.label}: ${sec.toFixed(2)} s, ${cpuSec.toFixed(2)} CPU-s`)
        if (round === runs && v.verify !== undefined) {
          await v.verify()
          log(`  verified: ${v.label} output equals the source`)
        }
        await v.cleanup?.()
      }
    }
  } finally {
    for (const v of s.variants) await v.dispose?.()
  }
  const details = s.details?.(results)
  return {
    title: s.title,
    description: s.description,
    dataBytes: s.dataBytes,
    variants: results,
    load,
    ...(details === undefined ? {} : { details }),
  }
}
