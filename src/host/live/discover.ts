/**
 * Finding a running VM's disks over QMP (`query-block`). Device names follow Proxmox:
 * `drive-<qdev id>` (e.g. `drive-scsi0`); a legacy `-drive id=drive-scsi0` keeps its id.
 */
import { BackupError } from '../../errors.ts'
import type { QmpClient } from '../../qmp/client.ts'

/** A disk of a running VM. */
export interface LiveDisk {
  /** Proxmox device name, `drive-<qdev id>`. */
  device: string
  /** Node name of the format node the guest device writes through. */
  node: string
  /** Image format of that node (`qcow2`, `raw` …). */
  format: string
  /** Image file, for messages. */
  file: string
  /** Virtual size in bytes. */
  size: number
  /** Dirty bitmaps on the node. */
  bitmaps: LiveBitmap[]
}

/** A dirty bitmap as `query-block` reports it. */
export interface LiveBitmap {
  name: string
  recording: boolean
  persistent: boolean
  busy: boolean
  count: number
  granularity: number
}

/** qdev path or id -> id: `/machine/peripheral/virtio0/virtio-backend` -> `virtio0`. */
export const qdevId = (qdev: string): string => {
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(qdev)
  return m?.[1] ?? qdev
}

interface RawInserted {
  'node-name'?: string
  drv?: string
  file?: string
  image?: { 'virtual-size'?: number }
  'dirty-bitmaps'?: {
    name?: string
    recording?: boolean
    persistent?: boolean
    busy?: boolean
    count?: number
    granularity?: number
  }[]
}

/** List the VM's disks (devices with a medium; CD-ROMs without one are skipped). */
export const listLiveDisks = async (qmp: QmpClient, signal?: AbortSignal): Promise<LiveDisk[]> => {
  const blocks = (await qmp.execute('query-block', {}, signal ? { signal } : {})) as unknown as {
    device?: string
    qdev?: string
    inserted?: RawInserted
  }[]
  const out: LiveDisk[] = []
  for (const b of blocks) {
    const ins = b.inserted
    if (ins === undefined) continue
    const id = b.device !== undefined && b.device !== '' ? b.device : qdevId(b.qdev ?? '')
    if (id === '') continue
    const device = id.startsWith('drive-') ? id : `drive-${id}`
    const node = ins['node-name']
    const size = ins.image?.['virtual-size']
    if (node === undefined || size === undefined) {
      throw new BackupError('QMP_PROTOCOL', `query-block gave no node or size for ${device}`)
    }
    out.push({
      device,
      node,
      format: ins.drv ?? 'unknown',
      file: ins.file ?? '',
      size,
      bitmaps: (ins['dirty-bitmaps'] ?? []).map((bm) => ({
        name: bm.name ?? '',
        recording: bm.recording ?? false,
        persistent: bm.persistent ?? false,
        busy: bm.busy ?? false,
        count: bm.count ?? 0,
        granularity: bm.granularity ?? 0,
      })),
    })
  }
  return out
}
