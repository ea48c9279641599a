/**
 * Persistent dirty bitmaps of stopped VMs' qcow2 disks, through `qemu-img bitmap`: the same
 * life cycle as for running VMs (see live/bitmaps.ts) — freeze the bitmap to read and add its
 * successor before the backup, drop the frozen one after the provider committed, merge back on
 * failure — so a VM that is sometimes backed up running and sometimes stopped keeps one chain.
 * `qemu-img` takes the image's write lock, so a disk in use by a running QEMU is refused.
 */
import type { BitmapMode, IncrementalQuery } from '../api/provider.ts'
import { BackupError } from '../errors.ts'
import { run } from '../io/spawn.ts'
import { BITMAP_GRANULARITY } from './live/bitmaps.ts'
import { nextBitmapName, planBitmapRepair, storeBitmaps } from './live/bitmap-names.ts'
import { diskState } from './disks.ts'
import type { DiskSpec, QcowBitmap } from './disks.ts'
import type { TaskLog } from './task-log.ts'

/** Bitmap decisions of one offline disk. */
export interface OfflineBitmapPlan {
  mode: BitmapMode
  read?: string
  next?: string
}

export type { QcowBitmap } from './disks.ts'

const bitmapOp = async (disk: DiskSpec, bitmap: string, ops: string[]): Promise<void> => {
  try {
    await run('qemu-img', ['bitmap', ...ops, '-f', 'qcow2', disk.path, bitmap], {
      errorCode: 'QEMU_TOOL_FAILED',
    })
  } catch (e) {
    // QEMU's image locking refuses with exactly this (block/file-posix.c, raw_check_lock_bytes).
    const stderr = e instanceof BackupError ? e.details?.['stderr'] : undefined
    if (typeof stderr === 'string' && stderr.includes('Failed to get "write" lock')) {
      throw new BackupError(
        'USAGE',
        `${disk.path} is in use by a running QEMU: back the VM up with --qmp`,
        { cause: e },
      )
    }
    throw e
  }
}

/**
 * Repair leftovers (several of our bitmaps: merge into the oldest and enable it; a lone disabled
 * or inconsistent one: remove it) and return the current tracking bitmap, if any. `listed` are
 * the disk's bitmaps as {@link diskState} just read them.
 */
export const currentOfflineGeneration = async (
  disk: DiskSpec,
  storeId: string,
  log: TaskLog,
  listed: readonly QcowBitmap[],
): Promise<string | undefined> => {
  if (disk.format !== 'qcow2') return undefined
  const bitmaps: { name: string; enabled: boolean }[] = []
  for (const b of listed) {
    if (b.flags.includes('in-use') && storeBitmaps(storeId, [b.name]).length > 0) {
      // QEMU died with the image open: the bitmap may have missed writes.
      await bitmapOp(disk, b.name, ['--remove'])
      log.warn(`${disk.device}: removed inconsistent bitmap ${b.name}`)
    } else {
      bitmaps.push({ name: b.name, enabled: b.flags.includes('auto') })
    }
  }
  const r = planBitmapRepair(storeId, bitmaps)
  for (const name of r.remove) {
    await bitmapOp(disk, name, ['--remove'])
    log.warn(`${disk.device}: removed disabled bitmap ${name}`)
  }
  if (r.keep === undefined) return undefined
  for (const newer of r.merge) {
    await bitmapOp(disk, r.keep, ['--merge', newer])
    await bitmapOp(disk, newer, ['--remove'])
    log.warn(`${disk.device}: merged leftover bitmap ${newer} back into ${r.keep}`)
  }
  if (r.enable) await bitmapOp(disk, r.keep, ['--enable'])
  return r.keep
}

/** Apply the provider's answer before serving the disk. */
export const prepareOfflineBitmaps = async (
  disk: DiskSpec,
  storeId: string,
  current: string | undefined,
  answer: IncrementalQuery | undefined,
): Promise<OfflineBitmapPlan> => {
  if (disk.format !== 'qcow2') return { mode: 'none' }
  // After currentOfflineGeneration's repair, `current` is the only bitmap of this store.
  const ours = storeBitmaps(storeId, current === undefined ? [] : [current])
  const next = nextBitmapName(storeId, ours)
  const add = ['--add', '-g', String(BITMAP_GRANULARITY)]
  if (answer === 'use' && current !== undefined) {
    await bitmapOp(disk, current, ['--disable'])
    await bitmapOp(disk, next, add)
    return { mode: 'reuse', read: current, next }
  }
  for (const [, name] of ours) await bitmapOp(disk, name, ['--remove'])
  if (answer === 'use' || answer === 'new') {
    await bitmapOp(disk, next, add)
    return { mode: 'new', next }
  }
  return { mode: 'none' }
}

/** After the provider committed: drop the read bitmap. */
export const commitOfflineBitmaps = async (
  disk: DiskSpec,
  plan: OfflineBitmapPlan,
): Promise<void> => {
  if (plan.read !== undefined) await bitmapOp(disk, plan.read, ['--remove'])
}

/** After a failure: merge the successor back and re-enable the read bitmap. */
export const rollbackOfflineBitmaps = async (
  disk: DiskSpec,
  plan: OfflineBitmapPlan,
): Promise<void> => {
  if (plan.next === undefined) return
  if (plan.read !== undefined) await bitmapOp(disk, plan.read, ['--merge', plan.next, '--enable'])
  await bitmapOp(disk, plan.next, ['--remove'])
}

/** guestbackup's bitmaps (`gb-*`) in a stopped VM's qcow2 disk, with their flags. */
export const guestbackupBitmaps = async (disk: DiskSpec): Promise<QcowBitmap[]> =>
  disk.format === 'qcow2'
    ? (await diskState(disk)).bitmaps.filter((b) => b.name.startsWith('gb-'))
    : []

/** Remove one guestbackup bitmap from a stopped VM's qcow2 disk (the next backup is full). */
export const dropBitmap = async (disk: DiskSpec, name: string): Promise<void> => {
  if (!name.startsWith('gb-')) {
    throw new BackupError('USAGE', `${name} is not a guestbackup bitmap (gb-*)`)
  }
  await bitmapOp(disk, name, ['--remove'])
}
