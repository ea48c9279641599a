/** `guestbackup verify`: check backups against the digests recorded when they were taken. */
import type { LockPolicy } from '../../io/lock.ts'
import type { Logger } from '../../log.ts'
import { openStore } from '../../provider/directory/store.ts'
import type { VerifyReport } from '../../provider/directory/verify-store.ts'
import { BackupError } from '../../errors.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { fmtBytes, jobView } from '../progress/index.ts'
import { isLatest, resolveVolume } from '../volume.ts'
import { emit } from '../output/format.ts'
import { providerLog } from '../output/provider-log.ts'
import type { OutputFormat } from '../output/format.ts'

/** Options of the verify command. */
export interface VerifyCommandOptions {
  store: string
  /** How long to wait for a guest's lock, ms (`--lock-wait`). */
  lockWait?: number
  restored?: string
  json?: boolean
  /** The guest of `latest`. */
  vmid?: number
}

/**
 * Verify `volumes` (every backup of the store when none is named), or with `restored` prove
 * one restore. Exit code 0 when everything verified, 1 when anything failed.
 */
export const verifyCommand = async (
  volumes: readonly string[],
  o: VerifyCommandOptions,
  logger: Logger,
  io: CliIO,
  lock: LockPolicy,
  format: OutputFormat,
): Promise<number> => {
  const storage = await openStore(o.store, lock)
  if (o.vmid !== undefined && !volumes.some(isLatest)) {
    throw new BackupError('USAGE', "--vmid selects the guest of 'latest': name latest")
  }
  const volnames: string[] = []
  for (const v of volumes) {
    volnames.push(await resolveVolume(storage, v, isLatest(v) ? o : {}, logger))
  }
  if (o.restored !== undefined) {
    const [volname, ...more] = volnames
    if (volname === undefined || more.length > 0) {
      throw new BackupError('USAGE', '--restored proves one backup: name exactly one volume')
    }
    const why = await storage.proveRestored(volname, o.restored, io.signal)
    const row = { volid: `${storage.storeId}:${volname}`, restored: o.restored }
    const state = why === undefined ? ('ok' as const) : ('failed' as const)
    logger.info({ volid: row.volid, restored: o.restored, state }, why ?? 'restore matches')
    const value = { ...row, state, ...(why === undefined ? {} : { detail: why }) }
    emit(io.stdout, format, 'verify-restored', value, () => {
      writeLine(
        io.stdout,
        `${o.restored}: ${why === undefined ? `matches ${row.volid}` : `FAILED: ${why}`}`,
      )
    })
    return why === undefined ? 0 : 1
  }
  const started = performance.now()
  const toLogger = providerLog(logger)
  let reports: VerifyReport[]
  {
    using progress = jobView(io.stderr, 'verify', true)
    reports = await storage.verify({
      ...(volnames.length > 0 ? { volnames } : {}),
      signal: io.signal,
      log: toLogger,
      onProgress: (item, done, total) => {
        progress.update({ item, done, total })
      },
    })
    progress.finish()
  }
  const volid = (v: string): string => `${storage.storeId}:${v}`
  const rows = reports.map((r) => ({
    volid: volid(r.volname),
    state: r.outcome.state,
    time: r.outcome.time,
    bytes: r.outcome.bytes,
    ...(r.outcome.detail === undefined ? {} : { detail: r.outcome.detail }),
  }))
  for (const r of rows) {
    const fields = { volid: r.volid, state: r.state, bytes: r.bytes }
    logger.info(fields, `${r.volid}: ${r.state}${r.detail === undefined ? '' : `: ${r.detail}`}`)
  }
  emit(io.stdout, format, 'verify', rows, () => {
    for (const r of reports) {
      const what =
        r.outcome.state === 'ok' ? 'ok' : r.outcome.state === 'failed' ? 'FAILED' : 'not verifiable'
      writeLine(
        io.stdout,
        [volid(r.volname), what, r.outcome.detail ?? fmtBytes(r.outcome.bytes)].join('  '),
      )
    }
    const failed = reports.filter((r) => r.outcome.state === 'failed').length
    const secs = ((performance.now() - started) / 1000).toFixed(1)
    writeLine(
      io.stdout,
      failed === 0
        ? `${reports.length} backups verified in ${secs} s`
        : `${failed} of ${reports.length} backups FAILED verification`,
    )
  })
  return reports.some((r) => r.outcome.state === 'failed') ? 1 : 0
}
