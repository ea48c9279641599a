/**
 * Dirty bitmaps of a running VM, done right:
 * - persistent bitmaps (qcow2) per (disk, store), so incrementals survive a VM restart;
 * - at the instant, the bitmap being backed up is disabled and its successor added in the same
 *   transaction as the fleecing jobs;
 * - the old bitmap is dropped only after the provider committed the backup
 *   (`backupCleanup(success)` returned), not when the copy returned;
 * - on any failure the successor is merged back into the old bitmap, which is enabled again:
 *   no guest write is ever forgotten.
 */
import type { BitmapMode, IncrementalQuery } from '../../api/provider.ts'
import type { QmpClient } from '../../qmp/client.ts'
import type { QmpTransactionAction } from '../../qmp/commands.ts'
import { nextBitmapName, planBitmapRepair, storeBitmaps } from './bitmap-names.ts'
import type { LiveDisk } from './discover.ts'

/** Granularity of our bitmaps: 64 KiB, the qcow2 cluster size. */
export const BITMAP_GRANULARITY = 64 * 1024

/** What happens to one disk's bitmaps at the instant. */
export interface DiskBitmapPlan {
  device: string
  node: string
  /** Mode the provider gets. */
  mode: BitmapMode
  /** Bitmap read by this backup (mode `reuse`). */
  read?: string
  /** Bitmap started at this instant (tracks writes for the next backup). */
  next?: string
  /** Our bitmaps removed at the instant. */
  removed: string[]
}

/** The tracking bitmap of this store on a disk (the newest recording one), if any. */
export const currentGeneration = (disk: LiveDisk, storeId: string): string | undefined => {
  const ours = storeBitmaps(
    storeId,
    disk.bitmaps.filter((b) => b.recording).map((b) => b.name),
  )
  return ours.at(-1)?.[1]
}

/** Decide the bitmap operations of one disk from the provider's answer. */
export const planDiskBitmaps = (
  disk: LiveDisk,
  storeId: string,
  answer: IncrementalQuery | undefined,
): DiskBitmapPlan => {
  const ours = storeBitmaps(
    storeId,
    disk.bitmaps.map((b) => b.name),
  )
  const current = currentGeneration(disk, storeId)
  const next = nextBitmapName(storeId, ours)
  if (answer === 'use' && current !== undefined) {
    return {
      device: disk.device,
      node: disk.node,
      mode: 'reuse',
      read: current,
      next,
      removed: ours.map(([, n]) => n).filter((n) => n !== current),
    }
  }
  const removed = ours.map(([, n]) => n)
  if (answer === 'use' || answer === 'new') {
    return { device: disk.device, node: disk.node, mode: 'new', next, removed }
  }
  return { device: disk.device, node: disk.node, mode: 'none', removed }
}

/** Transaction actions of a plan: freeze the read bitmap, drop stale ones, add the next. */
export const instantActions = (
  plans: readonly DiskBitmapPlan[],
  persistent: (node: string) => boolean,
): QmpTransactionAction[] => {
  const actions: QmpTransactionAction[] = []
  for (const p of plans) {
    for (const name of p.removed) {
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node: p.node, name } })
    }
    if (p.read !== undefined) {
      actions.push({ type: 'block-dirty-bitmap-disable', data: { node: p.node, name: p.read } })
    }
    if (p.next !== undefined) {
      actions.push({
        type: 'block-dirty-bitmap-add',
        data: {
          node: p.node,
          name: p.next,
          persistent: persistent(p.node),
          granularity: BITMAP_GRANULARITY,
        },
      })
    }
  }
  return actions
}

/** After the provider committed: drop the bitmaps that were read. */
export const commitBitmaps = async (
  qmp: QmpClient,
  plans: readonly DiskBitmapPlan[],
): Promise<void> => {
  const actions: QmpTransactionAction[] = []
  for (const p of plans) {
    if (p.read !== undefined) {
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node: p.node, name: p.read } })
    }
  }
  if (actions.length > 0) await qmp.execute('transaction', { actions })
}

/**
 * After a failure: fold the successor back into the read bitmap and re-enable it, in one
 * transaction (QEMU drains I/O around it, so no write slips between). Without a read bitmap
 * the successor is dropped: the next backup is full anyway.
 */
export const rollbackBitmaps = async (
  qmp: QmpClient,
  plans: readonly DiskBitmapPlan[],
): Promise<void> => {
  const actions: QmpTransactionAction[] = []
  for (const p of plans) {
    if (p.next === undefined) continue
    if (p.read !== undefined) {
      actions.push({
        type: 'block-dirty-bitmap-merge',
        data: { node: p.node, target: p.read, bitmaps: [p.next] },
      })
      actions.push({ type: 'block-dirty-bitmap-enable', data: { node: p.node, name: p.read } })
    }
    actions.push({ type: 'block-dirty-bitmap-remove', data: { node: p.node, name: p.next } })
  }
  if (actions.length > 0) await qmp.execute('transaction', { actions })
}

/**
 * Repair the bitmaps a killed run left: when several of our bitmaps exist on a disk, merge the
 * newer ones into the oldest and enable it (the rollback of an unfinished backup); a lone
 * disabled bitmap missed writes and is removed (the next backup is full).
 */
export const recoverBitmaps = async (
  qmp: QmpClient,
  disks: readonly LiveDisk[],
  storeId: string,
): Promise<string[]> => {
  const fixed: string[] = []
  const actions: QmpTransactionAction[] = []
  for (const d of disks) {
    const r = planBitmapRepair(
      storeId,
      d.bitmaps.map((b) => ({ name: b.name, enabled: b.recording })),
    )
    const node = d.node
    for (const name of r.remove) {
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name } })
      fixed.push(`${d.device}: removed disabled bitmap ${name}`)
    }
    if (r.keep === undefined) continue
    if (r.merge.length > 0) {
      actions.push({
        type: 'block-dirty-bitmap-merge',
        data: { node, target: r.keep, bitmaps: r.merge },
      })
      fixed.push(`${d.device}: merged ${r.merge.join(', ')} back into ${r.keep}`)
    }
    if (r.enable) actions.push({ type: 'block-dirty-bitmap-enable', data: { node, name: r.keep } })
    for (const name of r.merge) {
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name } })
    }
  }
  if (actions.length > 0) await qmp.execute('transaction', { actions })
  return fixed
}
