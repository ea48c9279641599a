/**
 * The VM part of a backup (qemu-server's `archive_external` for offline disks): sizes, the
 * incremental query, one NBD export (or reader) per disk, `backupVm`, teardown on every path.
 */
import type {
  BackupInfo,
  BackupProvider,
  BitmapMode,
  IncrementalQuery,
  VmVolume,
} from '../api/provider.ts'
import { BackupError } from '../errors.ts'
import type { ProgressInfo } from '../provider/directory/provider.ts'
import type { QemuNbd } from '../qemu/nbd-server.ts'
import { diskSize, openDiskReader, serveDisk } from './disks.ts'
import type { DiskSpec, OpenedReader } from './disks.ts'
import type { TaskLog } from './task-log.ts'

/** A VM to back up. */
export interface VmGuest {
  type: 'qemu'
  vmid: number
  /** Guest configuration text stored with the backup. */
  config: string
  firewallConfig?: string
  disks: readonly DiskSpec[]
}

/** Offline disks have no dirty bitmap: every answer becomes a full read. */
const offlineBitmapMode = (_q: IncrementalQuery | undefined): BitmapMode => 'none'

/** Run the VM part; the caller handles init and cleanup. */
export const backupVmGuest = async (
  provider: BackupProvider,
  guest: VmGuest,
  info: BackupInfo & ProgressInfo,
  log: TaskLog,
): Promise<void> => {
  const mechanism = await provider.backupGetMechanism(guest.vmid, 'qemu')
  if (mechanism !== 'nbd' && mechanism !== 'file-handle') {
    throw new BackupError(
      'PROVIDER_INVALID',
      `mechanism '${mechanism}' requested by backup provider is not supported for VMs`,
    )
  }
  if (guest.disks.length === 0) throw new BackupError('USAGE', 'the VM has no disks')
  const sizes: Record<string, { size: number }> = {}
  for (const d of guest.disks) {
    if (sizes[d.device] !== undefined) throw new BackupError('USAGE', `duplicate disk ${d.device}`)
    sizes[d.device] = { size: await diskSize(d, info.signal) }
  }
  const query = (await provider.backupVmQueryIncremental(guest.vmid, sizes)) ?? {}
  for (const device of Object.keys(query)) {
    if (sizes[device] === undefined) {
      throw new BackupError('PROVIDER_INVALID', `incremental answer names unknown ${device}`)
    }
    const q = query[device]
    if (q !== 'new' && q !== 'use' && q !== 'none') {
      throw new BackupError('PROVIDER_INVALID', `invalid incremental mode '${String(q)}'`)
    }
  }
  const servers: QemuNbd[] = []
  const readers: OpenedReader[] = []
  try {
    const volumes: Record<string, VmVolume> = {}
    for (const d of guest.disks) {
      const size = sizes[d.device]?.size ?? 0
      const bitmapMode = offlineBitmapMode(query[d.device])
      log.info(`${d.device}: ${d.format} ${d.path}, ${size} bytes, bitmap ${bitmapMode}`)
      if (mechanism === 'nbd') {
        const server = await serveDisk(d, info.signal)
        servers.push(server)
        volumes[d.device] = { size, bitmapMode, nbdPath: server.socketPath }
      } else {
        const opened = await openDiskReader(d, info.signal)
        readers.push(opened)
        let given = false
        volumes[d.device] = {
          size,
          bitmapMode,
          fileHandle: opened.reader,
          nextDirtyRegion: () => {
            const r = given ? undefined : ([0, size] as const)
            given = true
            return Promise.resolve(r)
          },
        }
      }
    }
    await provider.backupVm(guest.vmid, guest.config, volumes, info)
  } finally {
    for (const r of readers) await r.close()
    for (const s of servers) await s.stop()
  }
}
