/** The shapes a scenario (one row group of the table) is made of. */
import type { Measured } from './procs.ts'

/** What a scenario gets to work with. */
export interface ScenarioContext {
  /** Repository root. */
  repo: string
  /** Private scratch dir of this scenario (inside the benchmark's scratch dir). */
  dir: string
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal
  /** Progress line on stderr. */
  log: (msg: string) => void
}

/** `ours` is compared against every `reference` of its group; `info` rows are not compared. */
export type Role = 'ours' | 'reference' | 'info'

/**
 * One tool measured in a scenario. Per run the harness calls `prepare` (untimed), reads the
 * warm files (untimed), runs `sync` (untimed), then times `run` plus a final `sync`. After the
 * last run it calls `verify` (untimed), then `cleanup` (untimed, after every run), and
 * `dispose` once at the end.
 */
export interface Variant {
  label: string
  role: Role
  prepare?: () => Promise<void>
  run: () => Promise<Measured>
  /** Check the output equals the source; throws if not. */
  verify?: () => Promise<void>
  cleanup?: () => Promise<void>
  dispose?: () => Promise<void>
}

/** A scenario after its (untimed) setup. */
export interface PreparedScenario {
  /** Short row-group name shown in the first column. */
  title: string
  /** One sentence for the notes under the table. */
  description: string
  /** Bytes of guest data copied, for MB/s; 0 for none. */
  dataBytes: number
  /** Files read before every timed run (warm page cache). */
  warmFiles: readonly string[]
  variants: readonly Variant[]
  /** Untimed: stop what setup started. The scenario dir is removed by the harness. */
  teardown?: () => Promise<void>
}

/** A scenario: builds its inputs (untimed) and returns what to measure. */
export type Scenario = (ctx: ScenarioContext) => Promise<PreparedScenario>
