/**
 * The retention of `prune` as pvesm spells it (pve-storage `src/PVE/CLI/pvesm.pm`,
 * `prune-backups`): one flag per option of the `prune-backups` schema (`src/PVE/Storage/Plugin.pm`
 * `$prune_backups_format`: `--keep-all` a boolean, the counts integers >= 0), or the property
 * string with `--keep`. Both at once is a usage error.
 */
import { BackupError } from '../errors.ts'
import type { KeepOptions } from '../storage/prune-options.ts'
import {
  KEEP_COUNT_KEYS,
  parsePruneBackups,
  validatePruneBackups,
} from '../storage/prune-options.ts'

/** The prune flags as commander parses them (camelCase). */
export interface KeepFlags {
  keep?: string | undefined
  keepAll?: boolean | undefined
  keepLast?: number | undefined
  keepHourly?: number | undefined
  keepDaily?: number | undefined
  keepWeekly?: number | undefined
  keepMonthly?: number | undefined
  keepYearly?: number | undefined
}

const CAMEL = {
  'keep-last': 'keepLast',
  'keep-hourly': 'keepHourly',
  'keep-daily': 'keepDaily',
  'keep-weekly': 'keepWeekly',
  'keep-monthly': 'keepMonthly',
  'keep-yearly': 'keepYearly',
} as const

/**
 * The retention the flags give, or undefined when none is given (the store's then applies).
 * `--keep` takes the property string as `prune-backups` does, and also with spaces after its
 * commas (`keep-daily=7, keep-last=3`, as vzdump's task log prints a retention), which
 * pve-common's `parse_property_string` would take as part of the key.
 *
 * @throws BackupError `USAGE` for `--keep` with a flag; `CONFIG_INVALID` for an invalid retention.
 */
export const keepFromFlags = (o: KeepFlags): KeepOptions | undefined => {
  const flags: KeepOptions = {}
  if (o.keepAll !== undefined) flags['keep-all'] = o.keepAll
  for (const key of KEEP_COUNT_KEYS) {
    const n = o[CAMEL[key]]
    if (n !== undefined) flags[key] = n
  }
  const given = Object.keys(flags)
  if (o.keep !== undefined) {
    if (given.length > 0) {
      throw new BackupError(
        'USAGE',
        `give the retention as --keep SPEC or as --${given.join(', --')}, not both`,
      )
    }
    return parsePruneBackups(o.keep.trim().replace(/,\s+/g, ','))
  }
  return given.length === 0 ? undefined : validatePruneBackups(flags)
}
