/**
 * Choosing the base of an incremental VM backup. A dirty bitmap records the writes since the
 * last *successful* backup to this store, so the base must be the newest committed backup of
 * the guest, it must hold the device with the same size, and its chain must be intact.
 */
import { join } from 'node:path'
import { toBackupError } from '../../errors.ts'
import { validateChain } from '../../qemu/chain.ts'
import { listGuestBackups } from './scan.ts'
import type { StoreLayout } from './layout.ts'

/** The result of {@link findIncrementalBase}. */
export type IncrementalBase =
  | {
      kind: 'base'
      /** Volume name of the base backup. */
      volname: string
      /** Backing file name relative to the new backup dir. */
      relativePath: string
      /** Chain depth of the base (1 = the base is a full backup). */
      depth: number
    }
  | { kind: 'full'; reason: string }

/** Find the base for an incremental backup of `device`, or say why a full one is needed. */
export const findIncrementalBase = async (
  layout: StoreLayout,
  vmid: number,
  device: string,
  size: number,
): Promise<IncrementalBase> => {
  const backups = await listGuestBackups(layout, vmid, 'qemu')
  const newest = backups[0]
  if (newest === undefined) return { kind: 'full', reason: 'no previous backup' }
  if (newest.manifest === undefined) {
    return { kind: 'full', reason: `previous backup ${newest.ref.volname} is unreadable` }
  }
  const disk = newest.manifest.disks?.[device]
  if (disk === undefined) {
    return { kind: 'full', reason: `previous backup ${newest.ref.volname} has no ${device}` }
  }
  if (disk.size !== size) {
    return { kind: 'full', reason: `disk size changed (${disk.size} -> ${size} bytes)` }
  }
  try {
    const chain = await validateChain(join(newest.dir, disk.file), layout.guestDir(vmid))
    return {
      kind: 'base',
      volname: newest.ref.volname,
      relativePath: `../${newest.ref.dirName}/${disk.file}`,
      depth: chain.length,
    }
  } catch (e) {
    return {
      kind: 'full',
      reason: `previous backup failed verification: ${toBackupError(e).message}`,
    }
  }
}
