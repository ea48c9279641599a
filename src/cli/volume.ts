/**
 * The volume argument of `restore`, `verify`, `show-config`, `notes`, `protect` and `remove`:
 * `backup/<vmid>/<type>-<time>`, optionally prefixed `<storeid>:`, or the newest backup of a
 * guest as `backup/<vmid>/latest` or `latest` with `--vmid`.
 */
import { BackupError } from '../errors.ts'
import type { Logger } from '../log.ts'
import type { DirectoryStorage } from '../provider/directory/storage.ts'

/** How a command treats `latest`. */
export interface VolumeOptions {
  /** `--vmid`: the guest `latest` names. */
  vmid?: number | undefined
  /** The command refuses `latest` (remove: a name that moves must not pick what is deleted). */
  refuseLatest?: string
}

const LATEST_RE = /^(?:backup\/([1-9]\d{0,8})\/)?latest$/

/** True if `volume` names the newest backup of a guest rather than one backup. */
export const isLatest = (volume: string): boolean =>
  LATEST_RE.test(volume.slice(volume.indexOf(':') + 1))

/**
 * The volume name (`backup/…`, no store id) that `volume` stands for in `storage`. `latest` is
 * the newest backup of the guest, whatever its type, as `list` shows it first.
 *
 * @throws BackupError `USAGE` for `latest` without a guest, a `--vmid` that contradicts the
 *   volume, or `--vmid` beside a volume that names its backup; `NOT_FOUND` when the guest has
 *   no backup.
 */
export const resolveVolume = async (
  storage: DirectoryStorage,
  volume: string,
  o: VolumeOptions,
  log?: Logger,
): Promise<string> => {
  const volname = stripStoreId(volume, storage.storeId)
  const m = LATEST_RE.exec(volname)
  if (m === null) {
    if (o.vmid !== undefined) {
      throw new BackupError(
        'USAGE',
        `--vmid selects the guest of 'latest'; ${volume} names its backup`,
      )
    }
    return volname
  }
  if (o.refuseLatest !== undefined) throw new BackupError('USAGE', o.refuseLatest)
  const named = m[1] === undefined ? undefined : Number(m[1])
  if (named !== undefined && o.vmid !== undefined && named !== o.vmid) {
    throw new BackupError(
      'USAGE',
      `${volume} is a backup of guest ${named}, not of --vmid ${o.vmid}`,
    )
  }
  const vmid = named ?? o.vmid
  if (vmid === undefined) {
    throw new BackupError('USAGE', "'latest' needs its guest: backup/<vmid>/latest, or --vmid N")
  }
  let newest: { volid: string; ctime: number } | undefined
  for (const v of await storage.listVolumes({ vmid })) {
    if (newest === undefined || v.ctime > newest.ctime) newest = v
  }
  if (newest === undefined) {
    throw new BackupError('NOT_FOUND', `guest ${vmid} has no backup in store '${storage.storeId}'`)
  }
  const resolved = newest.volid.slice(newest.volid.indexOf(':') + 1)
  log?.info(`latest backup of guest ${vmid}: ${resolved}`)
  return resolved
}

/**
 * Accept `backup/…` as well as `<storeid>:backup/…`; a volume id naming another store is
 * refused (it is not in this one, whatever its name says).
 */
export const stripStoreId = (volume: string, storeId: string): string => {
  const i = volume.indexOf(':backup/')
  if (i <= 0 || volume.slice(0, i).includes('/')) return volume
  const prefix = volume.slice(0, i)
  if (prefix !== storeId) {
    throw new BackupError(
      'USAGE',
      `volume ${volume} belongs to store '${prefix}', not to '${storeId}'`,
    )
  }
  return volume.slice(i + 1)
}
