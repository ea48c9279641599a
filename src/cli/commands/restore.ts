/** `guestbackup restore`: restore a backup into a directory (and VM disks onto target disks). */
import { parseIdMapArgs } from '../../api/idmap-parse.ts'
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
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'
import type { Shape } from '../output/shapes.ts'

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
  json?: boolean
  /** `--idmap` entries, unparsed (idmap-parse.ts). */
  idmap?: string[]
  privileged?: boolean
}

/** Run the restore command; returns the exit code. Restored files are listed on `io.stdout`. */
export const restoreCommand = async (
  o: RestoreCommandOptions,
  volume: string,
  logger: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  if (o.format === 'qcow2' && o.targetDisk !== undefined) {
    throw new BackupError(
      'USAGE',
      '--target-disk writes the raw disk onto an existing file or device; --format qcow2 makes new files in --target: give one',
    )
  }
  const idMap = o.idmap === undefined ? undefined : parseIdMapArgs(o.idmap)
  if (idMap !== undefined && o.privileged === true) {
    throw new BackupError('USAGE', 'give --idmap or --privileged, not both')
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
  const provider = storage.newBackupProvider((level, msg, fields) => {
    log.log(level, msg, fields)
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
    idMap,
    privileged: o.privileged,
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
  const files = r.files.map((f) => (isAbsolute(f) ? f : join(o.target, f)))
  const disks: Shape<'restore'>['disks'] = []
  for (const f of r.files) {
    const onTarget = Object.entries(diskTargets).find(([, p]) => p === f)
    if (onTarget !== undefined) {
      // --target-disk: the raw disk written onto an existing file or device.
      disks.push({ device: onTarget[0], path: f, format: 'raw', targetDisk: true })
      continue
    }
    const m = /^(drive-[a-z0-9]+)\.(raw|qcow2)$/.exec(f)
    if (m?.[1] === undefined) continue
    const fmt = m[2] === 'qcow2' ? 'qcow2' : 'raw'
    disks.push({ device: m[1], path: resolve(o.target, f), format: fmt, targetDisk: false })
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
