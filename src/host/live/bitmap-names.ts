/**
 * Names of guestbackup's dirty bitmaps: `gb-<storeid>-<generation>`, one tracking bitmap per
 * (disk, store), so several stores never disturb each other's incrementals. The generation
 * grows by one at every backup instant; the name is the generation id providers record.
 */

const PREFIX = 'gb-'

/** Bitmap name of a store and generation. */
export const bitmapName = (storeId: string, generation: number): string =>
  `${PREFIX}${storeId}-${generation}`

/** Generation of a bitmap of this store, or undefined for other bitmaps. */
export const bitmapGenerationOf = (storeId: string, name: string): number | undefined => {
  const p = `${PREFIX}${storeId}-`
  if (!name.startsWith(p)) return undefined
  const rest = name.slice(p.length)
  return /^[1-9]\d{0,15}$/.test(rest) ? Number(rest) : undefined
}

/** Names of every bitmap of this store in `names`, by generation ascending. */
export const storeBitmaps = (storeId: string, names: readonly string[]): [number, string][] =>
  names
    .map((n): [number | undefined, string] => [bitmapGenerationOf(storeId, n), n])
    .filter((e): e is [number, string] => e[0] !== undefined)
    .sort((a, b) => a[0] - b[0])
