/**
 * `guestbackup job run FILE` and `guestbackup job check FILE`: the guests of a job file backed up
 * in one job of the provider API (one `jobInit` … `jobCleanup`, as vzdump runs one job for all
 * its guests), with vzdump's hook script. docs/jobs.md describes the file and the phases.
 */
import { hostname } from 'node:os'
import { resolve } from 'node:path'
import { BackupError, toBackupError } from '../../errors.ts'
import { guestHostname, hookScriptRunner } from '../../host/hook-script.ts'
import type { HookRunner } from '../../host/hook-script.ts'
import { runJob } from '../../host/runner.ts'
import type { GuestResult } from '../../host/runner.ts'
import type { Logger } from '../../log.ts'
import type { DirectoryStorage } from '../../provider/directory/storage.ts'
import { openStore } from '../../provider/directory/store.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { pendingGuests } from '../job/guests.ts'
import { jobPath, readJobFile } from '../job/load.ts'
import { LOCK_WAIT_DEFAULTS } from '../parse.ts'
import { fmtBytes, jobView } from '../progress/index.ts'
import type { JobView } from '../progress/index.ts'
import { backupReport } from '../output/backup-report.ts'
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'
import type { Shape } from '../output/shapes.ts'
import type { DirectoryProvider } from '../../provider/directory/provider.ts'

/** Options of `job run`. */
export interface JobRunCommandOptions {
  /** Hook script, overriding the file's `script`. */
  script?: string
  json?: boolean
}

/** One guest in {@link JobRunResult}: its `backup` report, and the task log of a failed run. */
export type JobGuestOutcome = Shape<'job-run'>['guests'][number]

/** What `job run --json` prints (shape `job-run`, docs/cli-json.md). */
export type JobRunResult = Shape<'job-run'>

/** What {@link outcome} reads besides the runner's result. */
interface OutcomeInput {
  storage: DirectoryStorage
  provider: DirectoryProvider | undefined
  /** Seconds the guest's part of the job took. */
  duration: number
}

/** vzdump's notes-template variables (PVE/VZDump.pm `$generate_notes`), with its unescaping. */
const expandNotes = (template: string, vars: Record<string, string>): string =>
  template
    .replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c))
    .replace(/\{\{([^\s{}]+)\}\}/g, (m, v: string) => vars[v] ?? m)

const outcome = async (r: GuestResult, i: OutcomeInput): Promise<JobGuestOutcome> => {
  const { storage } = i
  const kept = r.status === 'ok' || (r.volid !== undefined && (await isListed(storage, r)))
  const volname = r.volid?.slice(r.volid.indexOf(':') + 1)
  const manifest =
    r.status === 'ok' && volname !== undefined
      ? await storage.manifestOf(volname).catch(() => undefined)
      : undefined
  const report = backupReport({
    result: r,
    manifest,
    fullReasons: i.provider?.fullReasons(r.vmid) ?? {},
    duration: i.duration,
    storeId: storage.storeId,
  })
  return {
    ...report,
    volid: kept ? (r.volid ?? null) : null,
    log:
      r.status === 'ok' || r.volid === undefined
        ? null
        : ((await storage.failedLog(r.volid).catch(() => undefined)) ?? null),
  }
}

/** A failed guest whose backup was committed before its `backup-end` hook failed. */
const isListed = async (storage: DirectoryStorage, r: GuestResult): Promise<boolean> => {
  const list = await storage.listVolumes({ vmid: r.vmid }).catch(() => [])
  return list.some((v) => v.volid === r.volid)
}

/** Run `job run`; returns the exit code (0 only when every guest succeeded). */
export const jobRunCommand = async (
  file: string,
  o: JobRunCommandOptions,
  logger: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  const { signal } = io
  const parsed = await readJobFile(file)
  if (!parsed.ok) {
    const [first, ...more] = parsed.errors
    const rest = more.length === 0 ? '' : ` (and ${more.length} more: see guestbackup job check)`
    throw new BackupError('CONFIG_INVALID', `${first ?? file}${rest}`)
  }
  const job = parsed.job
  const store = jobPath(file, job.store)
  const script = o.script === undefined ? job.script : resolve(o.script)
  const hookFor = (storeId?: string): HookRunner | undefined =>
    script === undefined
      ? undefined
      : hookScriptRunner({
          script: jobPath(file, script),
          storeId,
          ...(storeId === undefined ? {} : { dumpDir: store }),
          signal,
        })
  // vzdump runs job-init before it activates the storage (to wake it up): the store is not read
  // yet, so STOREID and DUMPDIR are unknown there.
  await hookFor()?.('job-init', undefined, (line) => {
    logger.info(line)
  })
  const storage = await openStore(store, {
    waitMs: job['lock-wait'] ?? LOCK_WAIT_DEFAULTS.backup,
    signal,
    log: (m) => {
      logger.warn(m)
    },
  })
  const hook = hookFor(storage.storeId)
  const guests = pendingGuests(job.guest, {
    file,
    store,
    signal,
    warn: (m) => {
      logger.warn(m)
    },
  })
  const configs = new Map<number, string>()
  // One view per guest, the guests one after the other: a new guest's first event ends the last.
  let current: { vmid: number; view: JobView } | undefined
  const viewOf = (vmid: number): JobView => {
    if (current?.vmid !== vmid) {
      current?.view[Symbol.dispose]()
      current = { vmid, view: jobView(io.stderr, `${vmid} backup`) }
    }
    return current.view
  }
  // When each guest started (its config is read first): a guest's duration runs to the next's.
  const starts = new Map<number, number>()
  let provider: DirectoryProvider | undefined
  const res = await runJob({
    provider: (log) => (provider = storage.newBackupProvider(log)),
    storeId: storage.storeId,
    bitmapKey: storage.bitmapKey,
    guests: guests.map((g) => ({
      ...g,
      readConfig: async () => {
        starts.set(g.vmid, performance.now())
        const config = await g.readConfig()
        configs.set(g.vmid, config)
        return config
      },
    })),
    bandwidthLimit: job.bwlimit,
    logger,
    onProgress: (vmid, ev) => {
      viewOf(vmid).update(ev)
    },
    signal,
    hook,
  })
  current?.view[Symbol.dispose]()
  const template = job['notes-template']
  if (template !== undefined) {
    for (const r of res.guests) {
      if (r.status !== 'ok' || r.volid === undefined) continue
      const name = guestHostname(r.type, r.vmid, configs.get(r.vmid) ?? '')
      const notes = expandNotes(template, {
        cluster: 'standalone node',
        guestname: name ?? `VM ${r.vmid}`,
        node: hostname().split('.')[0] ?? '',
        vmid: String(r.vmid),
      })
      try {
        await storage.updateVolumeAttribute(r.volid.slice(r.volid.indexOf(':') + 1), 'notes', notes)
      } catch (e) {
        // vzdump: "unable to add notes" is a warning; the backup stands.
        logger.warn(`${r.vmid}: unable to add notes - ${toBackupError(e).message}`)
      }
    }
  }
  const ended = performance.now()
  const outcomes: JobGuestOutcome[] = []
  for (const [n, r] of res.guests.entries()) {
    const start = starts.get(r.vmid)
    const next = res.guests[n + 1]
    const end = (next === undefined ? undefined : starts.get(next.vmid)) ?? ended
    const duration = start === undefined ? 0 : (end - start) / 1000
    outcomes.push(await outcome(r, { storage, provider, duration }))
  }
  const ok = outcomes.filter((g) => g.status === 'ok').length
  const result: JobRunResult = {
    job: file,
    status: ok === outcomes.length && res.error === undefined ? 'ok' : 'failed',
    error: res.error?.message ?? null,
    ok,
    failed: outcomes.length - ok,
    guests: outcomes,
  }
  emit(io.stdout, format, 'job-run', result, () => {
    writeJobText(io, result)
  })
  if (signal.aborted) throw new BackupError('ABORTED', 'backup job aborted')
  return result.status === 'ok' ? 0 : 1
}

/** Text: one line per guest, then the summary line. */
const writeJobText = (io: CliIO, r: JobRunResult): void => {
  for (const g of r.guests) {
    const what = `${g.vmid} ${g.type}`
    if (g.status === 'ok') {
      writeLine(io.stdout, `${what} ok ${g.volid ?? ''} ${fmtBytes(g.size ?? 0)}`)
    } else {
      const log = g.log === null ? '' : ` (task log: ${g.log})`
      writeLine(io.stdout, `${what} failed: ${g.error ?? 'backup failed'}${log}`)
    }
  }
  const job = r.error === null ? '' : `, job failed: ${r.error}`
  writeLine(
    io.stdout,
    `job ${r.job}: ${r.guests.length} guests, ${r.ok} ok, ${r.failed} failed${job}`,
  )
}

/**
 * Run `job check`: one line per error on stdout (or shape `job-check`); exit code 0 when valid,
 * 1 otherwise.
 */
export const jobCheckCommand = async (
  file: string,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  const r = await readJobFile(file)
  const value: Shape<'job-check'> = r.ok
    ? { job: file, valid: true, guests: r.job.guest.length, errors: [] }
    : { job: file, valid: false, guests: null, errors: [...r.errors] }
  emit(io.stdout, format, 'job-check', value, () => {
    if (r.ok) writeLine(io.stdout, `${file}: ok, ${r.job.guest.length} guests`)
    else for (const line of r.errors) writeLine(io.stdout, line)
  })
  return r.ok ? 0 : 1
}
