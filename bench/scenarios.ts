/**
 * The scenarios of the benchmark, in table order. Each one is a row group: guestbackup's own
 * result first, then the references it is compared with.
 *
 * EXTENSION POINT — to add a row group (e.g. incremental backups), write a {@link Scenario}
 * and append it to {@link scenarios}. The harness, the table and bench/results/latest.md pick
 * it up without other changes.
 */
import { join } from 'node:path'
import { LAB_LAYOUT, dataBytes, makeEmptyQcow2, makeRandomQcow2 } from './lib/source.ts'
import { fmtBytes } from './lib/stats.ts'
import type { Scenario } from './lib/types.ts'
import {
  guestbackupBackup,
  guestbackupStart,
  nbdcopyEndToEnd,
  nbdcopyServersRunning,
  qemuImgConvert,
} from './lib/variants.ts'

/**
 * Full backup of an offline disk: 2 GiB qcow2 with 1 GiB of random data (qemu-lab 04-speed.sh
 * layout), warm page cache.
 */
export const fullBackup: Scenario = async (ctx) => {
  const l = LAB_LAYOUT
  const path = join(ctx.dir, 'src.qcow2')
  ctx.log(`generating ${fmtBytes(l.virtualSize)} qcow2 with ${fmtBytes(dataBytes(l))} random data`)
  const t0 = performance.now()
  await makeRandomQcow2(path, l, ctx.signal)
  ctx.log(`  done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  const src = { path, virtualSize: l.virtualSize }
  return {
    title: 'Full backup',
    description:
      `${fmtBytes(l.virtualSize)} qcow2, ${fmtBytes(dataBytes(l))} random data ` +
      `(${l.chunks} × ${fmtBytes(l.chunkSize)}, one every ${fmtBytes(l.stride)}, rest holes), ` +
      'into a fresh store / fresh qcow2; warm cache',
    dataBytes: dataBytes(l),
    warmFiles: [path],
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

/*
 * Planned (not implemented yet): incremental backup with 1 % of the disk dirty.
 *
 *   export const incrementalBackup: Scenario = async (ctx) => { … }
 *
 * Sketch: make the full-backup source, take one full backup into a store created with
 * `init --vm-backup-mode incremental`, dirty 1 % of the disk (e.g. `qemu-io -c 'write -P …'`
 * on scattered 64 KiB–1 MiB ranges, tracked by a persistent dirty bitmap once the CLI reads
 * bitmaps of offline disks), then time the next `guestbackup backup` against references such as
 * `nbdcopy` restricted to the dirty extents. The untimed `prepare` of each run must restore the
 * "one full backup, then 1 % dirty" state.
 */

/** All scenarios, in table order. Append new row groups here. */
export const scenarios: readonly Scenario[] = [
  fullBackup,
  fixedCost,
  // incrementalBackup,  ← extension point: 1 % dirty incremental (see above)
]
