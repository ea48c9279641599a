/** `guestbackup restore`: restore a backup into a directory (and VM disks onto disk targets). */
import { isAbsolute, join, resolve } from 'node:path'
import { BackupError } from '../../errors.ts'
import { restoreBackup } from '../../host/restore.ts'
import { TaskLog } from '../../host/task-log.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import type { Logger } from '../../log.ts'
import { parseVolname } from '../../provider/directory/layout.ts'
import { openStore } from '../../provider/directory/store.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import type { DiskTargetArg } from '../parse.ts'
import { insideOrSame, realPathOf } from '../paths.ts'
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'

/** Options of the restore command. */
export interface RestoreCommandOptions {
  store: string
  target: string
  bwlimit?: number
  diskTarget?: DiskTargetArg[]
  json?: boolean
}

/** Run the restore command; returns the exit code. Restored files are listed on `io.stdout`. */
export const restoreCommand = async (
  o: RestoreCommandOptions,
  volume: string,
  logger: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  const storage = await openStore(o.store)
  const volname = stripStoreId(volume, storage.storeId)
  parseVolname(volname)
  const [target, store] = [await realPathOf(o.target), await realPathOf(o.store)]
  if (insideOrSame(target, store) || insideOrSame(store, target)) {
    throw new BackupError('USAGE', `restore target ${o.target} overlaps the store ${o.store}`)
  }
  const diskTargets: Record<string, string> = {}
  for (const t of o.diskTarget ?? []) {
    const real = await realPathOf(t.path)
    if (insideOrSame(real, store) || insideOrSame(real, target)) {
      throw new BackupError('USAGE', `disk target ${t.path} lies in the store or the target`)
    }
    diskTargets[t.device] = resolve(t.path)
  }
  await using tmp = await makeTempDir('guestbackup-restore-')
  const log = new TaskLog(join(tmp.path, 'restore.log'), logger)
  const provider = storage.newBackupProvider((level, msg, fields) => {
    log.log(level, msg, fields)
  })
  const r = await restoreBackup({
    provider,
    volname,
    target: o.target,
    diskTargets,
    bandwidthLimit: o.bwlimit,
    log,
    signal: io.signal,
  })
  const files = r.files.map((f) => (isAbsolute(f) ? f : join(o.target, f)))
  const disks: { device: string; path: string }[] = []
  for (const f of r.files) {
    const onTarget = Object.entries(diskTargets).find(([, p]) => p === f)
    const device = onTarget?.[0] ?? /^(drive-[a-z0-9]+)\.raw$/.exec(f)?.[1]
    if (device !== undefined) disks.push({ device, path: resolve(o.target, f) })
  }
  const volid = `${storage.storeId}:${volname}`
  for (const d of disks)
    logger.info({ volid, device: d.device, path: d.path }, `restored ${d.device} to ${d.path}`)
  const value = {
    volid,
    type: r.type,
    target: resolve(o.target),
    files: files.map((f) => resolve(f)),
    disks,
  }
  emit(io.stdout, format, 'restore', value, () => {
    for (const f of files) writeLine(io.stdout, f)
  })
  return 0
}

/**
 * Accept `backup/…` as well as `<storeid>:backup/…`; a volume id naming another store is
 * refused (it is not in this one, whatever its name says).
 */
export const stripStoreId = (volume: string, storeId: string): string => {
  const i = volume.indexOf(':backup/')
  if (i <= 0 || volume.slice(0, i).includes('/')) return volume
  const prefix = volume.slice(0, i)
  if (prefix !== storeId) {
    throw new BackupError(
      'USAGE',
      `volume ${volume} belongs to store '${prefix}', not to '${storeId}'`,
    )
  }
  return volume.slice(i + 1)
}
