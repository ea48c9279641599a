/** `guestbackup bitmaps`: list or drop guestbackup's dirty bitmaps in a stopped VM's disk. */
import { BackupError } from '../../errors.ts'
import { inspectDisk } from '../../host/disks.ts'
import { dropBitmap, guestbackupBitmaps } from '../../host/offline-bitmaps.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'

/** Options of the bitmaps command as commander parses them. */
export interface BitmapsCommandOptions {
  disk: string
  drop?: string[]
  dropAll?: boolean
  json?: boolean
}

/** Run the bitmaps command; returns the exit code. The bitmaps are listed on `io.stdout`. */
export const bitmapsCommand = async (
  o: BitmapsCommandOptions,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  const disk = await inspectDisk('drive-disk', o.disk, 'qcow2', io.signal)
  const present = await guestbackupBitmaps(disk)
  const names = o.dropAll === true ? present.map((b) => b.name) : (o.drop ?? [])
  for (const name of names) {
    if (!present.some((b) => b.name === name)) {
      throw new BackupError('USAGE', `${o.disk} has no guestbackup bitmap ${name}`)
    }
  }
  for (const name of names) await dropBitmap(disk, name)
  const left = names.length === 0 ? present : await guestbackupBitmaps(disk)
  const bitmaps = left.map((b) => ({ name: b.name, flags: b.flags }))
  emit(io.stdout, format, 'bitmaps', { dropped: names, bitmaps }, () => {
    for (const n of names) writeLine(io.stdout, `dropped ${n}`)
    for (const b of left) writeLine(io.stdout, `${b.name}  ${b.flags.join(',')}`)
  })
  return 0
}
