/**
 * The store commands without a module of their own: `init`, `show-config`, `prune`, `remove`,
 * `protect` and `notes`. program.ts declares their options and loads this module only when one
 * of them runs.
 */
import { BackupError } from '../../errors.ts'
import type { LockPolicy } from '../../io/lock.ts'
import type { Logger } from '../../log.ts'
import { parseVolname } from '../../provider/directory/layout.ts'
import { initStore, openStore } from '../../provider/directory/store.ts'
import { formatPruneBackups, parsePruneBackups } from '../../storage/prune-options.ts'
import { keepFromFlags } from '../prune-flags.ts'
import type { KeepFlags } from '../prune-flags.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { fmtBytes, jobView, showsProgress } from '../progress/index.ts'
import { resolveVolume } from '../volume.ts'
import { emit } from '../output/format.ts'
import { providerLog } from '../output/provider-log.ts'
import type { OutputFormat } from '../output/format.ts'

/** Options of `init` as commander parses them (camelCase). */
export type InitCommandOptions = Record<string, string | number | undefined>

/** `init STORE`: create a store, or change the given options of an existing one. */
export const initCommand = async (
  store: string,
  o: InitCommandOptions,
  io: CliIO,
  format: OutputFormat,
): Promise<void> => {
  const input = Object.fromEntries(
    Object.entries({
      'vm-backup-mode': o['vmBackupMode'],
      'vm-backup-mechanism': o['vmBackupMechanism'],
      'lxc-backup-mode': o['lxcBackupMode'],
      'prune-backups': o['pruneBackups'],
      'max-protected-backups': o['maxProtectedBackups'],
      'incremental-sample': o['incrementalSample'],
      'verify-after-backup': o['verifyAfterBackup'],
      'vm-compress': o['vmCompress'],
      'lxc-compress': o['lxcCompress'],
    }).filter(([, v]) => v !== undefined),
  )
  const r = await initStore(store, input, typeof o['id'] === 'string' ? o['id'] : undefined)
  // The text output has always been this indented JSON.
  emit(io.stdout, format, 'init', r, () => {
    writeLine(io.stdout, JSON.stringify(r, null, 2))
  })
}

/** `show-config VOLUME`: print the guest (or firewall) configuration kept in a backup. */
export const showConfigCommand = async (
  volume: string,
  o: { store: string; firewall?: boolean; vmid?: number },
  io: CliIO,
  format: OutputFormat,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o)
  parseVolname(volname)
  const provider = storage.newBackupProvider(() => undefined)
  const config = await provider.archiveGetGuestConfig(volname)
  const fw = await provider.archiveGetFirewallConfig(volname)
  if (o.firewall === true && fw === undefined) {
    throw new BackupError('NOT_FOUND', 'the backup has no firewall config')
  }
  const volid = `${storage.storeId}:${volname}`
  emit(io.stdout, format, 'show-config', { volid, config, firewall: fw ?? null }, () => {
    io.stdout.write(o.firewall === true ? (fw ?? '') : config)
  })
}

/** Options of `prune` as commander parses them. */
export interface PruneCommandOptions extends KeepFlags {
  store: string
  vmid?: number
  type?: 'qemu' | 'lxc'
  dryRun?: boolean
  lockWait?: number
  json?: boolean
}

/** `prune`: apply retention; prints each backup's mark and the merges it takes. */
export const pruneCommand = async (
  o: PruneCommandOptions,
  log: Logger,
  io: CliIO,
  lock: LockPolicy,
  format: OutputFormat,
): Promise<void> => {
  const keep = keepFromFlags(o)
  const storage = await openStore(o.store, lock)
  using progress = jobView(io.stderr, 'prune')
  const marks = await storage.pruneBackups({
    dryRun: o.dryRun === true,
    ...(keep === undefined ? {} : { keep }),
    ...(o.vmid === undefined ? {} : { vmid: o.vmid }),
    ...(o.type === undefined ? {} : { type: o.type }),
    log: providerLog(log, true),
    ...(showsProgress(progress)
      ? {
          onProgress: (ev) => {
            progress.update(ev)
          },
        }
      : {}),
  })
  progress.finish()
  const removed = marks.filter((m) => m.mark === 'remove')
  const bytes = removed.reduce((n, m) => n + (m.bytes ?? 0), 0)
  const merges = removed.reduce((n, m) => n + (m.merges?.length ?? 0), 0)
  const verb = o.dryRun === true ? 'would remove' : 'removed'
  log.info(
    { removed: removed.length, bytes, merges, dryRun: o.dryRun === true },
    `prune ${verb} ${removed.length} backups (${bytes} bytes, ${merges} merges)`,
  )
  const backups = marks.map((m) => ({
    volid: m.volid,
    vmid: m.vmid,
    type: m.type,
    ctime: m.ctime,
    mark: m.mark,
    bytes: m.mark === 'remove' ? (m.bytes ?? null) : null,
    merges: [...(m.merges ?? [])],
  }))
  // The retention applied: --keep / --keep-* when given, else the store's prune-backups.
  const applied = formatPruneBackups(keep ?? parsePruneBackups(storage.options['prune-backups']))
  const value = { 'dry-run': o.dryRun === true, keep: applied, backups }
  emit(io.stdout, format, 'prune', value, () => {
    for (const m of marks) {
      const merges = (m.merges ?? []).map(
        (x) => `  merges ${x.device} into ${x.child} (writes ${fmtBytes(x.bytes)})`,
      )
      writeLine(io.stdout, `${m.volid}  ${m.mark}${merges.join('')}`)
    }
  })
}

/**
 * `remove` names the backup itself: `latest` would delete whichever backup is newest when the
 * command runs (another backup may have finished meanwhile), so it is refused.
 */
const REMOVE_LATEST =
  "remove takes the backup's own name, not 'latest' (see list --vmid N for the newest)"

/** `remove VOLUME`: remove one backup, merging its dependants first (with progress). */
export const removeCommand = async (
  volume: string,
  o: { store: string },
  log: Logger,
  lock: LockPolicy,
  io: CliIO,
  format: OutputFormat,
): Promise<void> => {
  const storage = await openStore(o.store, lock)
  const volname = await resolveVolume(storage, volume, { refuseLatest: REMOVE_LATEST })
  using progress = jobView(io.stderr, `remove ${volname}`)
  const r = await storage.removeBackup(volname, {
    log: providerLog(log),
    ...(showsProgress(progress)
      ? {
          onProgress: (ev) => {
            progress.update(ev)
          },
        }
      : {}),
  })
  progress.finish()
  const volid = `${storage.storeId}:${volname}`
  log.info({ volid, bytes: r.bytes, merges: r.merges.length }, `removed ${volid}`)
  // Text: nothing on stdout, as before (the -v log says what was done).
  emit(io.stdout, format, 'remove', { volid, ...r }, () => undefined)
}

/** `protect VOLUME [--off]`. */
export const protectCommand = async (
  volume: string,
  o: { store: string; off?: boolean; vmid?: number },
  log: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o, log)
  await storage.updateVolumeAttribute(volname, 'protected', o.off !== true)
  const value = { volid: `${storage.storeId}:${volname}`, protected: o.off !== true }
  emit(io.stdout, format, 'protect', value, () => undefined)
}

/** `notes VOLUME [--set TEXT]`: print or replace the notes of a backup. */
export const notesCommand = async (
  volume: string,
  o: { store: string; set?: string; vmid?: number },
  io: CliIO,
  log: Logger,
  format: OutputFormat,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o, log)
  if (o.set !== undefined) await storage.updateVolumeAttribute(volname, 'notes', o.set)
  const notes = await storage.getVolumeAttribute(volname, 'notes')
  const volid = `${storage.storeId}:${volname}`
  emit(io.stdout, format, 'notes', { volid, notes: notes ?? null }, () => {
    // Text: --set prints nothing, as before.
    if (o.set === undefined) io.stdout.write(notes ?? '')
  })
}
