/**
 * guestbackup extension: the id maps of an unprivileged container, LXC's `lxc.idmap` entries
 * `u|g CT HOST COUNT` (lxc.container.conf(5)): container ids `CT … CT+COUNT-1` are host ids
 * `HOST … HOST+COUNT-1`. Parsed and checked in `idmap-parse.ts`.
 */
/** One `lxc.idmap` entry. */
export interface IdMapEntry {
  /** `u` for user ids, `g` for group ids. */
  type: 'u' | 'g'
  /** First id inside the container. */
  ct: number
  /** The host id `ct` maps to. */
  host: number
  /** Number of consecutive ids mapped (at least 1). */
  count: number
}

/** A validated id map: at least one `u` and one `g` entry, no overlaps on either side. */
export type IdMap = readonly IdMapEntry[]
