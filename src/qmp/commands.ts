/**
 * Typed map of the QMP commands guestbackup drives (events: see events.ts), checked against the
 * `query-qmp-schema` of QEMU 7.2 (qapi/block-core.json, block-export.json, transaction.json,
 * run-state.json, job.json, misc.json, control.json; rendered at
 * https://qemu.readthedocs.io/en/v7.2.0/interop/qemu-qmp-ref.html). Only the members we use are typed; QEMU
 * may send more (qmp-spec.rst §"Compatibility Considerations"), and optional members are
 * optional here too. Nothing is validated at run time: replies are trusted to match the schema.
 */

/** The empty object: arguments of commands that take none, and the `{}` many commands return. */
export type QmpEmpty = Record<string, never>

/** `query-version` → `VersionInfo`. */
export interface QmpVersionInfo {
  qemu: { major: number; minor: number; micro: number }
  /** Distribution package string. */
  package: string
}

/** `RunState` (run-state.json): `prelaunch` for `-S` before the first `cont`. */
export type QmpRunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo'

/** `query-status` → `StatusInfo`. */
export interface QmpStatusInfo {
  /** True if the vCPUs run. */
  running: boolean
  status: QmpRunState
}

/** `BlockDirtyInfo`: one dirty bitmap of a node. */
export interface QmpBlockDirtyInfo {
  name?: string
  /** Number of dirty bytes. */
  count: number
  /** Bytes covered by one bit. */
  granularity: number
  /** True if the bitmap records new writes (i.e. it is enabled). */
  recording: boolean
  /** True if an operation (backup job, export) uses the bitmap; it cannot be changed then. */
  busy: boolean
  /** True if the bitmap is stored in the qcow2 image on close. */
  persistent: boolean
  /** True if a persistent bitmap was not saved cleanly; it must not be trusted. */
  inconsistent?: boolean
}

/** `ImageInfo`, the `image` member of {@link QmpBlockDeviceInfo}. */
export interface QmpImageInfo {
  filename: string
  /** Format driver, e.g. `qcow2`, `raw`, `file`. */
  format: string
  /** Guest-visible size in bytes. */
  'virtual-size': number
  /** Bytes used on the host, if known. */
  'actual-size'?: number
  'cluster-size'?: number
  'backing-filename'?: string
}

/** `BlockDeviceInfo`: one block node (`query-named-block-nodes`, `query-block` `inserted`). */
export interface QmpBlockDeviceInfo {
  /** The node's filename (or a `json:` pseudo-filename). */
  file: string
  'node-name'?: string
  /** True if read-only. */
  ro: boolean
  /** Block driver, e.g. `qcow2`, `raw`, `file`, `copy-before-write`. */
  drv: string
  backing_file?: string
  backing_file_depth: number
  image: QmpImageInfo
  /** Detect-zeroes mode of the node. */
  detect_zeroes: 'off' | 'on' | 'unmap'
  'dirty-bitmaps'?: QmpBlockDirtyInfo[]
}

/** `BlockInfo`: one BlockBackend (`query-block`). */
export interface QmpBlockInfo {
  /** The BlockBackend name; empty for devices attached to a `-blockdev` node. */
  device: string
  /** QOM path of the attached device, e.g. `/machine/peripheral/virtio0/virtio-backend`. */
  qdev?: string
  type: string
  removable: boolean
  locked: boolean
  /** The root node of the medium, absent for an empty drive. */
  inserted?: QmpBlockDeviceInfo
  'io-status'?: 'ok' | 'failed' | 'nospace'
}

/** `JobStatus` (job.json): the job state machine of QEMU. */
export type QmpJobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null'

/** `JobType` (job.json). */
export type QmpJobType =
  | 'commit'
  | 'stream'
  | 'mirror'
  | 'backup'
  | 'create'
  | 'amend'
  | 'snapshot-load'
  | 'snapshot-save'
  | 'snapshot-delete'

/** `BlockJobInfo` (`query-block-jobs`). */
export interface QmpBlockJobInfo {
  /** Job type as a string, e.g. `backup`. */
  type: string
  /** The job id (named `device` for historical reasons). */
  device: string
  /** Estimated total work in bytes; progress is `offset / len`. */
  len: number
  offset: number
  busy: boolean
  paused: boolean
  /** Rate limit in bytes per second, 0 for none. */
  speed: number
  'io-status': 'ok' | 'failed' | 'nospace'
  /** True once a mirror-like job may be completed. */
  ready: boolean
  status: QmpJobStatus
  'auto-finalize': boolean
  'auto-dismiss': boolean
  /** Set when the job failed. */
  error?: string
}

/** `BlockDirtyBitmap`: names a bitmap on a node. */
export interface QmpBlockDirtyBitmap {
  /** Node name (or BlockBackend name) the bitmap belongs to. */
  node: string
  name: string
}

/** `BlockDirtyBitmapAdd`. */
export interface QmpBlockDirtyBitmapAdd extends QmpBlockDirtyBitmap {
  /** Bytes per bit, a power of two; default: the cluster size, at least 64 KiB. */
  granularity?: number
  /** Store the bitmap in the qcow2 image on close. Default false. */
  persistent?: boolean
  /** Create the bitmap disabled (not recording). Default false. */
  disabled?: boolean
}

/** `BlockDirtyBitmapOrStr`: a bitmap on the target's node, or one on any node. */
export type QmpBitmapRef = string | QmpBlockDirtyBitmap

/** `BlockDirtyBitmapMerge`: OR `bitmaps` into `target` (both on `node`, unless given as objects). */
export interface QmpBlockDirtyBitmapMerge {
  node: string
  target: string
  bitmaps: QmpBitmapRef[]
}

/** `MirrorSyncMode` as used by `blockdev-backup`. */
export type QmpSyncMode = 'top' | 'full' | 'none' | 'incremental' | 'bitmap'

/** `BlockdevBackup`. */
export interface QmpBlockdevBackup {
  /** Job id; defaults to `device`. */
  'job-id'?: string
  /** Source node. */
  device: string
  /** Target node. */
  target: string
  /** `none` = copy-before-write only (fleecing); `incremental` needs `bitmap`. */
  sync: QmpSyncMode
  bitmap?: string
  /** When to clear/merge the sync bitmap; default `on-success`. */
  'bitmap-mode'?: 'on-success' | 'never' | 'always'
  /** Bytes per second, 0 = unlimited. */
  speed?: number
  'on-source-error'?: 'report' | 'ignore' | 'enospc' | 'stop' | 'auto'
  'on-target-error'?: 'report' | 'ignore' | 'enospc' | 'stop' | 'auto'
  'auto-finalize'?: boolean
  'auto-dismiss'?: boolean
  /** Name of the backup-top filter node QEMU inserts. */
  'filter-node-name'?: string
}

/** One action of `transaction` (`TransactionAction`, only the kinds we use). */
export type QmpTransactionAction =
  | { type: 'block-dirty-bitmap-add'; data: QmpBlockDirtyBitmapAdd }
  | { type: 'block-dirty-bitmap-remove'; data: QmpBlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-clear'; data: QmpBlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-enable'; data: QmpBlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-disable'; data: QmpBlockDirtyBitmap }
  | { type: 'block-dirty-bitmap-merge'; data: QmpBlockDirtyBitmapMerge }
  | { type: 'blockdev-backup'; data: QmpBlockdevBackup }

/** Options shared by every `blockdev-add` driver (`BlockdevOptions` base). */
interface BlockdevCommon {
  'node-name'?: string
  /** `unmap` passes guest discards down; the default `ignore` drops them. */
  discard?: 'ignore' | 'unmap'
  cache?: { direct?: boolean; 'no-flush'?: boolean }
  'read-only'?: boolean
  'auto-read-only'?: boolean
  /** Open without taking the image locks (read-only inspection). */
  'force-share'?: boolean
  'detect-zeroes'?: 'off' | 'on' | 'unmap'
}

/** `BlockdevRef`: a nested node definition or the name of an existing node. */
export type QmpBlockdevRef = QmpBlockdevOptions | string

/** `blockdev-add` arguments (`BlockdevOptions`) for the drivers we use. */
export type QmpBlockdevOptions = BlockdevCommon &
  (
    | {
        driver: 'file' | 'host_device'
        filename: string
        aio?: 'threads' | 'native' | 'io_uring'
        locking?: 'auto' | 'on' | 'off'
      }
    | {
        driver: 'qcow2'
        file: QmpBlockdevRef
        /** Backing node; `null` opens the image without its backing chain. */
        backing?: QmpBlockdevRef | null
        'data-file'?: QmpBlockdevRef
      }
    | { driver: 'raw'; file: QmpBlockdevRef; offset?: number; size?: number }
    | {
        driver: 'copy-before-write'
        file: QmpBlockdevRef
        target: QmpBlockdevRef
        bitmap?: QmpBlockDirtyBitmap
        'on-cbw-error'?: 'break-guest-write' | 'break-snapshot'
        'cbw-timeout'?: number
      }
    | { driver: 'snapshot-access'; file: QmpBlockdevRef }
    | { driver: 'null-co'; size?: number; 'read-zeroes'?: boolean }
  )

/** `SocketAddressLegacy` as taken by `nbd-server-start`. */
export type QmpSocketAddressLegacy =
  { type: 'unix'; data: { path: string } } | { type: 'inet'; data: { host: string; port: string } }

/** `BlockExportOptions` for `type: 'nbd'`. */
export interface QmpBlockExportNbd {
  type: 'nbd'
  /** Export id, used by `block-export-del` and `BLOCK_EXPORT_DELETED`. */
  id: string
  'node-name': string
  /** Default false. */
  writable?: boolean
  /** NBD export name; defaults to the node name. */
  name?: string
  description?: string
  /** Bitmaps offered as meta contexts `qemu:dirty-bitmap:<name>`; must be disabled if read-only. */
  bitmaps?: QmpBitmapRef[]
  /** Offer the `qemu:allocation-depth` meta context. */
  'allocation-depth'?: boolean
  iothread?: string
  'fixed-iothread'?: boolean
}

/** `BlockExportInfo` (`query-block-exports`). */
export interface QmpBlockExportInfo {
  id: string
  type: 'nbd' | 'vhost-user-blk' | 'fuse' | 'vduse-blk'
  'node-name': string
  /** True after `block-export-del` until the last client is gone. */
  'shutting-down': boolean
}

/** `XDbgBlockGraphNodeType`: what a node of the debug block graph is. */
export type QmpBlockGraphNodeType = 'block-backend' | 'block-job' | 'block-driver'

/** `XDbgBlockGraphNode`. */
export interface QmpBlockGraphNode {
  /** Id of the node within this graph dump (edges refer to it). */
  id: number
  type: QmpBlockGraphNodeType
  /** The node name (`block-driver`), BlockBackend name or job id. */
  name: string
}

/** `XDbgBlockGraphEdge`: `parent` uses `child` through the child role `name`. */
export interface QmpBlockGraphEdge {
  parent: number
  child: number
  /** Child role, e.g. `file`, `backing`, `root`. */
  name: string
}

/** `XDbgBlockGraph` (`x-debug-query-block-graph`). */
export interface QmpBlockGraph {
  nodes: QmpBlockGraphNode[]
  edges: QmpBlockGraphEdge[]
}

/** Defines one command: its `arguments` and its `return` value. */
export interface QmpCommandDef<A extends object, R> {
  args: A
  ret: R
}

/** Every typed QMP command: name → arguments and return value. */
export interface QmpCommands {
  /** Leave capabilities negotiation mode (qmp-spec.rst §"Capabilities Negotiation"). */
  qmp_capabilities: QmpCommandDef<{ enable?: 'oob'[] }, QmpEmpty>
  'query-version': QmpCommandDef<QmpEmpty, QmpVersionInfo>
  'query-status': QmpCommandDef<QmpEmpty, QmpStatusInfo>
  /** Pause the vCPUs (emits `STOP`). */
  stop: QmpCommandDef<QmpEmpty, QmpEmpty>
  /** Resume the vCPUs (emits `RESUME`). */
  cont: QmpCommandDef<QmpEmpty, QmpEmpty>
  /**
   * Exit QEMU. On 7.2 `SHUTDOWN` (reason `host-qmp-quit`) arrives before the reply, so wait with a
   * `since` marker; the connection then closes, and may do so before the reply is read.
   */
  quit: QmpCommandDef<QmpEmpty, QmpEmpty>
  /** Run an HMP command; returns its text output (often empty, see `qemu-io`). */
  'human-monitor-command': QmpCommandDef<{ 'command-line': string; 'cpu-index'?: number }, string>
  'query-block': QmpCommandDef<QmpEmpty, QmpBlockInfo[]>
  /** With `flat: true`, child nodes are not repeated inside `backing-image`. */
  'query-named-block-nodes': QmpCommandDef<{ flat?: boolean }, QmpBlockDeviceInfo[]>
  /**
   * The whole block graph with its edges. Unstable (`x-` prefix, "for debugging purposes"
   * only): callers must cope with its absence.
   */
  'x-debug-query-block-graph': QmpCommandDef<QmpEmpty, QmpBlockGraph>
  'blockdev-add': QmpCommandDef<QmpBlockdevOptions, QmpEmpty>
  /** Remove a node that nothing uses any more. */
  'blockdev-del': QmpCommandDef<{ 'node-name': string }, QmpEmpty>
  'blockdev-backup': QmpCommandDef<QmpBlockdevBackup, QmpEmpty>
  /** Run actions atomically: all succeed or none takes effect. */
  transaction: QmpCommandDef<
    {
      actions: QmpTransactionAction[]
      properties?: { 'completion-mode'?: 'individual' | 'grouped' }
    },
    QmpEmpty
  >
  'block-dirty-bitmap-add': QmpCommandDef<QmpBlockDirtyBitmapAdd, QmpEmpty>
  'block-dirty-bitmap-remove': QmpCommandDef<QmpBlockDirtyBitmap, QmpEmpty>
  'block-dirty-bitmap-clear': QmpCommandDef<QmpBlockDirtyBitmap, QmpEmpty>
  'block-dirty-bitmap-enable': QmpCommandDef<QmpBlockDirtyBitmap, QmpEmpty>
  'block-dirty-bitmap-disable': QmpCommandDef<QmpBlockDirtyBitmap, QmpEmpty>
  'block-dirty-bitmap-merge': QmpCommandDef<QmpBlockDirtyBitmapMerge, QmpEmpty>
  /** Cancel a block job; completion is signalled by `BLOCK_JOB_CANCELLED` (or `_COMPLETED`). */
  'block-job-cancel': QmpCommandDef<{ device: string; force?: boolean }, QmpEmpty>
  'query-block-jobs': QmpCommandDef<QmpEmpty, QmpBlockJobInfo[]>
  /** Start the built-in NBD server; fails if it already runs. */
  'nbd-server-start': QmpCommandDef<
    { addr: QmpSocketAddressLegacy; 'tls-creds'?: string; 'max-connections'?: number },
    QmpEmpty
  >
  /** Stop the NBD server and remove the exports it serves. */
  'nbd-server-stop': QmpCommandDef<QmpEmpty, QmpEmpty>
  'block-export-add': QmpCommandDef<QmpBlockExportNbd, QmpEmpty>
  /**
   * Start removing an export; `BLOCK_EXPORT_DELETED` signals the end. `safe` (default) fails
   * while clients are connected, `hard` drops them.
   */
  'block-export-del': QmpCommandDef<{ id: string; mode?: 'safe' | 'hard' }, QmpEmpty>
  'query-block-exports': QmpCommandDef<QmpEmpty, QmpBlockExportInfo[]>
}

/** Name of a typed command. */
export type QmpCommandName = keyof QmpCommands
/** Arguments of command `C`. */
export type QmpArgs<C extends QmpCommandName> = QmpCommands[C]['args']
/** Return value of command `C`. */
export type QmpReturn<C extends QmpCommandName> = QmpCommands[C]['ret']
