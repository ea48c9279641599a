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
import { formatPruneBackups, parsePruneBackups } from '../../storage/prune-options.ts'
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
