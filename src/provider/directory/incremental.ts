/**
 * Choosing the base of an incremental VM backup. A dirty bitmap records the writes since the
 * last *successful* backup to this store, so the base must be the newest committed backup of
 * the guest, it must hold the device with the same size, and its chain must be intact.
 */
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { toBackupError } from '../../errors.ts'
import { MAX_CHAIN_DEPTH, validateChain } from '../../qemu/chain.ts'
import { listGuestBackups } from './scan.ts'
import type { StoreLayout } from './layout.ts'

/** The result of {@link findIncrementalBase}. */
export type IncrementalBase =
  | {
      kind: 'base'
      /** Volume name of the base backup. */
      volname: string
      /** Bitmap generation the base recorded as its successor. */
      generation: string
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
  generation: string | undefined,
): Promise<IncrementalBase> => {
  const forced = await readForceFull(layout, vmid)
  if (forced !== undefined) return { kind: 'full', reason: `a full backup was forced: ${forced}` }
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
  if (generation === undefined) {
    return { kind: 'full', reason: 'no dirty bitmap tracks the disk (new, lost or VM restarted)' }
  }
  if (disk.nextBitmap !== generation) {
    return {
      kind: 'full',
      reason: `bitmap ${generation} does not continue ${newest.ref.volname} (${disk.nextBitmap ?? 'none recorded'})`,
    }
  }
  try {
    const chain = await validateChain(join(newest.dir, disk.file), layout.guestDir(vmid))
    // Restore validates chains up to MAX_CHAIN_DEPTH images: start a new chain before that.
    if (chain.length >= MAX_CHAIN_DEPTH) {
      return { kind: 'full', reason: `the chain reached ${MAX_CHAIN_DEPTH} backups` }
    }
    return {
      kind: 'base',
      volname: newest.ref.volname,
      generation,
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

/** Marker file forcing the next VM backup of a guest to be full (after a failed verification). */
const forceFullFile = (layout: StoreLayout, vmid: number): string =>
  join(layout.guestDir(vmid), 'force-full')

/** The reason a full backup is forced, if one is. */
export const readForceFull = async (
  layout: StoreLayout,
  vmid: number,
): Promise<string | undefined> => {
  try {
    return (await readFile(forceFullFile(layout, vmid), 'utf8')).trim() || 'requested'
  } catch {
    return undefined
  }
}

/** Force the next VM backup of the guest to be full. */
export const forceFull = async (
  layout: StoreLayout,
  vmid: number,
  reason: string,
): Promise<void> => {
  await writeFile(forceFullFile(layout, vmid), `${reason}\n`, { mode: 0o600 })
}

/** Clear {@link forceFull} (after a full backup was committed). */
export const clearForceFull = async (layout: StoreLayout, vmid: number): Promise<void> => {
  await rm(forceFullFile(layout, vmid), { force: true })
}
