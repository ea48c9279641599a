/**
 * What vzdump does to a new backup before its task ends (pve-manager `PVE/VZDump.pm`,
 * `exec_backup_task`): notes from `--notes-template` (a failure is a warning), protection
 * (`--protected`; a failure fails the task) and, with `--remove` (default 1), a prune of the
 * guest's backups of that type by the store's `prune-backups`.
 */
import { readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { BackupError, toBackupError } from '../../errors.ts'
import type { Logger } from '../../log.ts'
import type { DirectoryStorage } from '../../provider/directory/storage.ts'
import {
  KEEP_COUNT_KEYS,
  formatPruneBackups,
  parsePruneBackups,
} from '../../storage/prune-options.ts'
import { generateNotes } from '../parse-backup.ts'

/** What to do after a successful backup. */
export interface AfterBackup {
  notesTemplate?: string | undefined
  protected?: boolean | undefined
  /** Prune the guest by the store's retention; vzdump's default `remove 1`. */
  remove?: boolean | undefined
}

/**
 * The guest's name as vzdump's `{{guestname}}` takes it: the VM's `name` or the container's
 * `hostname` from the main section of its config, else `VM <vmid>` (pve-manager
 * `PVE/VZDump.pm` `$generate_notes`; qemu-server and pve-container set `hostname` of the task).
 */
export const guestName = (config: string, type: 'qemu' | 'lxc', vmid: number): string => {
  const main = config.split(/^\[/m)[0] ?? ''
  const key = type === 'qemu' ? 'name' : 'hostname'
  const m = new RegExp(`^${key}:\\s*(\\S.*?)\\s*$`, 'm').exec(main)
  return m?.[1] ?? (type === 'lxc' ? `CT${vmid}` : `VM ${vmid}`)
}

/**
 * The cluster's name as `PVE::Cluster::get_clinfo` has it (`cluster_name` of
 * `/etc/pve/corosync.conf`), or vzdump's fallback `standalone node`.
 */
const clusterName = async (): Promise<string> => {
  const conf = await readFile('/etc/pve/corosync.conf', 'utf8').catch(() => '')
  return /^\s*cluster_name:\s*(\S+)/m.exec(conf)?.[1] ?? 'standalone node'
}

/** `PVE::INotify::nodename`: the host name up to its first dot. */
const nodeName = (): string => hostname().split('.')[0] ?? hostname()

/**
 * vzdump's checks before a backup starts (pve-manager `PVE/VZDump.pm`, `exec_backup_task`):
 * with `--protected`, the guest's protected backups of that type must stay under the store's
 * `max-protected-backups`; with `--remove 0`, its unprotected backups under the sum of the
 * retention's counts (unless `keep-all`), since nothing will prune them.
 *
 * @throws BackupError `PROTECTED` for the first, `USAGE` for the second.
 */
export const checkBeforeBackup = async (
  storage: DirectoryStorage,
  guest: { vmid: number; type: 'qemu' | 'lxc' },
  o: AfterBackup,
): Promise<void> => {
  const keep = parsePruneBackups(storage.options['prune-backups'])
  const limit =
    keep['keep-all'] === true ? 0 : KEEP_COUNT_KEYS.reduce((sum, k) => sum + (keep[k] ?? 0), 0)
  if (!((limit > 0 && o.remove === false) || o.protected === true)) return
  const backups = await storage.listVolumes({ vmid: guest.vmid, subtype: guest.type })
  const prot = backups.filter((b) => b.protected).length
  if (o.protected === true) {
    const max = storage.options['max-protected-backups']
    if (max > -1 && prot >= max) {
      throw new BackupError(
        'PROTECTED',
        `the number of protected backups per guest is limited to ${max} on this store`,
      )
    }
  } else if (backups.length - prot >= limit) {
    throw new BackupError(
      'USAGE',
      `there is a max backup limit of ${limit} (the store's prune-backups) and --remove 0: increase the limit or delete old backups`,
    )
  }
}

/**
 * Apply {@link AfterBackup} to the backup `volname` of guest `vmid`, as vzdump does and in its
 * order: notes, protection, prune. Throws only for the protection.
 */
export const afterBackup = async (
  storage: DirectoryStorage,
  volname: string,
  guest: { vmid: number; type: 'qemu' | 'lxc'; config: string },
  o: AfterBackup,
  log: Logger,
): Promise<void> => {
  if (o.notesTemplate !== undefined && o.notesTemplate !== '') {
    log.info('adding notes to backup')
    try {
      const notes = generateNotes(o.notesTemplate, {
        cluster: await clusterName(),
        guestname: guestName(guest.config, guest.type, guest.vmid),
        node: nodeName(),
        vmid: guest.vmid,
      })
      await storage.updateVolumeAttribute(volname, 'notes', notes)
    } catch (e) {
      log.warn(`unable to add notes - ${toBackupError(e).message}`)
    }
  }
  if (o.protected === true) {
    log.info('marking backup as protected')
    try {
      await storage.updateVolumeAttribute(volname, 'protected', true)
    } catch (e) {
      // The backup is committed: say which one stays unprotected.
      const err = toBackupError(e)
      throw new BackupError(
        err.code,
        `${volname} is stored, but unable to set protected flag - ${err.message}`,
        {
          cause: e,
        },
      )
    }
  }
  if (o.remove !== false) {
    const keep = parsePruneBackups(storage.options['prune-backups'])
    // vzdump prints the retention as `key=value, key=value`.
    log.info(
      `prune older backups with retention: ${formatPruneBackups(keep).replaceAll(',', ', ')}`,
    )
    const marks = await storage.pruneBackups({
      keep,
      vmid: guest.vmid,
      type: guest.type,
      dryRun: false,
      log: (level, msg) => {
        if (level === 'err') log.error(msg)
        else log.info(msg)
      },
    })
    const pruned = marks.filter((m) => m.mark === 'remove').length
    log.info(
      `pruned ${pruned} backup(s)${pruned > 0 ? ' not covered by keep-retention policy' : ''}`,
    )
  }
}
