/** The shapes a scenario (one row group of the table) is made of. */
import type { VariantResult } from './harness.ts'
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
  /**
   * The 2 GiB qcow2 with 1 GiB of random data (`LAB_LAYOUT` of source.ts), made once per benchmark run
   * outside the scenario dirs and shared by the scenarios. Never write to it: copy it first.
   */
  labSource: () => Promise<string>
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
  /** Bytes of guest data this variant copies, for MB/s, if not the scenario's `dataBytes`. */
  dataBytes?: number
  /**
   * Who flushes and who fsyncs what, e.g. "flush of the target qemu-nbd (fdatasync), then sync";
   * shown under the table so that every comparison states its durability.
   */
  durability?: string
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
  /**
   * Extra Markdown for the report (e.g. a per-round table), built from the timings after the
   * last run; shown under its own heading below the main table.
   */
  details?: (results: readonly VariantResult[]) => readonly string[]
  /** Untimed: stop what setup started. The scenario dir is removed by the harness. */
  teardown?: () => Promise<void>
}

/** A scenario: builds its inputs (untimed) and returns what to measure. */
export type Scenario = (ctx: ScenarioContext) => Promise<PreparedScenario>
