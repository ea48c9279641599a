/**
 * Fixed costs of a backup, the part that does not depend on the data: a full backup of an
 * empty 1 TiB disk (block status over the whole disk, zero block digests, no data), and an
 * offline incremental backup with nothing dirty (CLI start, chain and bitmap checks, the
 * store's bookkeeping) against the least a reference tool pays for one disk copy.
 */
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { listBackups } from './lib/live.ts'
import { run, runMeasured } from './lib/procs.ts'
import { LAB_LAYOUT, makeEmptyQcow2 } from './lib/source.ts'
import { fmtBytes } from './lib/stats.ts'
import type { Scenario } from './lib/types.ts'
import {
  OURS_DURABILITY,
  guestbackupBackup,
  guestbackupStart,
  nbdcopyEndToEnd,
  qemuImgConvert,
} from './lib/variants.ts'

const TiB = 1024 ** 4
const MiB = 1024 ** 2

/** A full backup of an empty 1 TiB qcow2, against nbdcopy and qemu-img convert of it. */
export const emptyTerabyte: Scenario = async (ctx) => {
  const path = join(ctx.dir, 'empty-1t.qcow2')
  await makeEmptyQcow2(path, TiB)
  const src = { path, virtualSize: TiB }
  return {
    title: 'Empty 1 TiB disk',
    description: `${fmtBytes(TiB)} qcow2 without data (all holes), full backup`,
    dataBytes: 0,
    warmFiles: [path],
    variants: [
      await guestbackupBackup(ctx, src),
      await nbdcopyEndToEnd(ctx, src),
      await qemuImgConvert(ctx, src),
    ],
  }
}

/** Data of the incremental scenario's disk: enough for a real chain, little to copy untimed. */
const DATA = 64 * MiB

/**
 * An offline incremental with nothing dirty: each run starts from the same store (a full
 * backup) and the same disk (its persistent bitmap clean), both copied untimed, so every run
 * does the same work. The reference is nbdcopy end to end of an empty disk of the same size.
 */
export const incrementalFixedCost: Scenario = async (ctx) => {
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const size = LAB_LAYOUT.virtualSize
  const dir = join(ctx.dir, 'incr')
  await mkdir(dir, { recursive: true })
  const conf = join(dir, 'vm.conf')
  await writeFile(conf, 'name: bench\nmemory: 512\n')
  const disk0 = join(dir, 'disk0.qcow2')
  const store0 = join(dir, 'store0')
  await makeEmptyQcow2(disk0, size)
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${DATA}`, disk0])
  // Plain clusters as the reference writes; no read-back (the full row states its cost).
  await run(cli, [
    ...['init', store0, '--vm-backup-mode', 'incremental'],
    ...['--verify-after-backup', 'never', '--vm-compress', 'none'],
  ])
  const args = (store: string, disk: string): string[] => [
    ...['backup', '--store', store, '--vmid', '100', '--config', conf],
    ...['--disk', `scsi0=${disk}`],
  ]
  ctx.log('incremental fixed cost: the full backup')
  await run(cli, args(store0, disk0))
  const empty = join(dir, 'empty.qcow2')
  await makeEmptyQcow2(empty, size)
  const store = join(dir, 'store')
  const disk = join(dir, 'disk.qcow2')
  const [full] = await listBackups(cli, store0)
  return {
    title: 'Incremental, nothing dirty (fixed cost)',
    description:
      `offline incremental of a ${fmtBytes(size)} qcow2 (${fmtBytes(DATA)} data) with a clean ` +
      'persistent bitmap; the reference copies an empty disk of the same size',
    dataBytes: 0,
    warmFiles: [disk0],
    variants: [
      {
        label: '**guestbackup backup**, incremental, 0 bytes dirty (whole CLI call)',
        role: 'ours',
        durability: OURS_DURABILITY,
        prepare: async () => {
          await rm(store, { recursive: true, force: true })
          await run('cp', ['-a', store0, store])
          await copyFile(disk0, disk)
        },
        run: () => runMeasured(cli, args(store, disk), join(dir, 'rss'), { node: true }),
        verify: async () => {
          const rows = await listBackups(cli, store)
          if (rows.length !== 2 || rows[0]?.parent !== full?.volid) {
            throw new Error(
              `INVALID SCENARIO: expected an incremental on ${String(full?.volid)}, got ` +
                JSON.stringify(rows),
            )
          }
        },
        cleanup: async () => {
          await rm(store, { recursive: true, force: true })
          await rm(disk, { force: true })
        },
      },
      await nbdcopyEndToEnd(ctx, { path: empty, virtualSize: size }),
      await guestbackupStart(ctx),
    ],
  }
}
