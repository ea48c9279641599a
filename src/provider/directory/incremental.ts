/**
 * Choosing the base of an incremental VM backup. A dirty bitmap records the writes since the
 * last *successful* backup to this store, so the base must be the newest committed backup of
 * the guest, it must hold the device with the same size, and its chain must be intact. Which
 * backup the bitmap continues is told by the host's bitmap generation where the host gives one
 * (guestbackup's own host side), else by the provider's bitmap record (`bitmap-record.ts`;
 * Proxmox VE names no bitmap generation).
 */
import { toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { MAX_CHAIN_DEPTH, openChain } from '../../qemu/chain.ts'
import { recordMismatch } from './bitmap-record.ts'
import type { BitmapRecordState } from './bitmap-record.ts'
import { BACKUP_DIR_RE } from './layout.ts'
import type { VolumeRef } from './layout.ts'
import { listGuestBackups } from './scan.ts'

/** The result of {@link findIncrementalBase}. */
export type IncrementalBase =
  | {
      kind: 'base'
      /** Volume name of the base backup. */
      volname: string
      /** Directory name of the base backup in the guest directory. */
      dirName: string
      /** Image file of the device in the base backup. */
      file: string
      /**
       * Bitmap generation the base recorded as its successor; undefined when the host gives no
       * generations and the bitmap record vouched for the base instead.
       */
      generation: string | undefined
      /** Backing file name relative to the new backup dir. */
      relativePath: string
      /** Chain depth of the base (1 = the base is a full backup). */
      depth: number
    }
  | { kind: 'full'; reason: string }

/**
 * The base `ref` for `device`: its names follow from the backup and the device (the manifest
 * names a disk's file `<device>.qcow2`, manifest.ts).
 */
export const incrementalBase = (
  ref: VolumeRef,
  device: string,
  generation: string | undefined,
  depth: number,
): Extract<IncrementalBase, { kind: 'base' }> => {
  const file = `${device}.qcow2`
  return {
    kind: 'base',
    volname: ref.volname,
    dirName: ref.dirName,
    file,
    generation,
    relativePath: `../${ref.dirName}/${file}`,
    depth,
  }
}

/**
 * Find the base for an incremental backup of `device`, or say why a full one is needed.
 * `generation` is the host's id of the bitmap tracking the device, if it gives one; when it
 * gives none and the newest backup recorded none either, `record` decides.
 */
export const findIncrementalBase = async (
  guest: Dir,
  vmid: number,
  device: string,
  size: number,
  generation: string | undefined,
  record: BitmapRecordState,
): Promise<IncrementalBase> => {
  const forced = await readForceFull(guest)
  if (forced !== undefined) return { kind: 'full', reason: `a full backup was forced: ${forced}` }
  const backups = await listGuestBackups(guest, vmid, 'qemu')
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
  if (disk.digest === undefined) {
    return { kind: 'full', reason: `previous backup ${newest.ref.volname} records no digests` }
  }
  if (generation !== undefined || disk.nextBitmap !== undefined) {
    // The host names its bitmaps: the generation must be the one the newest backup started.
    if (generation === undefined) {
      return {
        kind: 'full',
        reason: 'no dirty bitmap tracks the disk (new, lost or VM restarted)',
      }
    }
    if (disk.nextBitmap !== generation) {
      return {
        kind: 'full',
        reason: `bitmap ${generation} does not continue ${newest.ref.volname} (${disk.nextBitmap ?? 'none recorded'})`,
      }
    }
  } else {
    const why = recordMismatch(record, device, newest.ref.volname, size)
    if (why !== undefined) return { kind: 'full', reason: why }
  }
  try {
    await using chain = await openChain(guest, newest.ref.dirName, disk.file, {
      dirName: BACKUP_DIR_RE,
    })
    // Restore validates chains up to MAX_CHAIN_DEPTH images: start a new chain before that.
    if (chain.links.length >= MAX_CHAIN_DEPTH) {
      return { kind: 'full', reason: `the chain reached ${MAX_CHAIN_DEPTH} backups` }
    }
    return incrementalBase(newest.ref, device, generation, chain.links.length)
  } catch (e) {
    return {
      kind: 'full',
      reason: `previous backup failed verification: ${toBackupError(e).message}`,
    }
  }
}

/** Marker file forcing the next VM backup of a guest to be full (after a failed verification). */
const FORCE_FULL = 'force-full'

/** The reason a full backup is forced, if one is. Anything but a small regular file forces. */
export const readForceFull = async (guest: Dir): Promise<string | undefined> => {
  try {
    const text = await guest.tryReadFile(FORCE_FULL, 64 * 1024)
    return text === undefined ? undefined : text.trim() || 'requested'
  } catch (e) {
    return `unusable ${FORCE_FULL} marker: ${toBackupError(e).message}`
  }
}

/** Force the next VM backup of the guest to be full. */
export const forceFull = async (guest: Dir, reason: string): Promise<void> => {
  await guest.writeFileAtomic(FORCE_FULL, `${reason}\n`)
}

/** Clear {@link forceFull} (after a full backup was committed). */
export const clearForceFull = async (guest: Dir): Promise<void> => {
  await guest.removeTree(FORCE_FULL)
}
