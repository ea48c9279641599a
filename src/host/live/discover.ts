/**
 * Finding a running VM's disks over QMP (`query-block`). Device names follow Proxmox:
 * `drive-<qdev id>` (e.g. `drive-scsi0`); a legacy `-drive id=drive-scsi0` keeps its id.
 */
import { BackupError } from '../../errors.ts'
import type { QmpClient } from '../../qmp/client.ts'
import type { QmpBlockDeviceInfo, QmpBlockDirtyInfo, QmpBlockGraph } from '../../qmp/commands.ts'

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

/** Filter drivers we look through to find the format node (they pass data on unchanged). */
const FILTER_DRIVERS = new Set([
  'throttle',
  'copy-on-read',
  'preallocate',
  'compress',
  'blkdebug',
  'copy-before-write',
])

/**
 * The node under `top` that holds the image: filters (a throttle group, as Proxmox puts above
 * its drives) are followed down their `file` child, so bitmaps go onto the qcow2 node, where they
 * can be persistent. Without the debug graph command, `top` itself is used.
 */
const formatNode = (
  top: string,
  nodes: ReadonlyMap<string | undefined, QmpBlockDeviceInfo>,
  graph: QmpBlockGraph | undefined,
): QmpBlockDeviceInfo | undefined => {
  let node = nodes.get(top)
  for (let hops = 0; node !== undefined && FILTER_DRIVERS.has(node.drv) && hops < 16; hops++) {
    const id = graph?.nodes.find(
      (n) => n.type === 'block-driver' && n.name === node?.['node-name'],
    )?.id
    const edge = graph?.edges.find((e) => e.parent === id && e.name === 'file')
    const child = graph?.nodes.find((n) => n.id === edge?.child)?.name
    if (child === undefined) break
    node = nodes.get(child)
  }
  return node
}

const toBitmaps = (raw: readonly QmpBlockDirtyInfo[] | undefined): LiveBitmap[] =>
  (raw ?? []).map((bm) => ({
    name: bm.name ?? '',
    recording: bm.recording,
    persistent: bm.persistent,
    busy: bm.busy,
    count: bm.count,
    granularity: bm.granularity,
  }))

/** List the VM's disks (devices with a medium; CD-ROMs without one are skipped). */
export const listLiveDisks = async (qmp: QmpClient, signal?: AbortSignal): Promise<LiveDisk[]> => {
  const opts = signal ? { signal } : {}
  const blocks = await qmp.execute('query-block', {}, opts)
  const flat = await qmp.execute('query-named-block-nodes', { flat: true }, opts)
  const nodes = new Map(flat.map((n) => [n['node-name'], n]))
  const graph = await qmp.execute('x-debug-query-block-graph', {}, opts).catch(() => undefined)
  const out: LiveDisk[] = []
  for (const b of blocks) {
    const ins = b.inserted
    if (ins === undefined) continue
    const id = b.device !== '' ? b.device : qdevId(b.qdev ?? '')
    if (id === '') continue
    const device = id.startsWith('drive-') ? id : `drive-${id}`
    const top = ins['node-name']
    if (top === undefined) {
      throw new BackupError('QMP_PROTOCOL', `query-block gave no node name for ${device}`)
    }
    const fmt = formatNode(top, nodes, graph)
    out.push({
      device,
      node: fmt?.['node-name'] ?? top,
      format: fmt?.drv ?? ins.drv,
      file: ins.file,
      size: ins.image['virtual-size'],
      bitmaps: toBitmaps(fmt?.['dirty-bitmaps'] ?? ins['dirty-bitmaps']),
    })
  }
  return out
}
