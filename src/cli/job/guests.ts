/**
 * A job file's `[[guest]]` tables as the runner's guests, each read when its turn comes (its
 * config, its disks' headers, its sockets), with the same rules as `guestbackup backup`.
 */
import { stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { BackupError } from '../../errors.ts'
import { inspectDisk } from '../../host/disks.ts'
import type { Guest, PendingGuest } from '../../host/runner.ts'
import { readInputFile } from '../../io/beneath.ts'
import { CONFIG_MAX_BYTES } from '../../provider/directory/restore.ts'
import { ownDirExcludes } from '../commands/backup.ts'
import { jobPath } from './load.ts'
import type { JobGuestSpec } from './schema.ts'

/** A unix socket named by key `key` of the guest's table. */
const socketAt = async (key: string, path: string): Promise<string> => {
  const st = await stat(path).catch(() => undefined)
  if (st?.isSocket() !== true) throw new BackupError('USAGE', `${key} ${path} is not a unix socket`)
  return path
}

/** Options of {@link pendingGuests}. */
export interface PendingGuestsOptions {
  /** The job file: relative paths are taken from its directory. */
  file: string
  /** The store's directory (kept out of a container's archive). */
  store: string
  signal: AbortSignal
  /** Notes on what was excluded. */
  warn: (message: string) => void
}

/** One pending guest per `[[guest]]`, in the file's order. */
export const pendingGuests = (
  specs: readonly JobGuestSpec[],
  opts: PendingGuestsOptions,
): PendingGuest[] =>
  specs.map((spec) => ({
    vmid: spec.vmid,
    type: spec.rootfs === undefined ? 'qemu' : 'lxc',
    running: spec.qmp !== undefined,
    readConfig: () =>
      readInputFile(jobPath(opts.file, spec.config), 'guest config', CONFIG_MAX_BYTES),
    resolve: (config: string) => resolveGuest(spec, config, opts),
  }))

const resolveGuest = async (
  spec: JobGuestSpec,
  config: string,
  opts: PendingGuestsOptions,
): Promise<Guest> => {
  const path = (p: string): string => jobPath(opts.file, p)
  const fw = spec['firewall-config']
  const firewall =
    fw === undefined
      ? {}
      : { firewallConfig: await readInputFile(path(fw), 'firewall config', CONFIG_MAX_BYTES) }
  const { vmid } = spec
  if (spec.qmp !== undefined) {
    return {
      type: 'qemu',
      vmid,
      config,
      qmp: await socketAt('qmp', path(spec.qmp)),
      qga: spec.qga === undefined ? undefined : await socketAt('qga', path(spec.qga)),
      fleeceDir: spec['fleecing-dir'] === undefined ? undefined : path(spec['fleecing-dir']),
      devices: spec.devices?.map((d) => (d.startsWith('drive-') ? d : `drive-${d}`)),
      ...firewall,
    }
  }
  if (spec.rootfs !== undefined) {
    const rootfs = path(spec.rootfs)
    const own = await ownDirExcludes(
      rootfs,
      [
        ['store', opts.store],
        ['temporary directory', tmpdir()],
      ],
      spec['allow-host-root'] === true,
    )
    for (const n of own.notes) opts.warn(n)
    return {
      type: 'lxc',
      vmid,
      config,
      rootfs,
      excludes: [...(spec.exclude ?? []), ...own.excludes],
      ...firewall,
    }
  }
  const disks = []
  for (const d of spec.disks ?? []) {
    disks.push(await inspectDisk(`drive-${d.name}`, path(d.path), d.format, opts.signal))
  }
  return { type: 'qemu', vmid, config, disks, ...firewall }
}
