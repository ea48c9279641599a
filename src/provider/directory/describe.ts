/** How a backup of the directory store is listed: its size, attributes and last verification. */
import type { BackupVolume } from '../../api/storage.ts'
import { isBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { allocatedBytes } from './fsutil.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import type { FoundBackup } from './scan.ts'
import { readVerification } from './verify-state.ts'

/** Notes are a few lines of text (Proxmox keeps them in a `.notes` file too). */
export const NOTES_MAX_BYTES = 64 * 1024

/** Bytes the backup `ref` occupies on disk. */
export const usedBytes = async (guest: Dir, ref: VolumeRef): Promise<number> => {
  await using dir = await guest.openDir(ref.dirName)
  return await allocatedBytes(dir)
}

/** Whether `ref` is protected (its `.protected` attribute exists). */
export const isProtected = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
): Promise<boolean> => (await guest.lstat(layout.protectedName(ref))) !== undefined

/** The notes of `ref`, if any. */
export const readNotes = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
): Promise<string | undefined> => {
  try {
    return await guest.tryReadFile(layout.notesName(ref), NOTES_MAX_BYTES)
  } catch (e) {
    // A notes entry that is a link or a special file is not the store's: no notes.
    if (isBackupError(e, 'UNSAFE_PATH')) return undefined
    throw e
  }
}

/** The listing of the backup `b`: `volid` makes volume ids, `parent` and `broken` as found. */
export const describeBackup = async (
  layout: StoreLayout,
  guest: Dir,
  b: FoundBackup,
  o: { volid: (volname: string) => string; parent: string | undefined; broken: string | undefined },
): Promise<BackupVolume> => {
  const notes = (await readNotes(layout, guest, b.ref))?.split('\n')[0]
  const verification = await readVerification(layout, guest, b.ref)
  return {
    volid: o.volid(b.ref.volname),
    vmid: b.ref.vmid,
    subtype: b.ref.subtype,
    ctime: b.ref.ctime,
    size: await usedBytes(guest, b.ref),
    format: 'directory',
    ...(o.parent === undefined ? {} : { parent: o.volid(o.parent) }),
    protected: await isProtected(layout, guest, b.ref),
    ...(notes === undefined || notes === '' ? {} : { notes }),
    ...(verification === undefined ? {} : { verification }),
    ...(o.broken === undefined ? {} : { broken: o.broken }),
    ...(b.manifest?.container?.idmap === undefined ? {} : { idmap: b.manifest.container.idmap }),
    content: 'backup',
  }
}
