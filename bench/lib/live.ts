/**
 * Helpers of the live-VM scenario: a paused QEMU (the integration tests' `startVm`, no guest OS)
 * tracked by PID for SIGINT, guest writes at scattered offsets, and `guestbackup list --json`.
 */
import { startVm } from '../../test/helpers/qemu-vm.ts'
import type { StartVmOptions, TestVm } from '../../test/helpers/qemu-vm.ts'
import { run, trackChild } from './procs.ts'

/** A running test VM whose `stop` also untracks it. */
export interface BenchVm {
  readonly vm: TestVm
  /** Kill QEMU (SIGTERM, SIGKILL after 3 s) and wait for it. Idempotent. */
  stop(): Promise<void>
}

/** Start `qemu-system-x86_64 -S` and track it, so that {@link stopAll} and SIGINT stop it. */
export const startBenchVm = async (opts: StartVmOptions): Promise<BenchVm> => {
  const vm = await startVm(opts)
  return { vm, stop: trackChild(vm.pid, () => vm.stop()) }
}

/** Deterministic PRNG (mulberry32) in [0, 1), so that every benchmark run dirties the same blocks. */
const mulberry32 = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
}

/**
 * `count` distinct offsets, aligned to `len`, spread at random (seeded) over a disk of `size`
 * bytes; ascending.
 */
export const scatteredOffsets = (
  seed: number,
  count: number,
  size: number,
  len: number,
): number[] => {
  const slots = Math.floor(size / len)
  if (count > slots) throw new Error(`${count} blocks of ${len} bytes do not fit in ${size}`)
  const rand = mulberry32(seed)
  const picked = new Set<number>()
  while (picked.size < count) picked.add(Math.floor(rand() * slots))
  return [...picked].sort((a, b) => a - b).map((slot) => slot * len)
}

/** One row of `guestbackup list --json`, the fields the benchmark uses. */
export interface ListedBackup {
  volid: string
  /** Allocated bytes of the backup in the store. */
  size: number
  /** Volume id of the backup this one is incremental on; null for a full backup. */
  parent: string | null
}

const isListedBackup = (x: unknown): x is ListedBackup => {
  if (typeof x !== 'object' || x === null) return false
  const r = x as Record<string, unknown>
  return (
    typeof r['volid'] === 'string' &&
    typeof r['size'] === 'number' &&
    (r['parent'] === null || typeof r['parent'] === 'string')
  )
}

/** `guestbackup list --store STORE --json`. */
export const listBackups = async (cli: string, store: string): Promise<ListedBackup[]> => {
  const { stdout } = await run(cli, ['list', '--store', store, '--json'])
  let rows: unknown
  try {
    rows = JSON.parse(stdout)
  } catch (e) {
    throw new Error(`guestbackup list --json printed no JSON: ${stdout.slice(0, 200)}`, {
      cause: e,
    })
  }
  if (!Array.isArray(rows) || !rows.every(isListedBackup)) {
    throw new Error(`unexpected guestbackup list --json output: ${stdout.slice(0, 500)}`)
  }
  return rows
}
