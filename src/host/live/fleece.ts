/**
 * The point-in-time view of a running VM's disks (qemu-lab REPORT §1A, libvirt's pull-backup
 * graph): per disk a qcow2 fleecing overlay whose backing is the live disk node, plus a backup
 * job `sync=none` from the disk into the overlay, so every guest write first copies the old data
 * into the overlay. All disks and all bitmap changes go into ONE `transaction`, so the instant
 * is the same for every disk and for the bitmaps, without pausing the VM.
 *
 * We do not use the copy-before-write filter + `snapshot-access` graph: on QEMU < 8.0 it returns
 * wrong data after guest writes (hbitmap_status bug, fixed by upstream a4d5224c2cb6), and the
 * backup-job graph is correct on every version we support.
 *
 * ```
 * guest ──> [disk node] <── backing ── [gb-fleece-<dev> qcow2] <── NBD export <dev>
 *                └─ job gb-fleece-<dev> (sync=none): old data copied into the overlay
 * ```
 */
import { rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { BackupError, QmpCommandError, toBackupError } from '../../errors.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import type { TempDir } from '../../io/tmpdir.ts'
import type { QmpClient } from '../../qmp/client.ts'
import { createImage } from '../../qemu/img.ts'
import type { LiveDisk } from './discover.ts'

/** Object names of our graph; recovery finds leftovers of a killed run by these prefixes. */
export const FLEECE_PREFIX = 'gb-fleece-'
export const EXPORT_PREFIX = 'gb-export-'
const FLEECE_DIR_PREFIX = 'guestbackup-fleece-'

/** One transaction action (QMP `TransactionAction`). */
export interface TransactionAction {
  type: string
  data: Record<string, unknown>
}

/** A prepared point in time: overlays and NBD exports, to be torn down. */
export interface FleeceSession {
  /** Unix socket of QEMU's NBD server; export name = device name. */
  socketPath: string
  /** Tear everything down; idempotent; never throws (errors are returned). */
  teardown(): Promise<BackupError[]>
}

/** Options of {@link setupFleecing}. */
export interface FleeceOptions {
  qmp: QmpClient
  disks: readonly LiveDisk[]
  /** Bitmap actions to run in the same transaction (freeze old, add new …). */
  bitmapActions: readonly TransactionAction[]
  /** Bitmap to expose per device (`qemu:dirty-bitmap:<name>`), if any. */
  exportBitmaps: Readonly<Record<string, string | undefined>>
  /** Called right before and after the instant (guest agent freeze/thaw). */
  aroundInstant?: { before(): Promise<void>; after(): Promise<void> }
  /** Parent dir of the private fleecing dir. Default: the system temp dir. */
  fleeceParent?: string | undefined
  signal: AbortSignal
}

const opts = (signal: AbortSignal | undefined) => (signal ? { signal } : {})

/** Build the point-in-time graph and export it. On failure everything built is removed. */
export const setupFleecing = async (o: FleeceOptions): Promise<FleeceSession> => {
  const { qmp, disks, signal } = o
  const dir: TempDir = await makeTempDir(FLEECE_DIR_PREFIX, o.fleeceParent)
  const added: string[] = []
  const jobs: string[] = []
  const exports: string[] = []
  let server = false
  let torn = false
  const teardown = async (): Promise<BackupError[]> => {
    if (torn) return []
    torn = true
    const errors: BackupError[] = []
    const attempt = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn()
      } catch (e) {
        errors.push(new BackupError('QMP_COMMAND', `${what}: ${toBackupError(e).message}`))
      }
    }
    for (const id of exports) await attempt(`remove export ${id}`, () => deleteExport(qmp, id))
    if (server) await attempt('stop NBD server', () => qmp.executeRaw('nbd-server-stop'))
    for (const job of jobs) await attempt(`cancel job ${job}`, () => cancelJob(qmp, job))
    for (const node of added) {
      await attempt(`remove node ${node}`, () =>
        qmp.executeRaw('blockdev-del', { 'node-name': node }),
      )
    }
    await dir.remove()
    return errors
  }
  try {
    for (const d of disks) {
      const file = join(dir.path, `${d.device}.qcow2`)
      // No backing in the header: QEMU gets the live node as backing through blockdev-add.
      await createImage(file, { format: 'qcow2', size: d.size, signal })
      const node = `${FLEECE_PREFIX}${d.device}`
      await qmp.executeRaw(
        'blockdev-add',
        {
          driver: 'qcow2',
          'node-name': node,
          file: { driver: 'file', filename: file },
          backing: d.node,
        },
        opts(signal),
      )
      added.push(node)
    }
    const actions: TransactionAction[] = [...o.bitmapActions]
    for (const d of disks) {
      actions.push({
        type: 'blockdev-backup',
        data: {
          'job-id': `${FLEECE_PREFIX}${d.device}`,
          device: d.node,
          target: `${FLEECE_PREFIX}${d.device}`,
          sync: 'none',
          'auto-dismiss': true,
        },
      })
    }
    await o.aroundInstant?.before()
    try {
      await qmp.executeRaw('transaction', { actions }, opts(signal))
    } finally {
      await o.aroundInstant?.after()
    }
    for (const d of disks) jobs.push(`${FLEECE_PREFIX}${d.device}`)
    const socketPath = join(dir.path, 'nbd.sock')
    await qmp.executeRaw(
      'nbd-server-start',
      { addr: { type: 'unix', data: { path: socketPath } } },
      opts(signal),
    )
    server = true
    for (const d of disks) {
      const id = `${EXPORT_PREFIX}${d.device}`
      const bitmap = o.exportBitmaps[d.device]
      await qmp.executeRaw(
        'block-export-add',
        {
          type: 'nbd',
          id,
          'node-name': `${FLEECE_PREFIX}${d.device}`,
          name: d.device,
          writable: false,
          ...(bitmap === undefined ? {} : { bitmaps: [{ node: d.node, name: bitmap }] }),
        },
        opts(signal),
      )
      exports.push(id)
    }
    return { socketPath, teardown }
  } catch (e) {
    await teardown()
    throw e
  }
}

/** `block-export-del`, then wait until QEMU really dropped it (`BLOCK_EXPORT_DELETED`). */
const deleteExport = async (qmp: QmpClient, id: string): Promise<void> => {
  const mark = qmp.eventMark()
  await qmp.executeRaw('block-export-del', { id, mode: 'hard' })
  await qmp.waitForEvent('BLOCK_EXPORT_DELETED', (d) => d.id === id, {
    since: mark,
    timeoutMs: 30_000,
  })
}

/** Cancel a job and wait until it is gone. A job that already ended is fine. */
const cancelJob = async (qmp: QmpClient, job: string): Promise<void> => {
  const mark = qmp.eventMark()
  try {
    await qmp.executeRaw('block-job-cancel', { device: job, force: true })
  } catch (e) {
    if (e instanceof QmpCommandError && e.errorClass === 'DeviceNotActive') return
    throw e
  }
  await qmp.waitForEvent('BLOCK_JOB_CANCELLED', (d) => (d as { device?: string }).device === job, {
    since: mark,
    timeoutMs: 30_000,
  })
}

/**
 * Remove what a killed run left in the VM: our exports (and then the NBD server, which can only
 * be ours if it serves our exports), jobs and overlay nodes, and their fleecing files.
 * Returns what was cleaned, for the log.
 */
export const recoverLeftovers = async (qmp: QmpClient): Promise<string[]> => {
  const cleaned: string[] = []
  const exports = (await qmp.executeRaw('query-block-exports')) as { id: string }[]
  const ours = exports.filter((x) => x.id.startsWith(EXPORT_PREFIX))
  for (const x of ours) {
    await deleteExport(qmp, x.id)
    cleaned.push(`export ${x.id}`)
  }
  const jobs = (await qmp.executeRaw('query-block-jobs')) as { device: string }[]
  const ourJobs = jobs.filter((j) => j.device.startsWith(FLEECE_PREFIX))
  if (ours.length > 0 || ourJobs.length > 0) {
    try {
      await qmp.executeRaw('nbd-server-stop')
      cleaned.push('NBD server')
    } catch {
      // Not running: nothing to stop.
    }
  }
  for (const j of ourJobs) {
    await cancelJob(qmp, j.device)
    cleaned.push(`job ${j.device}`)
  }
  const nodes = (await qmp.executeRaw('query-named-block-nodes', { flat: true })) as {
    'node-name': string
    file: string
  }[]
  for (const n of nodes) {
    if (!n['node-name'].startsWith(FLEECE_PREFIX)) continue
    await qmp.executeRaw('blockdev-del', { 'node-name': n['node-name'] })
    cleaned.push(`node ${n['node-name']}`)
    const parent = dirname(n.file)
    if (basename(parent).startsWith(FLEECE_DIR_PREFIX)) {
      await rm(parent, { recursive: true, force: true })
    }
  }
  return cleaned
}
