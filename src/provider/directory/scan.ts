/** Reading what the store holds: committed backups of a guest, newest first. */
import type { GuestType } from '../../api/provider.ts'
import type { Dir } from '../../io/beneath.ts'
import { BACKUP_DIR_RE, GUEST_DIR_RE, MANIFEST, parseTime, volumeRef } from './layout.ts'
import { isBackupError } from '../../errors.ts'
import type { VolumeRef } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'

/** One committed backup found on disk. */
export interface FoundBackup {
  ref: VolumeRef
  /** Undefined when the manifest is unreadable (the backup is then listed but not trusted). */
  manifest: Manifest | undefined
}

/**
 * Guest ids that have a directory in the store, ascending. Only real directories count: a
 * symbolic link named like a guest is not the store's.
 */
export const listGuestIds = async (root: Dir): Promise<number[]> =>
  (await root.list())
    .filter((e) => e.isDirectory() && GUEST_DIR_RE.test(e.name))
    .map((e) => Number(e.name))
    .sort((a, b) => a - b)

/**
 * Committed backups (a manifest exists) of one guest, newest first. Entries that are not real
 * directories (links, files, FIFOs) are not backups and are skipped.
 */
export const listGuestBackups = async (
  guest: Dir,
  vmid: number,
  subtype?: GuestType,
): Promise<FoundBackup[]> => {
  const out: FoundBackup[] = []
  for (const e of await guest.list()) {
    const ref = e.isDirectory() ? refOf(vmid, e.name, subtype) : undefined
    if (ref === undefined) continue
    const found = await readBackup(guest, ref)
    if (found !== undefined) out.push(found)
  }
  return out.sort((a, b) => b.ref.ctime - a.ref.ctime)
}

/** The backup a directory name `<type>-<time>` stands for (of `subtype`, if given). */
export const refOf = (vmid: number, name: string, subtype?: GuestType): VolumeRef | undefined => {
  const m = BACKUP_DIR_RE.exec(name)
  const ctime = parseTime(m?.[2] ?? '')
  const type = m?.[1] as GuestType | undefined
  if (type === undefined || ctime === undefined) return undefined
  return subtype === undefined || type === subtype ? volumeRef(vmid, type, ctime) : undefined
}

/** The directory of `ref` if it is a committed backup's (its manifest exists). */
const openCommitted = async (guest: Dir, ref: VolumeRef): Promise<Dir | undefined> => {
  let dir: Dir | undefined
  try {
    dir = await guest.tryOpenDir(ref.dirName)
  } catch {
    return undefined
  }
  if (dir === undefined) return undefined
  try {
    if ((await dir.lstat(MANIFEST)) !== undefined) return dir
  } catch (e) {
    await dir.close()
    throw e
  }
  await dir.close()
  return undefined
}

/**
 * Whether `ref` is committed (its manifest exists): exactly when {@link readBackup} finds it,
 * without reading and checking the manifest.
 */
export const isCommitted = async (guest: Dir, ref: VolumeRef): Promise<boolean> => {
  const dir = await openCommitted(guest, ref)
  await dir?.close()
  return dir !== undefined
}

/** The backup `ref` if it is committed (its manifest exists), with its manifest if valid. */
export const readBackup = async (guest: Dir, ref: VolumeRef): Promise<FoundBackup | undefined> => {
  const dir = await openCommitted(guest, ref)
  if (dir === undefined) return undefined
  await using _dir = dir
  let manifest: Manifest | undefined
  try {
    manifest = await readManifest(dir, ref)
  } catch {
    manifest = undefined
  }
  return { ref, manifest }
}

/** Every backup a backup builds on: its own parent and each disk's (older backups, same guest). */
export const parentsOf = (b: FoundBackup): string[] => [
  ...new Set(
    [b.manifest?.parent, ...Object.values(b.manifest?.disks ?? {}).map((d) => d.parent)].filter(
      (p): p is string => p !== undefined,
    ),
  ),
]

/**
 * The backups of one guest that cannot be restored as listed, each with the reason: its
 * manifest is unreadable, or a backup it builds on (`parents`, default {@link parentsOf}) is not
 * among `backups` (deleted by hand) or is itself unusable. Manifest-level only, cheap enough for
 * `list`; `check` also validates the images' chains.
 */
export const unusableBackups = (
  backups: readonly FoundBackup[],
  parents: (b: FoundBackup) => readonly string[] = parentsOf,
): Map<string, string> => {
  const names = new Set(backups.map((b) => b.ref.volname))
  const out = new Map<string, string>()
  for (const b of [...backups].sort((x, y) => x.ref.ctime - y.ref.ctime)) {
    if (b.manifest === undefined) {
      out.set(b.ref.volname, 'its manifest is unreadable')
      continue
    }
    const missing = parents(b).find((p) => !names.has(p) || out.has(p))
    if (missing === undefined) continue
    const why = names.has(missing) ? 'is unusable' : 'no longer exists'
    out.set(b.ref.volname, `it builds on ${missing}, which ${why}`)
  }
  return out
}

/** A failed backup run: its `<type>-<time>.failed/backup.log`. */
export interface FailedRun {
  ref: VolumeRef
  /** The error the run ended with, from its task log (undefined if unreadable). */
  error: string | undefined
}

const FAILED_RE = /^((?:qemu|lxc)-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)\.failed$/

/** Task logs are small; a larger one is only searched for its error up to this size. */
const LOG_MAX_BYTES = 8 * 1024 * 1024

/** Failed runs of one guest (real directories only), newest first. */
export const listFailedRuns = async (
  guest: Dir,
  vmid: number,
  subtype?: GuestType,
): Promise<FailedRun[]> => {
  const out: FailedRun[] = []
  for (const e of await guest.list()) {
    const name = FAILED_RE.exec(e.name)?.[1]
    const ref = e.isDirectory() && name !== undefined ? refOf(vmid, name, subtype) : undefined
    if (ref === undefined) continue
    let error: string | undefined
    try {
      await using dir = await guest.openDir(e.name)
      const log = await dir.tryReadFile('backup.log', LOG_MAX_BYTES)
      const lines = (log ?? '').split('\n').filter((l) => l.includes(' ERROR: '))
      error = lines.at(-1)?.replace(/^\S+ ERROR: (backup failed: )?/, '')
    } catch (err) {
      if (!isBackupError(err)) throw err
    }
    out.push({ ref, error })
  }
  return out.sort((a, b) => b.ref.ctime - a.ref.ctime)
}
