/**
 * The backup-provider methods of the Proxmox VE plugin (`PVE::BackupProvider::Plugin::Base`,
 * pve-backup-provider-api.md §2.3) on the directory provider: Perl arguments (kebab-case keys)
 * to our camelCase API and the results back to Perl's shapes.
 */
import * as z from 'zod'
import type {
  BackupInfo,
  ContainerBackupInfo,
  ProviderLogFunction,
  VmVolume,
} from '../api/provider.ts'
import type { ProgressEvent } from '../api/progress.ts'
import type { DirectoryProvider } from '../provider/directory/provider.ts'
import { startHolder, stopHolder, stopHolders } from './holder.ts'
import { scfgPath, parseArgs, PerlBool, PerlInt, PerlString, Vmid, VmType } from './args.ts'
import type { JsonValue } from './protocol.ts'

/** What a provider method gets. */
export interface ProviderCall {
  provider: DirectoryProvider
  log: ProviderLogFunction
  args: readonly JsonValue[]
  signal: AbortSignal
  /** The request's storage id and storage.cfg section (restores start holders with them). */
  storeid: string
  scfg: Readonly<Record<string, JsonValue>>
}

type ProviderMethod = (call: ProviderCall) => Promise<JsonValue>

const Volname = PerlString
const Time = PerlInt.pipe(z.number().nonnegative())
const Size = PerlInt.pipe(z.number().nonnegative())
// "the service ignores a string where $info is expected" (pve-container's $storeid quirk).
const Ignored = z.unknown()

// `$info` of backup_vm: Perl keys; other keys Proxmox may add are ignored.
const InfoSchema = z.object({
  'bandwidth-limit': PerlInt.pipe(z.number().nonnegative()).nullable().optional(),
  'firewall-config': z.string().nullable().optional(),
})

const ContainerInfoSchema = InfoSchema.extend({
  directory: z.string().startsWith('/', 'must be absolute'),
  sources: z.array(z.string()).min(1),
  'backup-user-id': PerlInt.pipe(z.number().nonnegative()),
})

// `$volumes->{$device}` of backup_vm, nbd mechanism (the only one guestbackup answers).
const VolumeSchema = z.object({
  size: Size,
  'bitmap-mode': z.enum(['none', 'new', 'reuse']),
  'nbd-path': z.string().startsWith('/', 'must be an absolute socket path'),
  'bitmap-name': z.string().min(1).nullable().optional(),
})

const backupInfo = (i: z.output<typeof InfoSchema>, signal: AbortSignal): BackupInfo => ({
  signal,
  ...(i['bandwidth-limit'] ? { bandwidthLimit: i['bandwidth-limit'] } : {}),
  ...(typeof i['firewall-config'] === 'string' ? { firewallConfig: i['firewall-config'] } : {}),
})

const containerInfo = (
  i: z.output<typeof ContainerInfoSchema>,
  signal: AbortSignal,
): ContainerBackupInfo => ({
  ...backupInfo(i, signal),
  directory: i.directory,
  sources: i.sources,
  backupUserId: i['backup-user-id'],
})

const fmtGiB = (n: number): string => `${(n / 1024 ** 3).toFixed(1)} GiB`

/** Progress as task log lines: one per device and whole 10 % step. */
const progressLogger = (log: ProviderLogFunction): ((ev: ProgressEvent) => void) => {
  const last = new Map<string, number>()
  return (ev) => {
    if (ev.total <= 0) return
    const step = Math.floor((ev.done / ev.total) * 10)
    if ((last.get(ev.item) ?? 0) >= step) return
    last.set(ev.item, step)
    const pct = Math.floor((ev.done / ev.total) * 100)
    log('info', `${ev.item}: ${pct}% (${fmtGiB(ev.done)} of ${fmtGiB(ev.total)})`)
  }
}

/** The provider methods by Perl name. */
export const PROVIDER_METHODS: Readonly<Record<string, ProviderMethod>> = {
  provider_name: async ({ provider }) => {
    await Promise.resolve()
    return provider.name
  },

  job_init: async ({ provider, args }) => {
    const [start] = parseArgs('job_init', [Time], args)
    await provider.jobInit(start)
    return null
  },

  job_cleanup: async ({ provider }) => {
    await provider.jobCleanup()
    return null
  },

  backup_init: async ({ provider, args }) => {
    const [vmid, vmtype, start] = parseArgs('backup_init', [Vmid, VmType, Time], args)
    const r = await provider.backupInit(vmid, vmtype, start)
    return { 'archive-name': r.archiveName }
  },

  backup_get_mechanism: async ({ provider, args }) => {
    const [vmid, vmtype] = parseArgs('backup_get_mechanism', [Vmid, VmType], args)
    return await provider.backupGetMechanism(vmid, vmtype)
  },

  backup_vm_query_incremental: async ({ provider, args }) => {
    const [vmid, volumes] = parseArgs(
      'backup_vm_query_incremental',
      [Vmid, z.record(z.string(), z.object({ size: Size }))],
      args,
    )
    const sizes = Object.fromEntries(Object.entries(volumes).map(([d, v]) => [d, { size: v.size }]))
    const r = await provider.backupVmQueryIncremental(vmid, sizes)
    return r === undefined || Object.keys(r).length === 0 ? null : { ...r }
  },

  backup_vm: async ({ provider, log, args, signal }) => {
    const [vmid, config, volumes, info] = parseArgs(
      'backup_vm',
      [Vmid, PerlString, z.record(z.string(), VolumeSchema), InfoSchema],
      args,
    )
    const vols: Record<string, VmVolume> = {}
    for (const [device, v] of Object.entries(volumes)) {
      vols[device] = {
        size: v.size,
        bitmapMode: v['bitmap-mode'],
        nbdPath: v['nbd-path'],
        ...(typeof v['bitmap-name'] === 'string' ? { bitmapName: v['bitmap-name'] } : {}),
      }
    }
    await provider.backupVm(vmid, config, vols, {
      ...backupInfo(info, signal),
      onProgress: progressLogger(log),
    })
    return null
  },

  backup_container_prepare: async ({ provider, args, signal }) => {
    const [vmid, info] = parseArgs('backup_container_prepare', [Vmid, ContainerInfoSchema], args)
    await provider.backupContainerPrepare(vmid, containerInfo(info, signal))
    return null
  },

  backup_container: async ({ provider, log, args, signal }) => {
    const [vmid, config, excludes, info] = parseArgs(
      'backup_container',
      [Vmid, PerlString, z.array(z.string()).nullable(), ContainerInfoSchema],
      args,
    )
    await provider.backupContainer(vmid, config, excludes ?? [], {
      ...containerInfo(info, signal),
      onProgress: progressLogger(log),
    })
    return null
  },

  backup_cleanup: async ({ provider, args }) => {
    const [vmid, vmtype, success, info] = parseArgs(
      'backup_cleanup',
      [Vmid, VmType.nullable(), PerlBool, z.object({ error: z.string().optional() }).nullable()],
      args,
    )
    const r = await provider.backupCleanup(
      vmid,
      vmtype ?? undefined,
      success,
      info?.error === undefined ? {} : { error: info.error },
    )
    return r === undefined ? null : { stats: { 'archive-size': r.stats.archiveSize } }
  },

  backup_handle_log_file: async ({ provider, args }) => {
    const [vmid, filename] = parseArgs(
      'backup_handle_log_file',
      [Vmid, PerlString.startsWith('/', 'must be absolute')],
      args,
    )
    await provider.backupHandleLogFile(vmid, filename)
    return null
  },

  restore_get_mechanism: async ({ provider, args }) => {
    const [volname] = parseArgs('restore_get_mechanism', [Volname], args)
    const r = await provider.restoreGetMechanism(volname)
    return [r.mechanism, r.vmtype]
  },

  archive_get_guest_config: async ({ provider, args }) => {
    const [volname] = parseArgs('archive_get_guest_config', [Volname], args)
    return await provider.archiveGetGuestConfig(volname)
  },

  archive_get_firewall_config: async ({ provider, args }) => {
    const [volname] = parseArgs('archive_get_firewall_config', [Volname], args)
    return (await provider.archiveGetFirewallConfig(volname)) ?? null
  },

  restore_vm_init: async ({ provider, args, signal }) => {
    const [volname] = parseArgs('restore_vm_init', [Volname], args)
    const sizes = await provider.restoreVmInit(volname, { signal })
    return Object.fromEntries(Object.entries(sizes).map(([d, s]) => [d, { size: s.size }]))
  },

  // The FUSE file must outlive this call: a holder process keeps it (./holder.ts).
  restore_vm_volume_init: async ({ args, storeid, scfg }) => {
    const [volname, device] = parseArgs(
      'restore_vm_volume_init',
      [Volname, PerlString, Ignored],
      args,
    )
    return await startHolder({
      kind: 'vm-volume',
      storeid,
      scfg: { ...scfg },
      volname,
      device,
      watchPid: process.ppid,
    })
  },

  restore_vm_volume_cleanup: async ({ args, storeid, scfg }) => {
    const [volname, device] = parseArgs(
      'restore_vm_volume_cleanup',
      [Volname, PerlString, Ignored],
      args,
    )
    await stopHolder({ storeid, path: scfgPath(scfg), volname, device })
    return null
  },

  restore_vm_cleanup: async ({ provider, args, storeid, scfg }) => {
    const [volname] = parseArgs('restore_vm_cleanup', [Volname], args)
    await stopHolders({ storeid, path: scfgPath(scfg), volname })
    await provider.restoreVmCleanup(volname)
    return null
  },

  // The archive is handed out pinned (a /proc/<pid>/fd path) or as a squashfuse mount: both
  // live as long as the process that made them, a holder (./holder.ts).
  restore_container_init: async ({ args, storeid, scfg }) => {
    const [volname] = parseArgs('restore_container_init', [Volname, Ignored], args)
    return await startHolder({
      kind: 'container',
      storeid,
      scfg: { ...scfg },
      volname,
      watchPid: process.ppid,
    })
  },

  restore_container_cleanup: async ({ args, storeid, scfg }) => {
    const [volname] = parseArgs('restore_container_cleanup', [Volname, Ignored], args)
    await stopHolder({ storeid, path: scfgPath(scfg), volname })
    return null
  },
}
