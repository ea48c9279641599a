/** Runs the variants of a scenario, interleaved round by round, and collects the timings. */
import { run } from './procs.ts'
import { warmRead } from './source.ts'
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
}

/** The timings of one scenario. */
export interface ScenarioResult {
  title: string
  description: string
  dataBytes: number
  variants: VariantResult[]
  /** Extra Markdown lines of the scenario ({@link PreparedScenario.details}). */
  details?: readonly string[]
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
    seconds: [],
    rssKiB: [],
  }))
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
        const t0 = performance.now()
        const m = await v.run()
        await run('sync', [])
        const sec = (performance.now() - t0) / 1000
        r.seconds.push(sec)
        if (m.rssKiB !== undefined) r.rssKiB.push(m.rssKiB)
        log(`  [${round}/${runs}] ${v.label}: ${sec.toFixed(2)} s`)
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
    ...(details === undefined ? {} : { details }),
  }
}
