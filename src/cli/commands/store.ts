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
import { keepFromFlags } from '../prune-flags.ts'
import type { KeepFlags } from '../prune-flags.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { fmtBytes, jobView, NO_VIEW, showsProgress } from '../progress/index.ts'
import { resolveVolume } from '../volume.ts'

/** Options of `init` as commander parses them (camelCase). */
export type InitCommandOptions = Record<string, string | number | undefined>

/** `init STORE`: create a store, or change the given options of an existing one. */
export const initCommand = async (
  store: string,
  o: InitCommandOptions,
  io: CliIO,
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
    }).filter(([, v]) => v !== undefined),
  )
  const r = await initStore(store, input, typeof o['id'] === 'string' ? o['id'] : undefined)
  writeLine(io.stdout, JSON.stringify(r, null, 2))
}

/** `show-config VOLUME`: print the guest (or firewall) configuration kept in a backup. */
export const showConfigCommand = async (
  volume: string,
  o: { store: string; firewall?: boolean; vmid?: number },
  io: CliIO,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o)
  parseVolname(volname)
  const provider = storage.newBackupProvider(() => undefined)
  if (o.firewall === true) {
    const fw = await provider.archiveGetFirewallConfig(volname)
    if (fw === undefined) throw new BackupError('NOT_FOUND', 'the backup has no firewall config')
    io.stdout.write(fw)
  } else {
    io.stdout.write(await provider.archiveGetGuestConfig(volname))
  }
}

/** Options of `prune` as commander parses them. */
export interface PruneCommandOptions extends KeepFlags {
  store: string
  vmid?: number
  type?: 'qemu' | 'lxc'
  dryRun?: boolean
  lockWait?: number
}

/** `prune`: apply retention; prints each backup's mark and the merges it takes. */
export const pruneCommand = async (
  o: PruneCommandOptions,
  log: Logger,
  io: CliIO,
  lock: LockPolicy,
): Promise<void> => {
  const keep = keepFromFlags(o)
  const storage = await openStore(o.store, lock)
  using progress = jobView(io.stderr, 'prune')
  const marks = await storage.pruneBackups({
    dryRun: o.dryRun === true,
    ...(keep === undefined ? {} : { keep }),
    ...(o.vmid === undefined ? {} : { vmid: o.vmid }),
    ...(o.type === undefined ? {} : { type: o.type }),
    log: (level, msg) => {
      if (level === 'err') log.error(msg)
      else log.info(msg)
    },
    ...(showsProgress(progress)
      ? {
          onProgress: (ev) => {
            progress.update(ev)
          },
        }
      : {}),
  })
  progress.finish()
  for (const m of marks) {
    const merges = (m.merges ?? []).map(
      (x) => `  merges ${x.device} into ${x.child} (writes ${fmtBytes(x.bytes)})`,
    )
    writeLine(io.stdout, `${m.volid}  ${m.mark}${merges.join('')}`)
  }
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
  io?: CliIO,
): Promise<void> => {
  const storage = await openStore(o.store, lock)
  const volname = await resolveVolume(storage, volume, { refuseLatest: REMOVE_LATEST })
  using progress = io === undefined ? NO_VIEW : jobView(io.stderr, `remove ${volname}`)
  await storage.freeImage(volname, {
    log: (level, msg) => {
      if (level === 'err') log.error(msg)
      else if (level === 'warn') log.warn(msg)
      else log.info(msg)
    },
    ...(showsProgress(progress)
      ? {
          onProgress: (ev) => {
            progress.update(ev)
          },
        }
      : {}),
  })
  progress.finish()
}

/** `protect VOLUME [--off]`. */
export const protectCommand = async (
  volume: string,
  o: { store: string; off?: boolean; vmid?: number },
  log: Logger,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o, log)
  await storage.updateVolumeAttribute(volname, 'protected', o.off !== true)
}

/** `notes VOLUME [--set TEXT]`: print or replace the notes of a backup. */
export const notesCommand = async (
  volume: string,
  o: { store: string; set?: string; vmid?: number },
  io: CliIO,
  log: Logger,
): Promise<void> => {
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o, log)
  if (o.set !== undefined) await storage.updateVolumeAttribute(volname, 'notes', o.set)
  else io.stdout.write((await storage.getVolumeAttribute(volname, 'notes')) ?? '')
}
