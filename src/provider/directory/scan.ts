/** Reading what the store holds: committed backups of a guest, newest first. */
import { readdir } from 'node:fs/promises'
import type { GuestType } from '../../api/provider.ts'
import { BACKUP_DIR_RE, MANIFEST, parseTime, volumeRef } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'
import { pathExists } from './fsutil.ts'

/** One committed backup found on disk. */
export interface FoundBackup {
  ref: VolumeRef
  dir: string
  /** Undefined when the manifest is unreadable (the backup is then listed but not trusted). */
  manifest: Manifest | undefined
}

/** Guest ids that have a directory in the store, ascending. */
export const listGuestIds = async (layout: StoreLayout): Promise<number[]> => {
  let names: string[]
  try {
    names = await readdir(layout.root)
  } catch {
    return []
  }
  return names
    .filter((n) => /^[1-9]\d{0,8}$/.test(n))
    .map(Number)
    .sort((a, b) => a - b)
}

/** Committed backups (a manifest exists) of one guest, newest first. */
export const listGuestBackups = async (
  layout: StoreLayout,
  vmid: number,
  subtype?: GuestType,
): Promise<FoundBackup[]> => {
  let names: string[]
  try {
    names = await readdir(layout.guestDir(vmid))
  } catch {
    return []
  }
  const out: FoundBackup[] = []
  for (const name of names) {
    const m = BACKUP_DIR_RE.exec(name)
    if (m === null) continue
    const type = m[1] as GuestType
    const ctime = parseTime(m[2] ?? '')
    if (ctime === undefined || (subtype !== undefined && type !== subtype)) continue
    const ref = volumeRef(vmid, type, ctime)
    const dir = layout.backupDir(ref)
    if (!(await pathExists(`${dir}/${MANIFEST}`))) continue
    let manifest: Manifest | undefined
    try {
      manifest = await readManifest(dir)
    } catch {
      manifest = undefined
    }
    out.push({ ref, dir, manifest })
  }
  return out.sort((a, b) => b.ref.ctime - a.ref.ctime)
}
