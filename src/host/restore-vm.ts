/**
 * The VM half of a host restore (qemu-server's `restore_external_archive`): per disk, the
 * provider prepares a source and `qemu-img convert` copies the guest-visible data into a raw
 * target (or a new qcow2 file, `restore --format qcow2`). A provider with the `restoreVmVolumeSpec` extension (ours) hands over the validated,
 * pinned image chain as an explicit blockdev spec, which qemu-img reads directly; any other
 * provider's raw source (`restoreVmVolumeInit`, a file or an NBD URI) is copied as raw, never
 * probed. Targets are opened by us first (restore-target.ts): new sparse files in the target
 * directory, or existing regular files or block devices (`--target-disk`). Different disks are
 * copied side by side, {@link PARALLEL_DISKS} at a time (one at a time under a bandwidth limit,
 * which is the limit of the whole restore).
 */
import { join } from 'node:path'
import { DEVICE_NAME_RE } from '../api/names.ts'
import type { ProgressEvent } from '../api/progress.ts'
import type { BackupProvider } from '../api/provider.ts'
import { BackupError, toBackupError, withSpaceIn } from '../errors.ts'
import { restoreSourceJson } from '../qemu/chain.ts'
import { convertImage, createImage } from '../qemu/img.ts'
import { createRawTarget, openExistingTarget } from './restore-target.ts'
import type { RawTarget } from './restore-target.ts'
import type { TaskLog } from './task-log.ts'

/** Disks copied at once when no bandwidth limit applies (each `qemu-img convert` is one core). */
export const PARALLEL_DISKS = 2

/** Options of {@link restoreVmDisks}. */
export interface VmRestoreOptions {
  provider: BackupProvider
  volname: string
  /** The (checked, empty) target directory: disks without a disk target go to `<device>.raw`. */
  target: string
  /** Device name -> an existing regular file or block device to restore that disk onto. */
  diskTargets?: Readonly<Record<string, string>> | undefined
  /** Only these devices (`drive-scsi0`); default: every disk of the backup. */
  devices?: readonly string[] | undefined
  /** Format of the disk files written into the target directory; default `raw`. */
  format?: 'raw' | 'qcow2' | undefined
  /** Bytes per second for the whole restore; 0 or undefined: unlimited. */
  bandwidthLimit?: number | undefined
  log: TaskLog
  signal: AbortSignal
  /** How far each disk got (`item`: the device); every disk is announced before the first copy. */
  onProgress?: ((ev: ProgressEvent) => void) | undefined
}

/** One disk to copy: its device, size, and target (opened, not yet written). */
interface DiskJob {
  device: string
  size: number
  target: RawTarget & { readonly format?: 'qcow2' }
  /** What the target is called in a full-space error line: its dir or its path, and the file. */
  place: string
  writing: string
  /** What the caller lists as restored. */
  file: string
}

/**
 * Restore every disk of VM backup `volname`. Returns what was written: names relative to the
 * target directory (`drive-scsi0.raw`) and the paths of disk targets, sorted by device.
 *
 * @throws BackupError `USAGE` for a disk target naming no disk of the backup, two targets that
 *   are one disk, or an unusable target (before any disk is written); `NO_SPACE` naming the
 *   target; the provider's and qemu-img's errors (the first one, when disks run side by side).
 */
export const restoreVmDisks = async (opts: VmRestoreOptions): Promise<string[]> => {
  const { provider, volname, log } = opts
  const devices = await provider.restoreVmInit(volname, { signal: opts.signal })
  const all = Object.keys(devices).sort()
  for (const device of all) {
    if (!DEVICE_NAME_RE.test(device)) {
      throw new BackupError('ARCHIVE_INVALID', `invalid device name '${device}'`)
    }
  }
  const noDisk = (device: string) =>
    new BackupError('USAGE', `the backup has no disk ${device} (its disks: ${all.join(', ')})`)
  for (const device of opts.devices ?? []) if (!all.includes(device)) throw noDisk(device)
  const names = opts.devices === undefined ? all : all.filter((d) => opts.devices?.includes(d))
  const diskTargets = opts.diskTargets ?? {}
  for (const device of Object.keys(diskTargets)) {
    if (!all.includes(device)) throw noDisk(device)
    if (!names.includes(device)) {
      throw new BackupError('USAGE', `a target disk for ${device}, which --disk does not restore`)
    }
  }
  const jobs: DiskJob[] = []
  try {
    const seen = new Map<string, string>()
    for (const device of names) {
      const size = devices[device]?.size ?? 0
      const existing = diskTargets[device]
      const job =
        existing === undefined
          ? await newFileJob(opts.target, device, size, opts.format ?? 'raw')
          : {
              device,
              size,
              target: await openExistingTarget(existing, size),
              place: existing,
              writing: device,
              file: existing,
            }
      jobs.push(job)
      const other = seen.get(job.target.identity)
      if (other !== undefined) {
        throw new BackupError('USAGE', `disks ${other} and ${device} have the same target`)
      }
      seen.set(job.target.identity, device)
    }
    for (const j of jobs) opts.onProgress?.({ item: j.device, done: 0, total: j.size })
    const limited = (opts.bandwidthLimit ?? 0) > 0
    if (limited) log.info(`bandwidth limit ${opts.bandwidthLimit} bytes/s`)
    const limit = limited ? 1 : PARALLEL_DISKS
    log.info(`restoring ${jobs.length} disk(s), ${Math.min(limit, jobs.length)} at a time`)
    await inParallel(jobs, limit, opts.signal, (job, signal) => copyDisk(opts, job, signal))
    return jobs.map((j) => j.file)
  } finally {
    for (const j of jobs) await j.target.close()
  }
}

/**
 * A new file `<device>.raw` (sparse, `size` bytes) or `<device>.qcow2` in the target directory.
 * The qcow2 file is created empty like the raw one (by us, exclusively, see restore-target.ts)
 * and formatted through its open descriptor, so qemu-img writes the file that was created.
 */
const newFileJob = async (
  dir: string,
  device: string,
  size: number,
  format: 'raw' | 'qcow2',
): Promise<DiskJob> => {
  const file = `${device}.${format}`
  const target = await withSpaceIn('restore target', dir, async () => {
    const t = await createRawTarget(join(dir, file), format === 'raw' ? size : 0)
    if (format === 'raw') return t
    try {
      await createImage(t.path, { format: 'qcow2', size })
      return { ...t, format, direct: false }
    } catch (e) {
      await t.close()
      throw e
    }
  })
  return { device, size, target, place: dir, writing: file, file }
}

/** The source of one disk for qemu-img: the provider's chain spec, or its raw source. */
const openSource = async (
  opts: VmRestoreOptions,
  job: DiskJob,
  signal: AbortSignal,
): Promise<{ source: string; raw: boolean }> => {
  const { provider, volname } = opts
  if (provider.restoreVmVolumeSpec !== undefined) {
    const r = await provider.restoreVmVolumeSpec(volname, job.device, { signal })
    if (r.size !== job.size) {
      throw new BackupError('ARCHIVE_INVALID', `${job.device}: its image chain has another size`)
    }
    return { source: restoreSourceJson(r.blockdev), raw: false }
  }
  const { qemuImgPath } = await provider.restoreVmVolumeInit(volname, job.device, { signal })
  return { source: qemuImgPath, raw: true }
}

const copyDisk = async (opts: VmRestoreOptions, job: DiskJob, signal: AbortSignal) => {
  const { onProgress } = opts
  try {
    const { source, raw } = await openSource(opts, job, signal)
    const from = raw ? "the provider's raw source" : 'its image chain'
    opts.log.info(`${job.device}: restoring ${job.size} bytes from ${from}`)
    // A raw source is untrusted data: read as raw (never probed, never a chain). The spec
    // names every node. Zeroes are skipped on a fresh target, so it stays sparse.
    await withSpaceIn(
      'restore target',
      job.place,
      () =>
        convertImage(source, job.target.path, {
          sourceFormat: 'raw',
          targetFormat: job.target.format ?? 'raw',
          targetExists: true,
          targetIsZero: job.target.fresh,
          ...(job.target.direct ? { targetCache: 'none' as const } : {}),
          outOfOrder: true,
          rateLimit: opts.bandwidthLimit,
          ...(onProgress === undefined
            ? {}
            : {
                onProgress: (f: number) => {
                  onProgress({ item: job.device, done: Math.round(f * job.size), total: job.size })
                },
              }),
          signal,
        }),
      job.writing,
    )
  } finally {
    await opts.provider.restoreVmVolumeCleanup(opts.volname, job.device)
  }
}

/**
 * Run `fn` over `items`, at most `limit` at once. The first failure aborts the others (through
 * the signal they get) and is what this throws, once all have ended.
 */
const inParallel = async <T>(
  items: readonly T[],
  limit: number,
  signal: AbortSignal,
  fn: (item: T, signal: AbortSignal) => Promise<void>,
): Promise<void> => {
  const stop = new AbortController()
  const both = AbortSignal.any([signal, stop.signal])
  let next = 0
  const errors: unknown[] = []
  const worker = async (): Promise<void> => {
    while (!stop.signal.aborted && !signal.aborted) {
      const item = items[next++]
      if (item === undefined) return
      try {
        await fn(item, both)
      } catch (e) {
        errors.push(e)
        // The first failure ends the others (they fail with ABORTED, which is not reported).
        stop.abort(e)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (errors.length > 0) throw toBackupError(errors[0])
  if (signal.aborted) throw new BackupError('ABORTED', 'restore aborted', { cause: signal.reason })
}
