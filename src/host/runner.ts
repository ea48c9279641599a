/**
 * The job runner: plays vzdump's part and calls the provider in Proxmox's exact order
 * (pve-backup-provider-api.md §2.7):
 * ```
 * jobInit → per guest: backupInit → (mechanism, VM or CT work) → backupCleanup(success|error)
 *         → backupHandleLogFile (always) → jobCleanup (always)
 * ```
 * A provider or source error leads to `backupCleanup(false, { error })`; the provider then
 * discards the backup (nothing half-done is ever listed; a complete one of a failed task is
 * removed) and keeps the log.
 *
 * With a hook ({@link JobOptions.hook}) the phases of vzdump's hook script run where
 * PVE/VZDump.pm's exec_backup and exec_backup_task run them: `job-start` after `jobInit`;
 * per guest `backup-start` after `backupInit` (its failure fails the guest), for a running VM
 * (mode `snapshot`) `pre-stop`, `pre-restart`, `post-restart` right after it (qemu-server's
 * snapshot step is empty: the backup's instant comes with the archive step), `backup-end` after
 * `backupCleanup(true)` or `backup-abort` after a failure, `log-end` after the log is handed
 * over; `job-end` after `jobCleanup`, or `job-abort` when the job itself failed.
 */
import { setMaxListeners } from 'node:events'
import { join } from 'node:path'
import type { BackupProvider, GuestType, ProviderLogFunction } from '../api/provider.ts'
import { isValidArchiveName } from '../api/names.ts'
import { BackupError, toBackupError } from '../errors.ts'
import { mainError } from '../io/cleanup.ts'
import { makeTempDir, sweepStaleTempDirs } from '../io/tmpdir.ts'
import type { Logger } from '../log.ts'
import type { ProgressEvent } from '../api/progress.ts'
import { guestHostname } from './hook-script.ts'
import type { BackupMode, HookPhase, HookRunner, HookTask } from './hook-script.ts'
import { backupCtGuest, preflightCt } from './guest-ct.ts'
import type { CtGuest } from './guest-ct.ts'
import { backupVmGuest, preflightVm } from './guest-vm.ts'
import type { VmGuest } from './guest-vm.ts'
import { TaskLog } from './task-log.ts'
import { backupLiveVm } from './live/guest-live.ts'
import type { BitmapFinalizer, LiveVmGuest } from './live/guest-live.ts'

/** A guest of a job: an offline VM (disk images), a running VM (QMP) or a container. */
export type Guest = VmGuest | LiveVmGuest | CtGuest

/**
 * A guest whose sources are read when its turn comes (config files, disk images), so that a
 * guest that cannot be prepared fails alone, as a vzdump task whose `prepare` dies.
 */
export interface PendingGuest {
  vmid: number
  type: GuestType
  /** A running VM (QMP): mode `snapshot`; else `stop`. */
  running: boolean
  /** Reads the guest's config file; a rejection fails this guest only. */
  readConfig: () => Promise<string>
  /** Reads the guest's other sources (disks, sockets); a rejection fails this guest only. */
  resolve: (config: string) => Promise<Guest>
}

/** Options of {@link runBackupJob}. */
export interface JobOptions {
  /** Creates the provider with the log function of the current guest. */
  provider: (log: ProviderLogFunction) => BackupProvider
  /** Store id for volume ids. */
  storeId: string
  /**
   * The store's immutable key in dirty-bitmap names (`gb-<key>-…`), so renaming the store id
   * keeps incrementals going. Default: `storeId`.
   */
  bitmapKey?: string
  guests: readonly (Guest | PendingGuest)[]
  /** Bytes per second; 0 or undefined: unlimited. */
  bandwidthLimit?: number | undefined
  logger: Logger
  onProgress?: ((vmid: number, ev: ProgressEvent) => void) | undefined
  signal: AbortSignal
  /** Clock in Unix seconds (injected by tests). */
  now?: () => number
  /** Runs the phases of a vzdump hook script (see the module comment). */
  hook?: HookRunner | undefined
}

/** Outcome of {@link runJob}: every guest's result, and the job's own failure if any. */
export interface JobResult {
  guests: GuestResult[]
  /** `jobInit`, `job-start` or `job-end` failed (vzdump's "Backup job failed"). */
  error?: BackupError
}

/** Outcome of one guest. */
export interface GuestResult {
  vmid: number
  type: GuestType
  status: 'ok' | 'failed'
  /** `<storeid>:backup/<archive-name>` when the backup was started. */
  volid?: string
  /** Archive size in bytes, on success. */
  archiveSize?: number
  error?: BackupError
  warnings: number
  /** The warning lines (the first 100, task-log.ts `WARNINGS_KEPT`). */
  warningMessages: readonly string[]
}

/** Run a backup job over the given guests, one after another; the guests' results. */
export const runBackupJob = async (opts: JobOptions): Promise<GuestResult[]> =>
  (await runJob(opts)).guests

/** Run a backup job over the given guests, one after another. */
export const runJob = async (opts: JobOptions): Promise<JobResult> => {
  const now = opts.now ?? (() => Math.floor(Date.now() / 1000))
  // Every request in flight listens on the signal; the default limit of 10 would warn.
  setMaxListeners(1024, opts.signal)
  await sweepStaleTempDirs()
  await using tmp = await makeTempDir('guestbackup-job-')
  // One provider instance for the whole job, as vzdump does; its log function writes into the
  // task log of the guest being processed.
  let current: TaskLog | undefined
  const jobLog = new TaskLog(join(tmp.path, 'job.log'), opts.logger)
  const provider = opts.provider((level, message, fields) => {
    ;(current ?? jobLog).log(level, message, fields)
  })
  const results: GuestResult[] = []
  let jobInitDone = false
  let jobError: BackupError | undefined
  const jobHook = async (phase: HookPhase): Promise<void> => {
    await opts.hook?.(phase, undefined, (line) => {
      jobLog.info(line)
    })
  }
  try {
    await provider.jobInit(now())
    jobInitDone = true
    await jobHook('job-start')
    for (const guest of opts.guests) {
      const log = new TaskLog(
        join(tmp.path, `${guest.vmid}.log`),
        opts.logger.child({ vmid: guest.vmid }),
      )
      current = log
      try {
        results.push(await backupGuest(provider, guest, opts, log, now()))
      } finally {
        current = undefined
      }
      if (opts.signal.aborted) break
    }
  } catch (e) {
    const err = toBackupError(e)
    jobError = err
    opts.logger.error(`${jobInitDone ? 'backup job failed' : 'job init failed'}: ${err.message}`)
    for (const guest of opts.guests.slice(results.length)) {
      results.push({
        vmid: guest.vmid,
        type: guest.type,
        status: 'failed',
        error: err,
        warnings: 0,
        warningMessages: [],
      })
    }
  } finally {
    try {
      await provider.jobCleanup()
    } catch (e) {
      opts.logger.error(`job cleanup failed: ${toBackupError(e).message}`)
    }
  }
  if (jobError === undefined) {
    try {
      await jobHook('job-end')
    } catch (e) {
      jobError = toBackupError(e)
      opts.logger.error(`backup job failed: ${jobError.message}`)
    }
  }
  if (jobError !== undefined) {
    // vzdump's job-abort: its own failure is only logged.
    try {
      await jobHook('job-abort')
    } catch (e) {
      opts.logger.error(toBackupError(e).message)
    }
  }
  return jobError === undefined ? { guests: results } : { guests: results, error: jobError }
}

/** One guest's backup with its hook phases (see the module comment). */
const backupGuest = async (
  provider: BackupProvider,
  entry: Guest | PendingGuest,
  opts: JobOptions,
  log: TaskLog,
  startTime: number,
): Promise<GuestResult> => {
  const running = 'resolve' in entry ? entry.running : 'qmp' in entry
  const mode: BackupMode = running ? 'snapshot' : 'stop'
  const task: HookTask = { mode, vmid: entry.vmid, vmtype: entry.type }
  const hook = async (phase: HookPhase): Promise<void> => {
    await opts.hook?.(phase, task, (line) => {
      log.info(line)
    })
  }
  const { result, started } = await backupSteps(provider, entry, opts, log, startTime, task, hook)
  if (result.status !== 'ok') {
    // vzdump: a failing backup-abort is a warning; the task failed already.
    try {
      await hook('backup-abort')
    } catch (e) {
      log.warn(toBackupError(e).message)
    }
  }
  result.warnings = log.warnings
  result.warningMessages = [...log.warningMessages]
  try {
    if (started) await provider.backupHandleLogFile(entry.vmid, log.path)
  } catch (e) {
    opts.logger.warn(`cannot store the task log: ${toBackupError(e).message}`)
  }
  task.logfile = log.path
  try {
    await hook('log-end')
  } catch (e) {
    opts.logger.warn(toBackupError(e).message)
  }
  return result
}

/** The steps from preparing the guest to `backupCleanup` and `backup-end`. */
const backupSteps = async (
  provider: BackupProvider,
  entry: Guest | PendingGuest,
  opts: JobOptions,
  log: TaskLog,
  startTime: number,
  task: HookTask,
  hook: (phase: HookPhase) => Promise<void>,
): Promise<{ result: GuestResult; started: boolean }> => {
  const result: GuestResult = {
    vmid: entry.vmid,
    type: entry.type,
    status: 'failed',
    warnings: 0,
    warningMessages: [],
  }
  log.info(`starting backup of ${entry.type} ${entry.vmid} via ${provider.name}`)
  let guest: Guest
  try {
    // The name is known once the config is read, as vzdump's prepare sets it before the rest.
    const config = 'resolve' in entry ? await entry.readConfig() : entry.config
    task.hostname = guestHostname(entry.type, entry.vmid, config)
    guest = 'resolve' in entry ? await entry.resolve(config) : entry
    await preflight(guest)
  } catch (e) {
    // Bad input found before the provider is involved: no backup is started, nothing is kept.
    result.error = toBackupError(e, 'USAGE')
    log.record('err', `backup failed: ${result.error.message}`)
    return { result, started: false }
  }
  let started = false
  let finalizer: BitmapFinalizer | undefined
  try {
    const init = await provider.backupInit(guest.vmid, guest.type, startTime)
    started = true
    if (typeof init.archiveName !== 'string' || !isValidArchiveName(init.archiveName)) {
      throw new BackupError('PROVIDER_INVALID', `invalid archive name '${init.archiveName}'`)
    }
    result.volid = `${opts.storeId}:backup/${init.archiveName}`
    task.target = init.archiveName
    await hook('backup-start')
    if (task.mode === 'snapshot') {
      for (const phase of ['pre-stop', 'pre-restart', 'post-restart'] as const) await hook(phase)
    }
    log.info(`creating archive '${result.volid}'`, { volid: result.volid })
    const info = {
      signal: opts.signal,
      ...(opts.bandwidthLimit ? { bandwidthLimit: opts.bandwidthLimit } : {}),
      ...(guest.firewallConfig === undefined ? {} : { firewallConfig: guest.firewallConfig }),
      onProgress: (ev: ProgressEvent) => opts.onProgress?.(guest.vmid, ev),
    }
    if (guest.type === 'lxc') await backupCtGuest(provider, guest, info, log)
    else if ('qmp' in guest)
      finalizer = await backupLiveVm(provider, guest, opts.bitmapKey ?? opts.storeId, info, log)
    else finalizer = await backupVmGuest(provider, guest, opts.bitmapKey ?? opts.storeId, info, log)
    opts.signal.throwIfAborted()
    const res = await provider.backupCleanup(guest.vmid, guest.type, true, {})
    // Only now, with the backup committed by the provider, may the frozen bitmaps go. A failure
    // here leaves both bitmaps; the next run merges them and does a full backup.
    const committing = finalizer
    finalizer = undefined
    try {
      await committing?.commit()
    } catch (ce) {
      const main = mainError(ce, cleanupFailed(log))
      log.warn(`cannot drop the backed-up bitmaps: ${toBackupError(main).message}`)
    }
    result.archiveSize = res?.stats.archiveSize ?? 0
    result.status = 'ok'
    log.info(`backup finished: ${result.archiveSize} bytes stored`, {
      volid: result.volid,
      bytes: result.archiveSize,
    })
  } catch (thrown) {
    // If the clean-up after a failure failed too, the failure is what is reported.
    const e = mainError(thrown, cleanupFailed(log))
    const err = opts.signal.aborted
      ? new BackupError('ABORTED', 'backup aborted', { cause: e })
      : toBackupError(e, 'PROVIDER_FAILED')
    result.error = err
    // The caller reports the error itself (the CLI prints one line): keep it in the file only.
    log.record('err', `backup failed: ${err.message}`)
    try {
      await finalizer?.rollback()
    } catch (re) {
      const main = mainError(re, cleanupFailed(log))
      log.error(`bitmap rollback failed (the next run repairs it): ${toBackupError(main).message}`)
    }
    if (started) {
      try {
        await provider.backupCleanup(guest.vmid, guest.type, false, { error: err.message })
      } catch (ce) {
        log.error(`backup cleanup for external provider failed: ${toBackupError(ce).message}`)
      }
    }
    return { result, started }
  }
  try {
    await hook('backup-end')
  } catch (e) {
    // vzdump fails the task, but the provider has committed the backup: it stays (and is listed),
    // the provider is not asked to clean it up a second time.
    result.status = 'failed'
    result.error = toBackupError(e)
    log.record('err', `backup failed: ${result.error.message}`)
  }
  return { result, started }
}

/** Logs a clean-up error that lost to the error of the work it cleaned up after. */
const cleanupFailed =
  (log: TaskLog) =>
  (e: unknown): void => {
    log.error(`clean-up failed: ${toBackupError(e).message}`)
  }

/** Checks that need no provider: refused before `backupInit`, so the store stays untouched. */
const preflight = async (guest: Guest): Promise<void> => {
  if (guest.type === 'lxc') await preflightCt(guest)
  else if (!('qmp' in guest)) preflightVm(guest)
}
