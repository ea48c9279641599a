/**
 * The storage-plugin methods of the Proxmox VE plugin (docs/pve-protocol.md "Methods", first
 * table) on the directory store: Perl arguments in, Perl-shaped results out.
 */
import { stat, statfs } from 'node:fs/promises'
import * as z from 'zod'
import type { ProviderLogFunction } from '../api/provider.ts'
import { BackupError } from '../errors.ts'
import type { DirectoryStorage } from '../provider/directory/storage.ts'
import { parseVolname } from '../provider/directory/layout.ts'
import { initStore, isStore } from '../provider/directory/store.ts'
import { keepOptions, parseArgs, PerlBool, PerlInt, PerlString, PruneBackups } from './args.ts'
import type { JsonValue } from './protocol.ts'

/** What a storage method gets. */
export interface StorageCall {
  /** The storage of the request; `PVE_ARGS` when the request named none. */
  storage: () => DirectoryStorage
  /** The request's storage id and store directory (`null`/'' when it named none). */
  storeid: string | null
  path: string
  /** Where the method's log lines go (prune's removals). */
  log: ProviderLogFunction
  args: readonly JsonValue[]
}

type StorageMethod = (call: StorageCall) => Promise<JsonValue>

const Volname = PerlString
// undef or '' (Perl's "not given") or a value.
const OptVmid = z
  .union([z.null(), z.literal(''), PerlInt])
  .transform((v) => (v === null || v === '' ? undefined : v))
const OptType = z
  .union([z.null(), z.literal(''), z.enum(['qemu', 'lxc'])])
  .transform((v) => (v === null || v === '' ? undefined : v))

/** The storage methods by Perl name. */
export const STORAGE_METHODS: Readonly<Record<string, StorageMethod>> = {
  parse_volname: async ({ args }) => {
    await Promise.resolve()
    const [volname] = parseArgs('parse_volname', [Volname], args)
    // No storage: Proxmox passes none (the volume name alone says everything).
    const p = parseVolname(volname)
    return ['backup', p.archiveName, p.vmid, null, null, 0, 'directory']
  },

  path: async ({ storage, args }) => {
    await Promise.resolve()
    const [volname] = parseArgs('path', [Volname], args)
    const p = storage().path(volname)
    return [p.path, p.vmid, p.vtype]
  },

  list_volumes: async ({ storage, args }) => {
    const [vmid, content] = parseArgs(
      'list_volumes',
      [OptVmid, z.array(z.string()).nullable()],
      args,
    )
    if (content !== null && !content.includes('backup')) return []
    const vols = await storage().listVolumes(vmid === undefined ? {} : { vmid })
    return vols.map((v) => ({
      volid: v.volid,
      format: v.format,
      size: v.size,
      ctime: v.ctime,
      vmid: v.vmid,
      subtype: v.subtype,
      content: v.content,
      ...(v.notes === undefined ? {} : { notes: v.notes }),
      ...(v.protected ? { protected: 1 } : {}),
      // What PBSPlugin.pm list_volumes hands the GUI's backup view: the last verify's state.
      ...(v.verification === undefined ? {} : { verification: { state: v.verification.state } }),
    }))
  },

  volume_size_info: async ({ storage, args }) => {
    const [volname] = parseArgs('volume_size_info', [Volname], args)
    const i = await storage().volumeSizeInfo(volname)
    return [i.size, i.format, i.used, i.parent ?? null, i.ctime]
  },

  status: async ({ storage }) => {
    const st = await statfs(storage().options.path)
    const total = st.blocks * st.bsize
    const free = st.bavail * st.bsize
    return [total, free, total - st.bfree * st.bsize, 1]
  },

  prune_backups: async ({ storage, log, args }) => {
    const [keep, vmid, type, dryrun] = parseArgs(
      'prune_backups',
      [PruneBackups.nullable(), OptVmid, OptType, PerlBool],
      args,
    )
    const marks = await storage().pruneBackups({
      dryRun: dryrun,
      ...(keep === null ? {} : { keep: keepOptions(keep) }),
      ...(vmid === undefined ? {} : { vmid }),
      ...(type === undefined ? {} : { type }),
      log,
    })
    return marks.map((m) => ({
      volid: m.volid,
      ctime: m.ctime,
      type: m.type,
      vmid: m.vmid,
      mark: m.mark,
    }))
  },

  free_image: async ({ storage, args }) => {
    const [volname] = parseArgs('free_image', [Volname], args)
    await storage().freeImage(volname)
    return null
  },

  get_volume_attribute: async ({ storage, args }) => {
    const [volname, attribute] = parseArgs('get_volume_attribute', [Volname, PerlString], args)
    // "Returns undef if the attribute is not supported for the volume."
    if (attribute === 'notes') return (await storage().getVolumeAttribute(volname, 'notes')) ?? null
    if (attribute === 'protected') {
      return (await storage().getVolumeAttribute(volname, 'protected')) ? 1 : 0
    }
    return null
  },

  update_volume_attribute: async ({ storage, args }) => {
    const [volname, attribute, value] = parseArgs(
      'update_volume_attribute',
      [Volname, PerlString, z.union([z.string(), z.number(), z.boolean(), z.null()])],
      args,
    )
    if (attribute === 'notes') {
      await storage().updateVolumeAttribute(volname, 'notes', value === null ? '' : String(value))
      return null
    }
    if (attribute === 'protected') {
      const on = PerlBool.safeParse(value)
      if (!on.success) {
        throw new BackupError('PVE_ARGS', 'bad arguments to update_volume_attribute: argument 3')
      }
      await storage().updateVolumeAttribute(volname, 'protected', on.data)
      return null
    }
    // "Dies if the attribute is not supported for the volume."
    throw new BackupError('UNSUPPORTED', `attribute '${attribute}' is not supported`)
  },

  // An existing directory becomes a store on first use: its store file lets the CLI
  // (`guestbackup list --store …`) read what the plugin wrote. A missing directory is not
  // made: it may be an unmounted disk, whose mount point must not fill the root file system.
  activate_storage: async ({ storage, storeid, path }) => {
    const isDir = (await stat(path).catch(() => undefined))?.isDirectory() === true
    if (storeid !== null && isDir && !(await isStore(path))) await initStore(path, {}, storeid)
    await storage().activateStorage()
    return null
  },

  deactivate_storage: async () => {
    await Promise.resolve()
    return null
  },

  check_connection: async ({ storage }) => {
    try {
      await storage().activateStorage()
      return 1
    } catch {
      return 0
    }
  },
}
