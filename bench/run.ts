/**
 * guestbackup benchmark: `make bench` / `npm run bench`.
 *
 * Measures, in one run on this machine, guestbackup's full backup of a 2 GiB qcow2 holding
 * 1 GiB of random data against nbdcopy and qemu-img convert, and a live incremental backup
 * with 1 % of that disk dirty against the full one of the same VM, prints a Markdown table and
 * writes it to bench/results/latest.md. Scratch lives in a temp dir under /var/tmp (or
 * $BENCH_TMPDIR) that is removed at the end, also on error and SIGINT.
 *
 * Environment: BENCH_RUNS (default 3), BENCH_TMPDIR (default /var/tmp), BENCH_ONLY (run only the
 * scenarios whose exported name in scenarios.ts contains this text, case-insensitive, e.g.
 * `fullBackup`; bench/results/latest.md is then left as it was).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { rmSync } from 'node:fs'
import { loadavg } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runScenario } from './lib/harness.ts'
import type { ScenarioResult } from './lib/harness.ts'
import { freeBytes, isTmpfs, machineInfo } from './lib/machine.ts'
import { killAllNow, run, stopAll } from './lib/procs.ts'
import { formatMarkdown, renderReport } from './lib/report.ts'
import { LAB_LAYOUT, dataBytes, makeRandomQcow2 } from './lib/source.ts'
import { fmtBytes } from './lib/stats.ts'
import { scenarios } from './scenarios.ts'

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const RESULTS = join(REPO, 'bench', 'results', 'latest.md')
/**
 * Shared source 1 GiB + the raw file while generating it (1 GiB) + margin; later the source +
 * one output (1 GiB), or for the incremental scenario the source + the VM's copy + the store.
 */
const NEEDED_FREE = 4 * 1024 ** 3

const log = (msg: string): void => {
  process.stderr.write(`bench: ${msg}\n`)
}

const readRuns = (): number => {
  const v = process.env['BENCH_RUNS']
  if (v === undefined || v === '') return 3
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error(`BENCH_RUNS must be 1..50: ${v}`)
  return n
}

const controller = new AbortController()
let scratch: string | undefined
let interrupts = 0
const onSignal = (sig: NodeJS.Signals): void => {
  interrupts++
  if (interrupts > 1) {
    killAllNow()
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true })
    process.exit(130)
  }
  log(`${sig}: stopping children and removing scratch (again to force)`)
  controller.abort(new Error(`interrupted by ${sig}`))
  void stopAll()
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)

const main = async (): Promise<number> => {
  const runs = readRuns()
  for (const tool of ['qemu-img', 'qemu-nbd', 'nbdcopy']) {
    await run(tool, ['--version']).catch((e: unknown) => {
      throw new Error(`${tool} is needed (make deps installs it)`, { cause: e })
    })
  }
  const parent = process.env['BENCH_TMPDIR'] ?? '/var/tmp'
  if (await isTmpfs(parent)) {
    log(`WARNING: ${parent} is tmpfs: writes go to RAM; set BENCH_TMPDIR to a disk directory`)
  }
  if ((await freeBytes(parent)) < NEEDED_FREE) {
    throw new Error(`${parent} needs ${NEEDED_FREE / 1024 ** 3} GiB free`)
  }
  const root = await mkdtemp(join(parent, 'guestbackup-bench-'))
  scratch = root
  log(`scratch ${root}; ${runs} runs per tool`)
  const results: ScenarioResult[] = []
  const t0 = performance.now()
  let lab: Promise<string> | undefined
  const labSource = (): Promise<string> => {
    lab ??= (async () => {
      const l = LAB_LAYOUT
      const path = join(root, 'lab.qcow2')
      log(`generating ${fmtBytes(l.virtualSize)} qcow2 with ${fmtBytes(dataBytes(l))} random data`)
      const t1 = performance.now()
      await makeRandomQcow2(path, l, controller.signal)
      log(`  done in ${((performance.now() - t1) / 1000).toFixed(1)} s`)
      return path
    })()
    return lab
  }
  try {
    const machine = await machineInfo(root, REPO)
    const only = process.env['BENCH_ONLY']?.toLowerCase() ?? ''
    for (const [i, scenario] of scenarios.entries()) {
      if (only !== '' && !scenario.name.toLowerCase().includes(only)) continue
      const dir = join(root, `s${i}`)
      await mkdir(dir)
      const prepared = await scenario({
        repo: REPO,
        dir,
        signal: controller.signal,
        log,
        labSource,
      })
      log(`${prepared.title}: ${prepared.variants.length} tools × ${runs} runs`)
      const ts = performance.now()
      try {
        results.push(await runScenario(prepared, runs, controller.signal, log))
      } finally {
        await prepared.teardown?.()
        await rm(dir, { recursive: true, force: true })
      }
      log(`${prepared.title}: done in ${((performance.now() - ts) / 1000).toFixed(0)} s`)
    }
    const report = await formatMarkdown(
      renderReport(machine, results, { runs, scratchParent: parent, loadEnd: loadavg()[0] ?? 0 }),
      RESULTS,
    )
    console.log(report)
    if (only !== '') {
      log(`BENCH_ONLY=${only}: ${RESULTS} left as it was`)
      return 0
    }
    await mkdir(dirname(RESULTS), { recursive: true })
    await writeFile(RESULTS, report)
    log(`wrote ${RESULTS} (${((performance.now() - t0) / 1000).toFixed(0)} s in all)`)
    return 0
  } finally {
    await stopAll()
    await rm(root, { recursive: true, force: true })
  }
}

try {
  process.exitCode = await main()
} catch (e) {
  if (controller.signal.aborted) {
    log('interrupted; scratch removed')
    process.exitCode = 130
  } else {
    log(`failed: ${e instanceof Error ? e.message : String(e)}`)
    if (e instanceof Error && e.cause !== undefined) console.error(e.cause)
    process.exitCode = 1
  }
}
