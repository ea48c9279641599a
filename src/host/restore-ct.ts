/**
 * Unpacking a container's archive into `<target>/rootfs`, as its mapped root when the restore
 * is unprivileged: pve-container's `restore_archive` (src/PVE/LXC/Create.pm) runs tar through
 * `userns_command` for an unprivileged container, so nothing is created owned outside the map.
 */
import { chown } from 'node:fs/promises'
import type { IdMap } from '../api/idmap.ts'
import { formatIdMapEntry, rootGid, rootUid } from '../api/idmap-parse.ts'
import type { RestoreContainer } from '../api/provider.ts'
import { extractDirectory, extractSquashfs, extractTarArchive } from '../archive/index.ts'
import { applyPosixAcls } from '../archive/squashfs-acls.ts'
import { BackupError } from '../errors.ts'
import { UserNamespace } from '../io/userns.ts'
import type { TaskLog } from './task-log.ts'

/** How a container backup is restored. */
export interface CtRestoreOptions {
  volname: string
  /** `--idmap`: restore as the mapped root of this map. */
  idMap?: IdMap | undefined
  /** `--privileged`: restore an unprivileged backup's ids unshifted, as host root. */
  privileged?: boolean | undefined
  log: TaskLog
  signal: AbortSignal
  onProgress?: ((done: number, total: number) => void) | undefined
}

const cli = (map: IdMap): string =>
  map.map((e) => `--idmap ${formatIdMapEntry(e).replaceAll(' ', ':')}`).join(' ')

/**
 * The map to restore under: `--idmap`, or none. A backup recorded unprivileged is refused
 * without either `--idmap` or `--privileged` (its owners are the container's view, so unshifted
 * they would be host ids); a privileged one restored with a map gets Proxmox's warning.
 */
export const restoreMap = (src: RestoreContainer, o: CtRestoreOptions): IdMap | undefined => {
  if (o.idMap !== undefined && o.privileged === true) {
    throw new BackupError('USAGE', 'give --idmap or --privileged, not both')
  }
  if (src.idMap !== undefined && o.idMap === undefined && o.privileged !== true) {
    throw new BackupError(
      'USAGE',
      `${o.volname} is a backup of an unprivileged container: give ${cli(src.idMap)} to restore ` +
        'it as its mapped root, or --privileged to restore the ids unshifted',
    )
  }
  if (src.idMap === undefined && o.idMap !== undefined) {
    // pve-container Create.pm: "... can only be restored as unprivileged which might not work
    // in all cases" (a privileged tree may hold files of ids the map does not reach).
    o.log.warn(
      `${o.volname} is a backup of a privileged container, restored as unprivileged with the ` +
        'given id map, which might not work in all cases',
    )
  }
  return o.idMap
}

/**
 * Set the POSIX ACLs a squashfs backup recorded beside its image (`posixAcls`) on the unpacked
 * tree, in `namespace` when the tree was unpacked there (the record holds the ids the archive
 * holds), as tar x sets them from the archive.
 */
const applyAcls = async (
  src: RestoreContainer,
  rootfs: string,
  o: CtRestoreOptions,
  namespace: UserNamespace | undefined,
): Promise<void> => {
  if ('tarPath' in src || src.posixAcls === undefined) return
  const r = await applyPosixAcls({
    record: src.posixAcls,
    target: rootfs,
    namespace,
    signal: o.signal,
  })
  o.log.info(`POSIX ACLs of ${r.applied} file(s) restored`)
  for (const w of r.warnings) o.log.warn(w)
}

/** Unpack `src` into the existing empty `rootfs` (see the module comment). */
export const unpackContainer = async (
  src: RestoreContainer,
  rootfs: string,
  o: CtRestoreOptions,
): Promise<void> => {
  const map = restoreMap(src, o)
  const { signal } = o
  const progress = o.onProgress === undefined ? {} : { onProgress: o.onProgress }
  if (map !== undefined) {
    // The root directory belongs to the container's root; tar x as that root sets the rest.
    await chown(rootfs, rootUid(map), rootGid(map))
    await using namespace = await UserNamespace.open(map, signal)
    o.log.info(`restoring as the mapped root, id map ${map.map(formatIdMapEntry).join(', ')}`)
    if ('tarPath' in src) {
      await extractTarArchive({
        archive: src.tarPath,
        target: rootfs,
        signal,
        namespace,
        ...progress,
      })
      return
    }
    // unsquashfs in the namespace could not read the root-only image: copy the mount with a
    // tar pipe instead, root reading, the mapped root writing (as pve-container's directory
    // mechanism does).
    const r = await extractDirectory({
      source: src.archiveDirectory,
      target: rootfs,
      signal,
      namespace,
      ...progress,
    })
    for (const w of r.warnings) o.log.warn(w)
    await applyAcls(src, rootfs, o, namespace)
    return
  }
  if ('tarPath' in src) {
    await extractTarArchive({ archive: src.tarPath, target: rootfs, signal, ...progress })
  } else if (src.squashfsImage !== undefined) {
    const r = await extractSquashfs({
      image: src.squashfsImage,
      mount: src.archiveDirectory,
      target: rootfs,
      signal,
      ...progress,
    })
    for (const w of r.warnings) o.log.warn(w)
  } else {
    await extractDirectory({ source: src.archiveDirectory, target: rootfs, signal, ...progress })
  }
  await applyAcls(src, rootfs, o, undefined)
}
