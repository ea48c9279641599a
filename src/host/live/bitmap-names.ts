/**
 * Names of guestbackup's dirty bitmaps: `gb-<storeid>-<generation>-<nonce>`, one tracking bitmap
 * per (disk, store), so several stores never disturb each other's incrementals. The name is the
 * generation id providers record, so it must never come back: the generation is at least the
 * current time in milliseconds and grows at every backup instant, and a random nonce guards
 * against clocks going backwards. A bitmap that was lost and recreated therefore can never pass
 * for the one a backup recorded.
 */
import { randomBytes } from 'node:crypto'

const PREFIX = 'gb-'

/** A new bitmap name of a store, newer than every generation in `existing`. */
export const nextBitmapName = (
  storeId: string,
  existing: readonly [number, string][],
  now: number = Date.now(),
): string => {
  const top = existing.at(-1)?.[0] ?? 0
  const generation = Math.max(top + 1, now)
  return `${PREFIX}${storeId}-${generation}-${randomBytes(4).toString('hex')}`
}

/** Generation of a bitmap of this store, or undefined for other bitmaps. */
export const bitmapGenerationOf = (storeId: string, name: string): number | undefined => {
  const p = `${PREFIX}${storeId}-`
  if (!name.startsWith(p)) return undefined
  const m = /^([1-9]\d{0,15})-[0-9a-f]{8}$/.exec(name.slice(p.length))
  return m?.[1] === undefined ? undefined : Number(m[1])
}

/** Names of every bitmap of this store in `names`, by generation ascending. */
export const storeBitmaps = (storeId: string, names: readonly string[]): [number, string][] =>
  names
    .map((n): [number | undefined, string] => [bitmapGenerationOf(storeId, n), n])
    .filter((e): e is [number, string] => e[0] !== undefined)
    .sort((a, b) => a[0] - b[0])

/** How to repair one disk's bitmaps of a store after a run was killed between instant and end. */
export interface BitmapRepair {
  /** The bitmap that tracks the disk afterwards, if any (the oldest: the one last recorded). */
  keep: string | undefined
  /** Newer bitmaps to merge into `keep` and then remove (the rollback of an unfinished backup). */
  merge: string[]
  /** `keep` was left disabled and must record again. */
  enable: boolean
  /** Bitmaps to remove outright: a lone disabled one missed writes, so the next backup is full. */
  remove: string[]
}

/**
 * Decide the repair of one disk's bitmaps of `storeId`, for running VMs (QMP) and stopped ones
 * (`qemu-img bitmap`) alike. Nothing to do when `keep` is the only bitmap and it records.
 */
export const planBitmapRepair = (
  storeId: string,
  bitmaps: readonly { name: string; enabled: boolean }[],
): BitmapRepair => {
  const ours = storeBitmaps(
    storeId,
    bitmaps.map((b) => b.name),
  ).map(([, n]) => n)
  const [oldest, ...newer] = ours
  if (oldest === undefined) return { keep: undefined, merge: [], enable: false, remove: [] }
  const enabled = bitmaps.find((b) => b.name === oldest)?.enabled === true
  if (newer.length === 0 && !enabled) {
    return { keep: undefined, merge: [], enable: false, remove: [oldest] }
  }
  return { keep: oldest, merge: newer, enable: !enabled, remove: [] }
}
