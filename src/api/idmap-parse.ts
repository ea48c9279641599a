/**
 * Parsing and checking of id maps ({@link IdMap}) like pve-container's
 * `PVE::LXC::parse_id_maps` and `validate_id_maps` (src/PVE/LXC.pm), pure.
 */
import { BackupError } from '../errors.ts'
import type { IdMap, IdMapEntry } from './idmap.ts'

/** The map pve-container implies for `unprivileged: 1` without `lxc.idmap` lines. */
export const DEFAULT_UNPRIVILEGED_MAP: IdMap = [
  { type: 'u', ct: 0, host: 100000, count: 65536 },
  { type: 'g', ct: 0, host: 100000, count: 65536 },
]

/** Ids are 32-bit; `2^32 - 1` is `(uid_t)-1`, never a valid id (user_namespaces(7)). */
const ID_LIMIT = 2 ** 32

const ENTRY_RE = /^([ug])[:\s]+(\d+)[:\s]+(\d+)[:\s]+(\d+)\s*$/

/** Render an entry the way `lxc.idmap` writes it: `u 0 100000 65536`. */
export const formatIdMapEntry = (e: IdMapEntry): string => `${e.type} ${e.ct} ${e.host} ${e.count}`

/**
 * Parse one entry: `u:0:100000:65536` (the CLI form) or `u 0 100000 65536` (`lxc.idmap`).
 * @throws BackupError `USAGE` naming the entry when it is malformed or out of range.
 */
export const parseIdMapEntry = (text: string): IdMapEntry => {
  const m = ENTRY_RE.exec(text.trim())
  if (m === null) {
    throw new BackupError('USAGE', `invalid id map entry '${text}' (expected u|g:CT:HOST:COUNT)`)
  }
  const [, type, ct, host, count] = m
  const e = { type: type as 'u' | 'g', ct: Number(ct), host: Number(host), count: Number(count) }
  if (e.count < 1) throw new BackupError('USAGE', `invalid id map entry '${text}': count 0`)
  if (e.ct + e.count > ID_LIMIT - 1 || e.host + e.count > ID_LIMIT - 1) {
    throw new BackupError('USAGE', `invalid id map entry '${text}': ids beyond 2^32-2`)
  }
  return e
}

/**
 * Check a map like `validate_id_maps`: per type and side, sorted by start, no entry reaches
 * into the next; and, as LXC needs for a user namespace, both a `u` and a `g` entry.
 * @throws BackupError `USAGE` with pve-container's wording for an overlap.
 */
export const validateIdMap = (map: readonly IdMapEntry[]): IdMap => {
  for (const type of ['u', 'g'] as const) {
    const entries = map.filter((e) => e.type === type)
    if (entries.length === 0) {
      throw new BackupError('USAGE', `the id map has no '${type}' entry (both u and g are needed)`)
    }
    for (const side of ['ct', 'host'] as const) {
      const sorted = [...entries].sort((a, b) => a[side] - b[side])
      for (let i = 1; i < sorted.length; i++) {
        const prev = sorted[i - 1]
        const cur = sorted[i]
        if (prev === undefined || cur === undefined) continue
        if (prev[side] + prev.count > cur[side]) {
          const name = side === 'ct' ? 'container' : 'host'
          throw new BackupError(
            'USAGE',
            `invalid map entry '${formatIdMapEntry(cur)}': ${name} ${type}id ${cur[side]} ` +
              `is also mapped by entry '${formatIdMapEntry(prev)}'`,
          )
        }
      }
    }
  }
  return map
}

/** Parse and validate the repeated `--idmap` values. */
export const parseIdMapArgs = (values: readonly string[]): IdMap =>
  validateIdMap(values.map(parseIdMapEntry))

/**
 * The id map of a Proxmox container config (`pct.conf` text), exactly as `parse_id_maps`:
 * the `lxc.idmap` lines of the current configuration (before the first `[snapshot]` section);
 * without any, `unprivileged: 1` implies {@link DEFAULT_UNPRIVILEGED_MAP}; else none
 * (`undefined`: a privileged container).
 */
export const idMapOfConfig = (config: string): IdMap | undefined => {
  const entries: IdMapEntry[] = []
  let unprivileged = false
  for (const raw of config.split('\n')) {
    const line = raw.trim()
    if (line.startsWith('[')) break
    const m = /^([a-z0-9._-]+)\s*[:=]\s*(.*)$/i.exec(line)
    if (m === null) continue
    const [, key, value = ''] = m
    if (key === 'lxc.idmap') entries.push(parseIdMapEntry(value))
    else if (key === 'unprivileged') unprivileged = /^(1|yes|on|true)$/i.test(value.trim())
  }
  if (entries.length > 0) return validateIdMap(entries)
  return unprivileged ? DEFAULT_UNPRIVILEGED_MAP : undefined
}

/** The host id that container id `id` of `type` maps to, or `undefined` outside the map. */
export const mapToHost = (map: IdMap, type: 'u' | 'g', id: number): number | undefined => {
  for (const e of map) {
    if (e.type === type && id >= e.ct && id < e.ct + e.count) return e.host + (id - e.ct)
  }
  return undefined
}

/** The container id that host id `id` of `type` appears as, or `undefined` outside the map. */
export const mapToCt = (map: IdMap, type: 'u' | 'g', id: number): number | undefined => {
  for (const e of map) {
    if (e.type === type && id >= e.host && id < e.host + e.count) return e.ct + (id - e.host)
  }
  return undefined
}

/** The host uid of container root: Perl `backup-user-id` (`parse_id_maps`' `$root_uid`). */
export const rootUid = (map: IdMap): number => mapToHost(map, 'u', 0) ?? 0

/** The host gid of container root (`$root_gid`). */
export const rootGid = (map: IdMap): number => mapToHost(map, 'g', 0) ?? 0

/** The text of `/proc/PID/uid_map` (`type` `u`) or `gid_map` (`g`): `CT HOST COUNT` lines. */
export const procIdMap = (map: IdMap, type: 'u' | 'g'): string =>
  map
    .filter((e) => e.type === type)
    .map((e) => `${e.ct} ${e.host} ${e.count}\n`)
    .join('')
