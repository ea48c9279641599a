/**
 * The provider's own record of which backup each VM device's dirty bitmap belongs to, for hosts
 * that do not identify their bitmaps (Proxmox VE). QEMU's backup-access bitmap
 * (`snapshot-access:<storeid>`, in memory only) is committed when `backup_vm` returns, before
 * `backup_cleanup` (pve-qemu `0044-PVE-backup-implement-backup-access-setup-and-teardow.patch`,
 * `backup-access-teardown` with `success`; pve-manager `PVE/VZDump.pm`). If the task fails
 * after that and the backup is removed, the bitmap only holds the writes since the removed
 * backup, and an incremental on the one before would silently miss writes. So the record names
 * the backup the bitmap state continues, and an incremental is built only on exactly that
 * backup.
 *
 * The file lives in the guest directory, which is untrusted ground: it is read with a size bound
 * through {@link Dir} (no link followed, no special file opened) and validated strictly; anything
 * else counts as no record, which means a full backup.
 */
import * as z from 'zod'
import { DEVICE_NAME_RE } from '../../api/names.ts'
import { toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { VOLNAME_RE } from './layout.ts'

/** Name of the record in the guest directory. */
export const BITMAP_RECORD = 'bitmaps.json'

/** The record is a few hundred bytes; a larger file is not ours. */
const RECORD_MAX_BYTES = 64 * 1024

const Volname = z.string().regex(VOLNAME_RE)

const RecordSchema = z.strictObject({
  version: z.literal(1),
  /** Per device: the backup whose instant the bitmap started at, and the disk size then. */
  devices: z.record(
    z.string().regex(DEVICE_NAME_RE),
    z.strictObject({
      volname: Volname,
      size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    }),
  ),
  /** The backup removed after its bitmap state was recorded (kept for the log). */
  removed: Volname.optional(),
})

/** A valid bitmap record. */
export type BitmapRecord = z.infer<typeof RecordSchema>

/** What {@link readBitmapRecord} found. */
export type BitmapRecordState =
  | { kind: 'record'; record: BitmapRecord }
  | { kind: 'missing' }
  | { kind: 'invalid'; reason: string }

/** Read and validate the record of a guest directory. Never throws for what the file holds. */
export const readBitmapRecord = async (guest: Dir): Promise<BitmapRecordState> => {
  let text: string | undefined
  try {
    text = await guest.tryReadFile(BITMAP_RECORD, RECORD_MAX_BYTES)
  } catch (e) {
    return { kind: 'invalid', reason: toBackupError(e).message }
  }
  if (text === undefined) return { kind: 'missing' }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return { kind: 'invalid', reason: 'it is not JSON' }
  }
  const r = RecordSchema.safeParse(json)
  if (!r.success) {
    const issue = r.error.issues[0]
    const where = issue === undefined || issue.path.length === 0 ? 'record' : issue.path.join('.')
    return { kind: 'invalid', reason: `${where}: ${issue?.message ?? 'invalid'}` }
  }
  return { kind: 'record', record: r.data }
}

/**
 * Why an incremental of `device` (now `size` bytes) on the newest backup `newest` cannot trust
 * the host's bitmap, or undefined if the record says the bitmap continues exactly that backup.
 */
export const recordMismatch = (
  state: BitmapRecordState,
  device: string,
  newest: string,
  size: number,
): string | undefined => {
  if (state.kind === 'missing') return 'no bitmap record (no backup recorded its bitmap)'
  if (state.kind === 'invalid') return `the bitmap record is unusable (${state.reason})`
  const entry = state.record.devices[device]
  if (entry === undefined) {
    return state.record.removed === undefined
      ? `the bitmap record has no ${device}`
      : `the bitmap belonged to ${state.record.removed}, which was removed`
  }
  if (entry.volname !== newest) {
    return `the bitmap belongs to ${entry.volname}, not to the newest backup ${newest}`
  }
  if (entry.size !== size) {
    return `the bitmap was recorded for ${entry.size} bytes, the disk has ${size}`
  }
  return undefined
}

/**
 * Record that the bitmaps of `devices` (device -> size) now continue the backup `volname`;
 * devices not named have no bitmap any more. Written atomically (temp file, fsync, rename).
 */
export const writeBitmapRecord = async (
  guest: Dir,
  volname: string,
  devices: Readonly<Record<string, number>>,
): Promise<void> => {
  const record: BitmapRecord = {
    version: 1,
    devices: Object.fromEntries(
      Object.entries(devices).map(([device, size]) => [device, { volname, size }]),
    ),
  }
  await guest.writeFileAtomic(BITMAP_RECORD, `${JSON.stringify(record, null, 2)}\n`)
  await guest.sync()
}

/**
 * Invalidate the record if it names `volname`, which is being removed: the bitmaps continue a
 * backup that will not exist. Called before the backup stops being listed, so no moment exists
 * at which the record names a backup that is gone. A record that names other backups stays; an
 * unreadable one stays too (it already means "full").
 */
export const dropBitmapRecord = async (guest: Dir, volname: string): Promise<void> => {
  const state = await readBitmapRecord(guest)
  if (state.kind !== 'record') return
  const names = Object.values(state.record.devices).some((d) => d.volname === volname)
  if (!names) return
  const record: BitmapRecord = { version: 1, devices: {}, removed: volname }
  await guest.writeFileAtomic(BITMAP_RECORD, `${JSON.stringify(record, null, 2)}\n`)
  await guest.sync()
}
