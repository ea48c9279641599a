/**
 * Restore on the host side (qemu-server's `restore_external_archive` and pve-container's): VM
 * disks are copied by `qemu-img convert` into `<target>/<device>.raw` (sparse), `.qcow2`, or onto
 * a target disk (./restore-vm.ts); containers are unpacked into `<target>/rootfs`.
 */
import { setMaxListeners } from 'node:events'
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { ProgressEvent } from '../api/progress.ts'
import type { IdMap } from '../api/idmap.ts'
import { BackupError, toBackupError, withSpaceIn } from '../errors.ts'
import { writeFileDurably } from '../io/fs.ts'
import { unpackContainer } from './restore-ct.ts'
import { restoreVmDisks } from './restore-vm.ts'
import type { VmRestoreOptions } from './restore-vm.ts'

/**
 * Options of {@link restoreBackup}: those of a VM restore ({@link VmRestoreOptions}; the
 * disk options are refused for a container backup), with a target it may create.
 */
export interface RestoreOptions extends VmRestoreOptions {
  /** Target directory: created if missing, must be empty. */
  target: string
  /**
   * How far the restore got: per VM disk (`item`: the device, from qemu-img's progress), or
   * for a container the bytes of the archive (`item` `archive`; an uncompressed tar archive
   * against its size, a directory against a pre-walk's estimate).
   */
  onProgress?: ((ev: ProgressEvent) => void) | undefined
  /** A container: restore as the mapped root of this id map (restore-ct.ts). */
  idMap?: IdMap | undefined
  /** A container: restore an unprivileged backup's ids unshifted. */
  privileged?: boolean | undefined
}

/** What a restore wrote. */
export interface RestoreResult {
  type: 'qemu' | 'lxc'
  /** Names relative to the target directory, and the absolute paths of disk targets. */
  files: string[]
}

/** Create (or check) the target; true if it was created here. */
const prepareTarget = async (dir: string): Promise<boolean> => {
  const created = (await mkdir(dir, { recursive: true })) !== undefined
  if ((await readdir(dir)).length > 0) {
    throw new BackupError('USAGE', `restore target ${dir} is not empty`)
  }
  return created
}

/**
 * Restore a backup into a directory. A full target fails with one line naming it and the file
 * being written (`NO_SPACE`), and what was restored so far is removed.
 */
export const restoreBackup = async (opts: RestoreOptions): Promise<RestoreResult> => {
  const target = resolve(opts.target)
  const created = await withSpaceIn('restore target', target, () => prepareTarget(target))
  try {
    return await restoreInto(opts, target)
  } catch (e) {
    // Nothing half-restored stays behind: the target was empty (or new) when we started.
    if (created) {
      await rm(target, { recursive: true, force: true })
    } else {
      for (const name of await readdir(target).catch(() => [] as string[])) {
        await rm(join(target, name), { recursive: true, force: true })
      }
    }
    throw e
  }
}

const restoreInto = async (opts: RestoreOptions, target: string): Promise<RestoreResult> => {
  const { provider, volname, log, signal } = opts
  setMaxListeners(1024, signal)
  const mech = await provider.restoreGetMechanism(volname)
  const vmOnly =
    opts.devices !== undefined ||
    Object.keys(opts.diskTargets ?? {}).length > 0 ||
    (opts.format ?? 'raw') !== 'raw'
  if (mech.vmtype !== 'qemu' && vmOnly) {
    throw new BackupError('USAGE', `${volname} is a container backup: it has no disks to select`)
  }
  const config = await provider.archiveGetGuestConfig(volname)
  if (config === '')
    throw new BackupError('ARCHIVE_INVALID', 'the backup has an empty guest config')
  const firewall = await provider.archiveGetFirewallConfig(volname)
  const files: string[] = []
  /** Write `file` of the target through `fn`; a full target names it. */
  const into = <T>(file: string, fn: () => Promise<T>): Promise<T> =>
    withSpaceIn('restore target', target, fn, file)
  await into('guest.conf', () => writeFileDurably(join(target, 'guest.conf'), config))
  files.push('guest.conf')
  if (firewall !== undefined) {
    await into('firewall.conf', () => writeFileDurably(join(target, 'firewall.conf'), firewall))
    files.push('firewall.conf')
  }
  if (mech.vmtype === 'qemu') {
    try {
      files.push(...(await restoreVmDisks({ ...opts, target })))
    } finally {
      try {
        await provider.restoreVmCleanup(volname)
      } catch (e) {
        log.warn(`restore cleanup failed: ${toBackupError(e).message}`)
      }
    }
    return { type: 'qemu', files }
  }
  const rootfs = join(target, 'rootfs')
  await into('rootfs/', () => mkdir(rootfs, { mode: 0o755 }))
  try {
    const src = await provider.restoreContainerInit(volname, { signal })
    await into('rootfs/', async () => {
      const onProgress = opts.onProgress
      const progress =
        onProgress === undefined
          ? {}
          : {
              onProgress: (done: number, total: number) => {
                onProgress({ item: 'archive', done, total })
              },
            }
      await unpackContainer(src, rootfs, {
        volname,
        idMap: opts.idMap,
        privileged: opts.privileged,
        log,
        signal,
        ...progress,
      })
    })
    files.push('rootfs/')
  } finally {
    await provider.restoreContainerCleanup(volname)
  }
  return { type: 'lxc', files }
}
