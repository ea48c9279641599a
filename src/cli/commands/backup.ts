/** `guestbackup backup`: back up one offline VM (disk images) or one container directory. */
import { stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { BackupError } from '../../errors.ts'
import { readInputFile } from '../../io/beneath.ts'
import type { Guest } from '../../host/runner.ts'
import { runBackupJob } from '../../host/runner.ts'
import { inspectDisk } from '../../host/disks.ts'
import type { Logger } from '../../log.ts'
import { CONFIG_MAX_BYTES } from '../../provider/directory/restore.ts'
import { openStore } from '../../provider/directory/store.ts'
import { insideOrSame, realPathOf } from '../paths.ts'
import type { DiskArg } from '../parse.ts'
import { fmtBytes, jobView, showsProgress } from '../progress/index.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { LOCK_WAIT_DEFAULTS } from '../parse.ts'
import { STD_EXCLUDES } from '../parse-backup.ts'
import { afterBackup, checkBeforeBackup } from './backup-after.ts'
import type { ArchiveCompression, CompressionType } from '../../api/provider.ts'
import { emit } from '../output/format.ts'
import { idMapOfConfig, parseIdMapArgs } from '../../api/idmap-parse.ts'
import type { OutputFormat } from '../output/format.ts'
import { backupReport } from '../output/backup-report.ts'
import type { DirectoryProvider } from '../../provider/directory/provider.ts'

/** Options of the backup command as commander parses them. */
export interface BackupCommandOptions {
  store: string
  vmid: number
  config: string
  firewallConfig?: string
  disk?: DiskArg[]
  rootfs?: string
  /** vzdump's `exclude-path` patterns. */
  excludePath?: string[]
  /** vzdump's `stdexcludes`; undefined: its default, on. */
  stdexcludes?: boolean
  qmp?: string
  qga?: string
  device?: string[]
  fleecingDir?: string
  allowHostRoot?: boolean
  /** `--idmap` entries, unparsed (idmap-parse.ts). */
  idmap?: string[]
  /** vzdump's `compress` (parse.ts `parseCompress`). */
  compress?: 'zstd' | 'gzip' | 'lzo' | 'none'
  /** vzdump's `zstd`: threads, 0 half of the cores. */
  zstd?: number
  bwlimit?: number
  /** How long to wait for the guest's lock, ms (default {@link LOCK_WAIT_DEFAULTS} `backup`). */
  lockWait?: number
  json?: boolean
  notesTemplate?: string
  protected?: boolean
  remove?: boolean
}

/**
 * The compression `--compress` and `--zstd` ask for; without `--compress` the store's
 * `lxc-compress` decides (`--zstd` then sets the threads if that is zstd).
 */
export const compressionOf = (
  type: CompressionType | undefined,
  zstd: number | undefined,
): ArchiveCompression | undefined => {
  if (type === undefined && zstd === undefined) return undefined
  return {
    ...(type === undefined ? {} : { type }),
    ...(zstd === undefined ? {} : { zstdThreads: zstd }),
  }
}

const readText = (path: string, what: string): Promise<string> =>
  readInputFile(path, what, CONFIG_MAX_BYTES)

/**
 * Excludes that keep guestbackup's own directories (the store, the temp dir) out of a container
 * backup whose root contains them, as anchored vzdump patterns; `/` itself is refused unless
 * forced, and a root inside the store is refused.
 */
export const ownDirExcludes = async (
  rootfs: string,
  own: readonly (readonly [string, string])[],
  allowHostRoot: boolean,
): Promise<{ excludes: string[]; notes: string[] }> => {
  const root = await realPathOf(rootfs)
  if (root === '/' && !allowHostRoot) {
    throw new BackupError(
      'USAGE',
      `--rootfs ${rootfs} is the host's root directory: give --allow-host-root to back it up`,
    )
  }
  const excludes: string[] = []
  const notes: string[] = []
  for (const [what, path] of own) {
    const real = await realPathOf(path)
    if (what === 'store' && insideOrSame(root, real)) {
      throw new BackupError('USAGE', `--rootfs ${rootfs} is inside the ${what} ${path}`)
    }
    if (!insideOrSame(real, root)) continue
    const rel = real.slice(root === '/' ? 0 : root.length)
    if (rel === '') continue
    excludes.push(rel)
    notes.push(`the ${what} ${real} is inside the container root: excluded`)
  }
  return { excludes, notes }
}

/** Run the backup command; returns the exit code. Results go to io.stdout, progress to stderr. */
export const backupCommand = async (
  o: BackupCommandOptions,
  logger: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  const { signal } = io
  const disks = o.disk ?? []
  const sources = [disks.length > 0, o.rootfs !== undefined, o.qmp !== undefined].filter(Boolean)
  if (sources.length !== 1) {
    throw new BackupError(
      'USAGE',
      'give exactly one of --disk NAME=PATH (stopped VM), --qmp SOCKET (running VM), --rootfs DIR (container)',
    )
  }
  if (
    (o.qga !== undefined || o.device !== undefined || o.fleecingDir !== undefined) &&
    o.qmp === undefined
  ) {
    throw new BackupError(
      'USAGE',
      '--qga, --device and --fleecing-dir apply to running VMs (--qmp) only',
    )
  }
  if (
    (o.excludePath !== undefined || o.stdexcludes !== undefined || o.allowHostRoot === true) &&
    o.rootfs === undefined
  ) {
    throw new BackupError(
      'USAGE',
      '--exclude-path, --stdexcludes and --allow-host-root apply to container backups (--rootfs) only',
    )
  }
  if (o.idmap !== undefined && o.rootfs === undefined) {
    throw new BackupError('USAGE', '--idmap applies to container backups (--rootfs) only')
  }
  if ((o.compress !== undefined || o.zstd !== undefined) && o.rootfs === undefined) {
    // VM images are compressed by the store's vm-compress (qcow2 clusters), not a stream.
    throw new BackupError(
      'USAGE',
      "--compress and --zstd apply to container backups (--rootfs) only; VM images follow the store's vm-compress",
    )
  }
  if (o.zstd !== undefined && o.compress !== undefined && o.compress !== 'zstd') {
    throw new BackupError('USAGE', `--zstd applies to --compress zstd, not ${o.compress}`)
  }
  const idmapArg = o.idmap === undefined ? undefined : parseIdMapArgs(o.idmap)
  for (const [flag, path] of [
    ['--qmp', o.qmp],
    ['--qga', o.qga],
  ] as const) {
    if (path === undefined) continue
    const st = await stat(path).catch(() => undefined)
    if (st?.isSocket() !== true) {
      throw new BackupError('USAGE', `${flag} ${path} is not a unix socket`)
    }
  }
  const storage = await openStore(o.store, {
    waitMs: o.lockWait ?? LOCK_WAIT_DEFAULTS.backup,
    signal,
    log: (m) => {
      logger.warn(m)
    },
  })
  await checkBeforeBackup(
    storage,
    { vmid: o.vmid, type: o.rootfs === undefined ? 'qemu' : 'lxc' },
    o,
  )
  const config = await readText(o.config, 'guest config')
  const firewall =
    o.firewallConfig === undefined ? undefined : await readText(o.firewallConfig, 'firewall config')
  let guest: Guest
  if (o.qmp !== undefined) {
    guest = {
      type: 'qemu',
      vmid: o.vmid,
      config,
      qmp: o.qmp,
      qga: o.qga,
      fleeceDir: o.fleecingDir,
      devices: o.device?.map((d) => (d.startsWith('drive-') ? d : `drive-${d}`)),
      ...(firewall === undefined ? {} : { firewallConfig: firewall }),
    }
  } else if (o.rootfs !== undefined) {
    const own = await ownDirExcludes(
      o.rootfs,
      [
        ['store', o.store],
        ['temporary directory', tmpdir()],
      ],
      o.allowHostRoot === true,
    )
    for (const n of own.notes) logger.warn(n)
    guest = {
      type: 'lxc',
      vmid: o.vmid,
      config,
      rootfs: o.rootfs,
      // An explicit --idmap wins over the config's (pve-container's parse_id_maps).
      idMap: idmapArg ?? idMapOfConfig(config),
      compress: compressionOf(o.compress, o.zstd),
      // vzdump's order (PVE/VZDump.pm `sub new`): exclude-path, then the standard excludes.
      excludes: [
        ...(o.excludePath ?? []),
        ...(o.stdexcludes === false ? [] : STD_EXCLUDES),
        ...own.excludes,
      ],
      ...(firewall === undefined ? {} : { firewallConfig: firewall }),
    }
  } else {
    const specs = []
    for (const d of disks)
      specs.push(await inspectDisk(`drive-${d.name}`, d.path, d.format, signal))
    guest = {
      type: 'qemu',
      vmid: o.vmid,
      config,
      disks: specs,
      ...(firewall === undefined ? {} : { firewallConfig: firewall }),
    }
  }
  using progress = jobView(io.stderr, `${o.vmid} backup`)
  const started = performance.now()
  let provider: DirectoryProvider | undefined
  const [result] = await runBackupJob({
    provider: (log) => (provider = storage.newBackupProvider(log)),
    storeId: storage.storeId,
    bitmapKey: storage.bitmapKey,
    guests: [guest],
    bandwidthLimit: o.bwlimit,
    logger,
    ...(showsProgress(progress)
      ? {
          onProgress: (_vmid, ev) => {
            progress.update(ev)
          },
        }
      : {}),
    signal,
  })
  if (result?.status === 'ok') progress.finish()
  if (result === undefined) throw new BackupError('PROVIDER_FAILED', 'no result')
  if (result.status === 'ok' && result.volid !== undefined) {
    const volname = result.volid.slice(result.volid.indexOf(':') + 1)
    await afterBackup(storage, volname, { vmid: o.vmid, type: guest.type, config }, o, logger)
  }
  const duration = (performance.now() - started) / 1000
  const volname = result.volid?.slice(result.volid.indexOf(':') + 1)
  const manifest =
    result.status === 'ok' && volname !== undefined
      ? await storage.manifestOf(volname).catch(() => undefined)
      : undefined
  const report = backupReport({
    result,
    manifest,
    fullReasons: provider?.fullReasons(result.vmid) ?? {},
    duration,
    storeId: storage.storeId,
  })
  const { disks: _disks, warnings, error: _error, ...summary } = report
  if (result.status === 'ok') {
    for (const d of report.disks) {
      const { device, mode, read, stored } = d
      const what = `${device}: ${mode}, ${read} bytes read, ${stored} bytes stored`
      logger.info({ vmid: result.vmid, volid: report.volid, device, mode, read, stored }, what)
    }
    logger.info({ ...summary, warnings: warnings.count }, `backup of ${result.vmid} done`)
  }
  emit(io.stdout, format, 'backup', report, () => {
    if (result.status === 'ok') {
      writeLine(io.stdout, `${result.volid ?? ''} ${fmtBytes(result.archiveSize ?? 0)}`)
    }
  })
  if (result.status !== 'ok') {
    const err = result.error ?? new BackupError('PROVIDER_FAILED', 'backup failed')
    const failed = result.volid === undefined ? undefined : await storage.failedLog(result.volid)
    if (failed === undefined) throw err
    throw new BackupError(err.code, `${err.message} (task log: ${failed})`, { cause: err })
  }
  return 0
}
