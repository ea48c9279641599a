/**
 * On-disk layout of the directory store:
 * ```
 * <path>/guestbackup-store.json                   store options
 * <path>/<vmid>/<qemu|lxc>-<RFC3339 UTC>/          one committed backup
 *     manifest.json (written last), guest.conf, firewall.conf?, <device>.qcow2 | archive.tar |
 *     archive.sqfs, backup.log
 * <path>/<vmid>/<type>-<time>.notes | .protected  attributes (Proxmox's convention)
 * <path>/<vmid>/<type>-<time>.verify               the last verification (JSON)
 * <path>/<vmid>/.partial-<type>-<time>/           a backup in progress (never listed)
 * <path>/<vmid>/<type>-<time>.failed/backup.log   the log of a failed backup
 * <path>/<vmid>/bitmaps.json                      which backup each disk's bitmap continues
 * <path>/<vmid>/<type>-<time>.broken/             a backup `check --repair` set aside (never listed)
 * ```
 */
import type { GuestType } from '../../api/provider.ts'
import { BackupError } from '../../errors.ts'
import { Dir } from '../../io/beneath.ts'

/** `<type>-<YYYY-MM-DDTHH:MM:SSZ>`: the name of a backup directory. */
export const BACKUP_DIR_RE = /^(qemu|lxc)-(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)$/

/** The strict volume name pattern: `backup/<vmid>/<type>-<RFC3339>`. */
export const VOLNAME_RE =
  /^backup\/([1-9]\d{0,8})\/((qemu|lxc)-(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z))$/

/** Store id used in volume ids (`<storeid>:backup/…`) when none is configured. */
export const STORE_ID_DEFAULT = 'backup'

/** Manifest file name; its presence marks a complete backup. */
export const MANIFEST = 'manifest.json'

/** Parts of a volume name. */
export interface VolumeRef {
  vmid: number
  subtype: GuestType
  /** Backup time, Unix seconds. */
  ctime: number
  /** `<type>-<time>`: directory name inside the guest dir. */
  dirName: string
  /** `<vmid>/<type>-<time>`: the archive name. */
  archiveName: string
  /** `backup/<archiveName>`. */
  volname: string
}

/** RFC3339 UTC with second precision, e.g. `2026-11-26T04:00:00Z`. */
export const formatTime = (epochSeconds: number): string =>
  new Date(epochSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')

/** Inverse of {@link formatTime}; undefined if not a valid time. */
export const parseTime = (s: string): number | undefined => {
  const ms = Date.parse(s)
  if (Number.isNaN(ms) || formatTime(ms / 1000) !== s) return undefined
  return ms / 1000
}

/** Build the reference of a backup. */
export const volumeRef = (vmid: number, subtype: GuestType, ctime: number): VolumeRef => {
  const dirName = `${subtype}-${formatTime(ctime)}`
  const archiveName = `${vmid}/${dirName}`
  return { vmid, subtype, ctime, dirName, archiveName, volname: `backup/${archiveName}` }
}

/** Parse a volume name strictly; `USAGE` error for anything else (`..`, `/x`, shell chars …). */
export const parseVolname = (volname: string): VolumeRef => {
  const m = VOLNAME_RE.exec(volname)
  const ctime = m?.[4] === undefined ? undefined : parseTime(m[4])
  if (m === null || ctime === undefined) {
    throw new BackupError(
      'USAGE',
      `invalid volume name '${volname}' (expected backup/<vmid>/<qemu|lxc>-<YYYY-MM-DDTHH:MM:SSZ>)`,
    )
  }
  return volumeRef(Number(m[1]), m[3] as GuestType, ctime)
}

/** Name of a guest directory in the store root. */
export const GUEST_DIR_RE = /^[1-9]\d{0,8}$/

/** Journal of a removal in progress in a guest directory (see `merge.ts`). */
export const JOURNAL = '.removing.json'

/**
 * Names of one store. The root is the administrator's path; everything below it is reached
 * through {@link Dir} handles, one plain name at a time, never by joined paths.
 */
export class StoreLayout {
  readonly root: string
  constructor(root: string) {
    this.root = root
  }
  /** Open the store root. */
  openRoot(): Promise<Dir> {
    return Dir.open(this.root)
  }
  /** Open (or with `create`, create) the directory of a guest. */
  openGuest(root: Dir, vmid: number, create = false): Promise<Dir> {
    return root.openDir(String(vmid), create ? { create: 0o700 } : {})
  }
  partialName(ref: VolumeRef): string {
    return `.partial-${ref.dirName}`
  }
  failedName(ref: VolumeRef): string {
    return `${ref.dirName}.failed`
  }
  notesName(ref: VolumeRef): string {
    return `${ref.dirName}.notes`
  }
  protectedName(ref: VolumeRef): string {
    return `${ref.dirName}.protected`
  }
  /** The last verification of a backup (`verify.ts`). */
  verifyName(ref: VolumeRef): string {
    return `${ref.dirName}.verify`
  }
}
