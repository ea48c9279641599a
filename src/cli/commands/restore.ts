/** `guestbackup restore`: restore a backup into a directory (and VM disks onto target disks). */
import { isAbsolute, join, resolve } from 'node:path'
import type { ProgressEvent } from '../../api/progress.ts'
import { BackupError } from '../../errors.ts'
import { restoreBackup } from '../../host/restore.ts'
import { TaskLog } from '../../host/task-log.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import type { Logger } from '../../log.ts'
import { parseVolname } from '../../provider/directory/layout.ts'
import { openStore } from '../../provider/directory/store.ts'
import { writeLine } from '../io.ts'
import { jobView, showsProgress } from '../progress/index.ts'
import type { CliIO } from '../io.ts'
import type { TargetDiskArg } from '../parse.ts'
import { insideOrSame, realPathOf } from '../paths.ts'
import { resolveVolume } from '../volume.ts'

/** Options of the restore command. */
export interface RestoreCommandOptions {
  store: string
  target: string
  bwlimit?: number
  targetDisk?: TargetDiskArg[]
  /** Only these disks (`drive-scsi0`). */
  disk?: string[]
  format?: 'raw' | 'qcow2'
  /** The guest of `latest`. */
  vmid?: number
}

/** Run the restore command; returns the exit code. Restored files are listed on `io.stdout`. */
export const restoreCommand = async (
  o: RestoreCommandOptions,
  volume: string,
  logger: Logger,
  io: CliIO,
): Promise<number> => {
  if (o.format === 'qcow2' && o.targetDisk !== undefined) {
    throw new BackupError(
      'USAGE',
      '--target-disk writes the raw disk onto an existing file or device; --format qcow2 makes new files in --target: give one',
    )
  }
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o, logger)
  parseVolname(volname)
  const [target, store] = [await realPathOf(o.target), await realPathOf(o.store)]
  if (insideOrSame(target, store) || insideOrSame(store, target)) {
    throw new BackupError('USAGE', `restore target ${o.target} overlaps the store ${o.store}`)
  }
  const diskTargets: Record<string, string> = {}
  for (const t of o.targetDisk ?? []) {
    const real = await realPathOf(t.path)
    if (insideOrSame(real, store) || insideOrSame(real, target)) {
      throw new BackupError('USAGE', `disk target ${t.path} lies in the store or the target`)
    }
    diskTargets[t.device] = resolve(t.path)
  }
  await using tmp = await makeTempDir('guestbackup-restore-')
  const log = new TaskLog(join(tmp.path, 'restore.log'), logger)
  const provider = storage.newBackupProvider((level, msg) => {
    log.log(level, msg)
  })
  using progress = jobView(io.stderr, `restore ${volname}`)
  const r = await restoreBackup({
    provider,
    volname,
    target: o.target,
    diskTargets,
    devices: o.disk,
    format: o.format,
    bandwidthLimit: o.bwlimit,
    log,
    signal: io.signal,
    ...(showsProgress(progress)
      ? {
          onProgress: (ev: ProgressEvent) => {
            progress.update(ev)
          },
        }
      : {}),
  })
  progress.finish()
  for (const f of r.files) writeLine(io.stdout, isAbsolute(f) ? f : join(o.target, f))
  return 0
}
