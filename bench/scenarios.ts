/**
 * The scenarios of the benchmark, in table order. Each one is a row group: guestbackup's own
 * result first, then the references it is compared with (the incremental group shows the full
 * backup first, because it runs first in each round).
 *
 * EXTENSION POINT — to add a row group, write a {@link Scenario} and append it to
 * {@link scenarios}. The harness, the table and bench/results/latest.md pick it up without other
 * changes; `details` adds a section of its own below the table.
 */
import { copyFile, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { TestVm } from '../test/helpers/qemu-vm.ts'
import type { VariantResult } from './lib/harness.ts'
import { listBackups, scatteredOffsets, startBenchVm } from './lib/live.ts'
import type { BenchVm, ListedBackup } from './lib/live.ts'
import { run, runMeasured } from './lib/procs.ts'
import type { Measured } from './lib/procs.ts'
import { LAB_LAYOUT, dataBytes, makeEmptyQcow2 } from './lib/source.ts'
import { fmtBytes, summarize } from './lib/stats.ts'
import type { Scenario, Variant } from './lib/types.ts'
import { compressedBackup } from './compress.ts'
import {
  ctSquashfsBackup,
  ctSquashfsRestore,
  ctTarBackup,
  ctTarRestore,
  ctZstdBackup,
} from './containers.ts'
import { emptyTerabyte, incrementalFixedCost } from './fixed-cost.ts'
import { digestCost, verifySpeed } from './integrity.ts'
import { mergeMiddle, restoreChain, restoreFull } from './restore.ts'
import {
  assertSameContent,
  guestbackupBackup,
  guestbackupStart,
  nbdcopyEndToEnd,
  nbdcopyServersRunning,
  qemuImgConvert,
} from './lib/variants.ts'

/**
 * Full backup of an offline disk: 2 GiB qcow2 with 1 GiB of random data (64 chunks of 16 MiB,
 * one every 32 MiB), warm page cache.
 */
export const fullBackup: Scenario = async (ctx) => {
  const l = LAB_LAYOUT
  const src = { path: await ctx.labSource(), virtualSize: l.virtualSize }
  return {
    title: 'Full backup',
    description:
      `${fmtBytes(l.virtualSize)} qcow2, ${fmtBytes(dataBytes(l))} random data ` +
      `(${l.chunks} × ${fmtBytes(l.chunkSize)}, one every ${fmtBytes(l.stride)}, rest holes), ` +
      'into a fresh store / fresh qcow2; warm cache',
    dataBytes: dataBytes(l),
    warmFiles: [src.path],
    variants: [
      await guestbackupBackup(ctx, src),
      await nbdcopyServersRunning(ctx, src),
      await nbdcopyEndToEnd(ctx, src),
      await qemuImgConvert(ctx, src),
    ],
  }
}

/**
 * Fixed costs: the same tools on a 2 GiB qcow2 without any data, and the bare CLI start. These
 * rows explain the part of the full-backup time that does not depend on the data.
 */
export const fixedCost: Scenario = async (ctx) => {
  const size = LAB_LAYOUT.virtualSize
  const path = join(ctx.dir, 'empty.qcow2')
  await makeEmptyQcow2(path, size)
  const src = { path, virtualSize: size }
  return {
    title: 'Empty disk (fixed cost)',
    description: `${fmtBytes(size)} qcow2 without data (all holes); and the bare CLI start`,
    dataBytes: 0,
    warmFiles: [path],
    variants: [
      await guestbackupBackup(ctx, src),
      await nbdcopyEndToEnd(ctx, src),
      await qemuImgConvert(ctx, src),
      await guestbackupStart(ctx),
    ],
  }
}

/** One guest write that dirties the disk, and how many: 20 × 1 MiB = 20 MiB ≈ 1 % of 2 GiB. */
const DIRTY_WRITE = 1024 ** 2
const DIRTY_WRITES = 20

/** The one qcow2 of backup `volid` (`<store>:backup/<vmid>/<name>`) in directory store `store`. */
const backupImage = async (store: string, volid: string): Promise<string> => {
  const m = /^[^:]+:backup\/(\d+)\/([^/]+)$/.exec(volid)
  const [, vmid, name] = m ?? []
  if (vmid === undefined || name === undefined) throw new Error(`unexpected volume id ${volid}`)
  const dir = join(store, vmid, name)
  const images = (await readdir(dir)).filter((f) => f.endsWith('.qcow2'))
  if (images.length !== 1 || images[0] === undefined) {
    throw new Error(`expected one qcow2 in ${dir}, found ${images.length}`)
  }
  return join(dir, images[0])
}

const pct = (x: number, digits = 1): string => `${(100 * x).toFixed(digits)} %`
const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(1)} MiB`

/** `median (min–max)` of a sample formatted with `f`. */
const spread = (xs: readonly number[], f: (x: number) => string): string => {
  const s = summarize(xs)
  return `${f(s.median)} (${f(s.min)}–${f(s.max)})`
}

/**
 * Incremental backup of a running VM with 1 % of its disk dirty, against the full backup of the
 * same VM in the same round. No chaining across rounds; every round starts over: a fresh copy of
 * the benchmark source (which stays pristine) attached to a fresh paused QEMU (`-S`, no guest OS) and
 * a fresh store made with `init --vm-backup-mode incremental`. Then, timed, the full live backup
 * (`backup --qmp`; it creates the persistent dirty bitmap); untimed, 20 × 1 MiB guest writes at
 * scattered 1 MiB-aligned offsets (seeded: the same offsets in every benchmark run, different
 * ones per round); timed, the incremental live backup. `guestbackup list --json` must show the
 * incremental with the full backup as its `parent`, or the scenario fails. The bare CLI start
 * is timed in the same round too, for the "minus start-up" columns.
 */
export const incrementalBackup: Scenario = async (ctx) => {
  const l = LAB_LAYOUT
  const source = await ctx.labSource()
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const dir = join(ctx.dir, 'live')
  const vmDir = join(dir, 'vm')
  const disk = join(dir, 'disk.qcow2')
  const store = join(dir, 'store')
  const conf = join(dir, 'vm.conf')
  // The CLI puts its fleecing overlays under os.tmpdir(): keep them in the scratch dir, so that
  // nothing is left in /tmp even if a run is killed.
  const tmp = join(dir, 'tmp')
  await mkdir(vmDir, { recursive: true })
  await mkdir(tmp)
  await writeFile(
    conf,
    `name: bench\nmemory: 64\nscsi0: local:100/vm-100-disk-0.qcow2,size=${l.virtualSize}\n`,
  )
  let vm: BenchVm | undefined
  let round = 0
  let full: ListedBackup | undefined
  let incr: ListedBackup | undefined
  /** Stored bytes of the full and the incremental backup of each round. */
  const stored: { full: number; incr: number }[] = []

  const stopVm = async (): Promise<void> => {
    await vm?.stop()
    vm = undefined
  }
  const liveVm = (): TestVm => {
    if (vm === undefined) throw new Error('the VM is not running')
    return vm.vm
  }
  const backup = (what: string): Promise<Measured> =>
    runMeasured(
      cli,
      ['backup', '--store', store, '--vmid', '100', '--config', conf, '--qmp', liveVm().qmpPath],
      join(dir, `rss-${what}`),
      { node: true, env: { TMPDIR: tmp } },
    )
  /** After the full backup: the store holds exactly it, without a parent. Idempotent. */
  const checkFull = async (): Promise<ListedBackup> => {
    if (full !== undefined) return full
    const rows = await listBackups(cli, store)
    const [only] = rows
    if (rows.length !== 1 || only?.parent !== null) {
      throw new Error(
        `after the full backup, expected one backup without parent: ${JSON.stringify(rows)}`,
      )
    }
    full = only
    return full
  }
  /** After the incremental: a second backup whose parent is the full one, else we fail loudly. */
  const checkIncremental = async (): Promise<ListedBackup> => {
    if (incr !== undefined) return incr
    const base = await checkFull()
    const rows = await listBackups(cli, store)
    const added = rows.filter((r) => r.volid !== base.volid)
    const [next] = added
    if (rows.length !== 2 || next === undefined) {
      throw new Error(`after the incremental, expected two backups: ${JSON.stringify(rows)}`)
    }
    if (next.parent !== base.volid) {
      throw new Error(
        `INVALID SCENARIO: backup ${next.volid} after 1 % dirty has parent ${String(next.parent)}, ` +
          `not the full backup ${base.volid}: the CLI did not make an incremental backup`,
      )
    }
    incr = next
    stored.push({ full: base.size, incr: next.size })
    return next
  }
  /** The disk as the idle guest sees it equals backup `b`, read through its backing chain. */
  const assertDiskIs = async (b: ListedBackup): Promise<void> => {
    await liveVm().guestIo('scsi0', 'flush')
    await assertSameContent(disk, await backupImage(store, b.volid), { forceShare: true })
  }

  const fullRun: Variant = {
    label: 'guestbackup `backup --qmp`, full (fresh store)',
    role: 'reference',
    dataBytes: dataBytes(l),
    prepare: async () => {
      round++
      full = undefined
      incr = undefined
      await stopVm()
      await rm(disk, { force: true })
      await copyFile(source, disk)
      await rm(vmDir, { recursive: true, force: true })
      await mkdir(vmDir)
      vm = await startBenchVm({ disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }], dir: vmDir })
      await rm(store, { recursive: true, force: true })
      await run(cli, ['init', store, '--vm-backup-mode', 'incremental', '--vm-compress', 'none'])
    },
    run: () => backup('full'),
    verify: async () => {
      await assertDiskIs(await checkFull())
    },
    cleanup: async () => {
      await checkFull()
    },
  }
  const incrementalRun: Variant = {
    label: `**guestbackup \`backup --qmp\`, incremental**, ${fmtBytes(DIRTY_WRITES * DIRTY_WRITE)} dirty`,
    role: 'ours',
    dataBytes: DIRTY_WRITES * DIRTY_WRITE,
    prepare: async () => {
      const guest = liveVm()
      for (const off of scatteredOffsets(round, DIRTY_WRITES, l.virtualSize, DIRTY_WRITE)) {
        await guest.guestIo('scsi0', `write -P 0x5a ${off} ${DIRTY_WRITE}`)
      }
    },
    run: () => backup('incremental'),
    verify: async () => {
      await assertDiskIs(await checkIncremental())
    },
    cleanup: async () => {
      await checkIncremental()
    },
  }

  const details = (results: readonly VariantResult[]): string[] => {
    const [f, i, s] = results.map((r) => r.seconds)
    if (f === undefined || i === undefined || s === undefined) return []
    const rows = stored.map((b, k) => ({
      full: f[k] ?? NaN,
      inc: i[k] ?? NaN,
      start: s[k] ?? NaN,
      b,
    }))
    const col = {
      full: rows.map((r) => r.full),
      inc: rows.map((r) => r.inc),
      frac: rows.map((r) => r.inc / r.full),
      start: rows.map((r) => r.start),
      incNet: rows.map((r) => r.inc - r.start),
      fracNet: rows.map((r) => (r.inc - r.start) / (r.full - r.start)),
      storedFull: rows.map((r) => r.b.full),
      storedIncr: rows.map((r) => r.b.incr),
      storedFrac: rows.map((r) => r.b.incr / r.b.full),
    }
    const sec = (x: number): string => x.toFixed(2)
    const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`
    return [
      line([
        'round',
        'full s',
        'incr. s',
        '**incr. ÷ full**',
        'CLI start-up s',
        'incr. − start-up s',
        '(incr. − start-up) ÷ (full − start-up)',
        'stored full',
        'stored incr.',
        'stored incr. ÷ full',
      ]),
      line(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:']),
      ...rows.map((r, k) =>
        line([
          String(k + 1),
          sec(r.full),
          sec(r.inc),
          `**${pct(r.inc / r.full)}**`,
          sec(r.start),
          sec(r.inc - r.start),
          pct((r.inc - r.start) / (r.full - r.start)),
          mib(r.b.full),
          mib(r.b.incr),
          pct(r.b.incr / r.b.full, 2),
        ]),
      ),
      line([
        'median (min–max)',
        spread(col.full, sec),
        spread(col.inc, sec),
        `**${spread(col.frac, (x) => pct(x))}**`,
        spread(col.start, sec),
        spread(col.incNet, sec),
        spread(col.fracNet, (x) => pct(x)),
        spread(col.storedFull, mib),
        spread(col.storedIncr, mib),
        spread(col.storedFrac, (x) => pct(x, 2)),
      ]),
      '',
      `- Each round: fresh disk copy, fresh VM, fresh store; full live backup (timed), ` +
        `${DIRTY_WRITES} × ${fmtBytes(DIRTY_WRITE)} guest writes at scattered offsets ` +
        `(untimed), incremental live backup (timed), \`guestbackup --version\` (timed). ` +
        'Ratios are taken within each round, then summarised.',
      `- "− start-up" subtracts the bare CLI start (\`guestbackup --version\`, Node + tsx + ` +
        'imports) measured in the same round: the part of each backup that is not process start.',
      `- Stored = allocated bytes of the backup in the store (\`guestbackup list --json\` ` +
        `\`size\`). The dirty data is ${fmtBytes(DIRTY_WRITES * DIRTY_WRITE)}: ` +
        `${pct((DIRTY_WRITES * DIRTY_WRITE) / l.virtualSize, 2)} of the disk, ` +
        `${pct((DIRTY_WRITES * DIRTY_WRITE) / dataBytes(l), 2)} of its data.`,
    ]
  }

  return {
    title: 'Incremental backup, 1 % of a 2 GiB disk dirty',
    description:
      `running VM (paused QEMU, no guest OS) on a copy of the ${fmtBytes(l.virtualSize)} qcow2 ` +
      `above; per round a full live backup into a fresh store, then ${DIRTY_WRITES} × ` +
      `${fmtBytes(DIRTY_WRITE)} guest writes at scattered offsets (untimed), then the ` +
      'incremental live backup; here ours ÷ tool = incremental ÷ full (ratio of the medians; ' +
      'per-round ratios in the section below), and MB/s counts 1 GiB for the full and the ' +
      `${fmtBytes(DIRTY_WRITES * DIRTY_WRITE)} dirty for the incremental`,
    dataBytes: dataBytes(l),
    warmFiles: [disk],
    variants: [fullRun, incrementalRun, await guestbackupStart(ctx)],
    details,
    teardown: stopVm,
  }
}

/** All scenarios, in table order. Append new row groups here. */
export const scenarios: readonly Scenario[] = [
  fullBackup,
  fixedCost,
  emptyTerabyte,
  incrementalFixedCost,
  incrementalBackup,
  digestCost,
  verifySpeed,
  restoreFull,
  restoreChain,
  mergeMiddle,
  compressedBackup,
  ctTarBackup,
  ctZstdBackup,
  ctTarRestore,
  ctSquashfsBackup,
  ctSquashfsRestore,
]
