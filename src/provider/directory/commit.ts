/**
 * Writing and publishing a backup of the directory provider: its configs, its manifest (with
 * the digests of its files) and the rename that commits it. Every write names the store when
 * the file system is full.
 */
import type { BackupInfo } from '../../api/provider.ts'
import { withSpaceIn } from '../../errors.ts'
import { fileDigests } from './digests.ts'
import { fileSizes } from './fsutil.ts'
import { guestDir } from './in-place.ts'
import { clearForceFull } from './incremental.ts'
import { MANIFEST } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { MANIFEST_VERSION, writeManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'
import type { GuestState } from './provider.ts'

/** A manifest before its files, digests and commit time are known. */
export type ManifestDraft = Omit<Manifest, 'files' | 'completed' | 'digests'>

/** Run `fn`, writing `file` of the backup of `g`: a full file system names the store. */
export const inStore = <T>(
  layout: StoreLayout,
  g: GuestState,
  file: string | undefined,
  fn: () => Promise<T>,
): Promise<T> => {
  const where = `${g.ref.vmid}${file === undefined ? '' : `/${g.ref.dirName}/${file}`}`
  return withSpaceIn('store', layout.root, fn, where)
}

/** Write the guest's config (and firewall config) into the backup. */
export const writeConfigs = async (
  layout: StoreLayout,
  g: GuestState,
  guestConfig: string,
  info: BackupInfo,
): Promise<void> => {
  await inStore(layout, g, 'guest.conf', () => g.partial.writeFileAtomic('guest.conf', guestConfig))
  const firewall = info.firewallConfig
  if (firewall !== undefined) {
    await inStore(layout, g, 'firewall.conf', () =>
      g.partial.writeFileAtomic('firewall.conf', firewall),
    )
  }
}

/** The manifest fields every backup of `g` has, with `extra`. */
export const baseManifest = (
  g: GuestState,
  info: BackupInfo,
  extra: Partial<ManifestDraft>,
): ManifestDraft => ({
  version: MANIFEST_VERSION,
  vmid: g.ref.vmid,
  type: g.ref.subtype,
  ctime: g.ref.ctime,
  archiveName: g.ref.archiveName,
  firewall: info.firewallConfig !== undefined,
  warnings: [],
  ...extra,
})

/**
 * Publish the backup once all its data is written and synced: `manifest.json` with the file
 * sizes and digests, fsync of the dir, rename of the partial dir to its final name, fsync of
 * the guest dir. A failure before the rename leaves only the partial dir (never listed); after
 * it, the backup is committed and `backupCleanup(false)` removes it. Written in place, the
 * manifest (atomic and fsynced) is the commit, and the guest dir is not touched. `known`:
 * digests of files hashed as they were written (the container archive), not read again.
 */
export const commitBackup = async (
  layout: StoreLayout,
  g: GuestState,
  manifest: ManifestDraft,
  known: Readonly<Record<string, string>> = {},
): Promise<void> => {
  const files = await fileSizes(g.partial)
  // Only the benchmark's baseline writes disks without digests (backup-data.ts).
  const legacy = Object.values(manifest.disks ?? {}).some((d) => d.digest === undefined)
  const completed = new Date().toISOString()
  await inStore(layout, g, MANIFEST, async () => {
    await writeManifest(
      g.partial,
      legacy
        ? { ...manifest, version: 1, files, completed }
        : {
            ...manifest,
            files,
            digests: await fileDigests(g.partial, Object.keys(files), undefined, known),
            completed,
          },
    )
    await g.partial.sync()
  })
  if (g.inPlaceUid !== undefined) {
    g.committed = true
    return
  }
  const guest = guestDir(g)
  await guest.rename(layout.partialName(g.ref), g.ref.dirName)
  g.committed = true
  await guest.sync()
  if (g.ref.subtype === 'qemu' && manifest.parent === undefined) await clearForceFull(guest)
}
