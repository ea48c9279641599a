/**
 * Restores through the Proxmox VE plugin hand Proxmox something that must outlive the call
 * that made it: a read-only FUSE file of a VM disk (qemu-server runs `qemu-img convert` on it
 * after `restore_vm_volume_init` returned) or a container archive (pve-container extracts it
 * after `restore_container_init`). Each plugin call is a process of its own
 * (docs/pve-protocol.md), so the call starts a *holder*: a detached `guestbackup pve-hold`
 * that runs the provider's restore init, reports its result, and keeps what it made alive
 * until the matching cleanup call stops it (SIGTERM) or the Proxmox process that asked for it
 * is gone (polled), whichever comes first. What the holder made dies with it (its FUSE
 * daemon gets PR_SET_PDEATHSIG), so nothing outlives an aborted restore.
 *
 * A holder is found again by a pid file in a root-only run directory, named after the store,
 * the volume and the device; a pid is signalled only while its `/proc/<pid>/cmdline` is still a
 * `pve-hold`, so a reused pid is never killed.
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import * as z from 'zod'
import { BackupError, ERROR_CODES, toBackupError } from '../errors.ts'
import type { DirectoryProvider } from '../provider/directory/provider.ts'
import { scfgPath, storageFromScfg } from './args.ts'
import { JsonSchema } from './protocol.ts'
import type { JsonValue } from './protocol.ts'
import { processAlive } from '../io/daemon.ts'

/** What a holder is asked to hold: one VM disk, or one container archive. */
export const HoldRequestSchema = z.strictObject({
  kind: z.enum(['vm-volume', 'container']),
  storeid: z.string(),
  scfg: z.record(z.string(), JsonSchema),
  volname: z.string(),
  /** The VM device (`vm-volume` only). */
  device: z.string().optional(),
  /** The process whose death ends the hold (the Proxmox process running the restore). */
  watchPid: z.number().int().positive(),
})

/** A {@link HoldRequestSchema} value. */
export type HoldRequest = z.infer<typeof HoldRequestSchema>

/** Where holders keep their pid files (root-only). */
const runDir = (): string => process.env['GUESTBACKUP_RUN_DIR'] ?? '/run/guestbackup'

const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24)

/** Where a holder is registered: a store (`storeid` + path) and volume, then the device. */
export interface HoldKey {
  storeid: string
  path: string
  volname: string
  /** The VM device; absent for a container archive. */
  device?: string | undefined
}

const volumePrefix = (k: HoldKey): string => `${hash(`${k.storeid}\0${k.path}\0${k.volname}`)}-`
const pidFileOf = (k: HoldKey): string =>
  join(runDir(), `${volumePrefix(k)}${k.device === undefined ? 'ct' : hash(k.device)}.pid`)

/** How often the holder checks the watched process, ms. */
const WATCH_MS = 500
/** How long a start or a stop may take, ms. */
const READY_MS = 60_000
const STOP_MS = 20_000

const isHolder = async (pid: number): Promise<boolean> => {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  return cmdline.split('\0').includes('pve-hold')
}

/** Run a holder (the body of `guestbackup pve-hold`); `report` gets its one result line. */
export const runHolder = async (
  req: HoldRequest,
  report: (line: JsonValue) => void,
  signal: AbortSignal,
): Promise<void> => {
  const storage = storageFromScfg(req.storeid, req.scfg)
  const provider: DirectoryProvider = await storage.resumeBackupProvider(() => undefined, null)
  const pidFile = pidFileOf({ ...req, path: scfgPath(req.scfg) })
  try {
    let result: JsonValue
    if (req.kind === 'vm-volume') {
      const r = await provider.restoreVmVolumeInit(req.volname, req.device ?? '', { signal })
      result = { 'qemu-img-path': r.qemuImgPath }
    } else {
      const r = await provider.restoreContainerInit(req.volname, { signal })
      result =
        'tarPath' in r ? { 'tar-path': r.tarPath } : { 'archive-directory': r.archiveDirectory }
    }
    await mkdir(runDir(), { recursive: true, mode: 0o700 })
    await writeFile(pidFile, `${process.pid}\n`, { mode: 0o600 })
    report({ result })
    while (!signal.aborted && processAlive(req.watchPid)) {
      await sleep(WATCH_MS, undefined, { signal }).catch(() => undefined)
    }
  } catch (e) {
    const err = toBackupError(e)
    if (!signal.aborted) report({ error: { code: err.code, message: err.message } })
  } finally {
    await rm(pidFile, { force: true })
    if (req.kind === 'vm-volume') await provider.restoreVmCleanup(req.volname)
    else await provider.restoreContainerCleanup(req.volname)
  }
}

/**
 * The command line that runs this very program: the sources through tsx, tsc's output, or the
 * esbuild bundle (scripts/bundle.ts), where this module is a chunk named `chunk-<hash>.js` beside
 * the bundle's entry `bin.js`.
 */
const selfCommand = (): string[] => {
  const fromSource = import.meta.url.endsWith('.ts')
  const bundled = !fromSource && !import.meta.url.endsWith('/pve/holder.js')
  const entry = fileURLToPath(
    new URL(bundled ? './bin.js' : `../cli/bin.${fromSource ? 'ts' : 'js'}`, import.meta.url),
  )
  return fromSource
    ? [process.execPath, '--import', import.meta.resolve('tsx'), entry, 'pve-hold']
    : [process.execPath, entry, 'pve-hold']
}

const ResultLine = z.strictObject({ result: JsonSchema })
const ErrorLine = z.strictObject({
  error: z.strictObject({ code: z.string(), message: z.string() }),
})

/**
 * Start a detached holder for `req` and return its result (the path Proxmox reads). Fails
 * with the holder's own error, or `PROVIDER_FAILED` if it dies or hangs before reporting.
 */
export const startHolder = async (req: HoldRequest): Promise<JsonValue> => {
  const [cmd = process.execPath, ...args] = selfCommand()
  const child = spawn(cmd, args, { detached: true, stdio: ['pipe', 'pipe', 'ignore'] })
  child.stdin.end(`${JSON.stringify(req)}\n`)
  child.stdout.setEncoding('utf8')
  let out = ''
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGTERM')
      reject(new BackupError('PROVIDER_FAILED', 'the restore holder did not start in time'))
    }, READY_MS)
    child.stdout.on('data', (s: string) => {
      out += s
      const nl = out.indexOf('\n')
      if (nl !== -1) {
        clearTimeout(timer)
        resolve(out.slice(0, nl))
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new BackupError('PROVIDER_FAILED', `the restore holder exited (${code ?? 'signal'})`))
    })
    child.once('error', (e) => {
      clearTimeout(timer)
      reject(new BackupError('PROVIDER_FAILED', 'cannot start the restore holder', { cause: e }))
    })
  })
  child.stdout.destroy()
  child.unref()
  let parsed: unknown
  try {
    parsed = JSON.parse(line)
  } catch (e) {
    throw new BackupError('PROVIDER_FAILED', 'the restore holder answered nonsense', { cause: e })
  }
  const failed = ErrorLine.safeParse(parsed)
  if (failed.success) {
    const { code, message } = failed.data.error
    const known = ERROR_CODES.find((c) => c === code)
    throw new BackupError(known ?? 'PROVIDER_FAILED', message)
  }
  const ok = ResultLine.safeParse(parsed)
  if (!ok.success) throw new BackupError('PROVIDER_FAILED', 'the restore holder answered nonsense')
  return ok.data.result
}

/** Stop the holder registered under `k`, if any, and wait until it is gone. */
export const stopHolder = async (k: HoldKey): Promise<void> => {
  await stopPidFile(pidFileOf(k))
}

/** Stop every holder of `k`'s volume (all its devices). */
export const stopHolders = async (k: Omit<HoldKey, 'device'>): Promise<void> => {
  const prefix = volumePrefix(k)
  const names = await readdir(runDir()).catch(() => [] as string[])
  for (const name of names) {
    if (name.startsWith(prefix) && name.endsWith('.pid')) await stopPidFile(join(runDir(), name))
  }
}

const stopPidFile = async (pidFile: string): Promise<void> => {
  const text = await readFile(pidFile, 'utf8').catch(() => undefined)
  if (text === undefined) return
  const pid = Number(text.trim())
  if (!Number.isSafeInteger(pid) || pid <= 1 || !(await isHolder(pid))) {
    await rm(pidFile, { force: true })
    return
  }
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + STOP_MS
  while (processAlive(pid) && (await isHolder(pid))) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL')
      break
    }
    await sleep(50)
  }
  await rm(pidFile, { force: true })
}
