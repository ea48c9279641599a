/**
 * The point-in-time view of a running VM's disks (libvirt's pull-backup graph,
 * https://libvirt.org/kbase/incrementalbackupinternals.html): per disk a qcow2 fleecing overlay whose backing is the live disk node, plus a backup
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
 *
 * A full fleecing dir must never fail a guest write. On QEMU 7.2 the backup job's
 * copy-before-write filter cannot be told `on-cbw-error: break-snapshot` (qapi/block-core.json
 * BlockdevOptionsCbw has it since 7.1, but `blockdev-backup` inserts its filter with the default
 * `break-guest-write`), so an overlay that cannot grow fails the guest's write (or pauses the VM,
 * `werror=enospc`). Hence every overlay gets its worst case reserved up front, the disk's size
 * plus qcow2 metadata, as blocks beyond the end of the file (`fallocate --keep-size`): QEMU's
 * appends land in blocks the file system already gave the file, and a fleecing dir without room
 * refuses the backup before the instant, naming the fleecing dir.
 */
import { readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  BackupError,
  isBackupError,
  isNoSpace,
  noSpaceIn,
  QmpCommandError,
  toBackupError,
  withSpaceIn,
} from '../../errors.ts'
import { processAlive } from '../../io/daemon.ts'
import { run } from '../../io/spawn.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import type { TempDir } from '../../io/tmpdir.ts'
import type { QmpClient } from '../../qmp/client.ts'
import type { QmpTransactionAction } from '../../qmp/commands.ts'
import { createImage } from '../../qemu/img.ts'
import type { LiveDisk } from './discover.ts'

/** Object names of our graph; recovery finds leftovers of a killed run by these prefixes. */
export const FLEECE_PREFIX = 'gb-fleece-'
export const EXPORT_PREFIX = 'gb-export-'
const FLEECE_DIR_PREFIX = 'guestbackup-fleece-'

/** A prepared point in time: overlays and NBD exports, to be torn down. */
export interface FleeceSession {
  /** Unix socket of QEMU's NBD server; export name = device name. */
  socketPath: string
  /**
   * Tear everything down, through `monitor` (a new connection: the set-up one may be closed
   * meanwhile) or the set-up connection; idempotent; never throws (errors are returned).
   */
  teardown(monitor?: () => Promise<QmpClient>): Promise<BackupError[]>
}

/** Options of {@link setupFleecing}. */
export interface FleeceOptions {
  qmp: QmpClient
  disks: readonly LiveDisk[]
  /** Bitmap actions to run in the same transaction (freeze old, add new …). */
  bitmapActions: readonly QmpTransactionAction[]
  /** Bitmap to expose per device (`qemu:dirty-bitmap:<name>`), if any. */
  exportBitmaps: Readonly<Record<string, string | undefined>>
  /** Called right before and after the instant (guest agent freeze/thaw). */
  aroundInstant?: { before(): Promise<void>; after(): Promise<void> }
  /** Parent dir of the private fleecing dir. Default: the system temp dir. */
  fleeceParent?: string | undefined
  /** Guest id: names the fleecing dir, so the next run can sweep what a killed one left. */
  vmid: number
  /** Called right after the instant's transaction succeeded (bitmaps changed from then on). */
  onApplied?: () => void
  /** Receives a warning (a file system that cannot reserve the overlays' space). */
  warn?: (msg: string) => void
  signal: AbortSignal
}

/**
 * Bytes an overlay of a `size`-byte disk can reach: every cluster once (64 KiB clusters) plus
 * an L2 entry (8 bytes) and a refcount (2 bytes) per cluster, and 1 MiB for the header, L1 and
 * refcount tables.
 */
export const overlayWorstCase = (size: number): number =>
  size + Math.ceil(size / 65536) * 10 + 1024 * 1024

/**
 * Reserve `bytes` for the overlay `file` beyond its end (`fallocate --keep-size`). `NO_SPACE`
 * naming the fleecing dir `parent` when they are not free; a file system without fallocate
 * only warns (the overlay then grows as it goes).
 */
const reserveOverlay = async (
  file: string,
  bytes: number,
  parent: string,
  device: string,
  o: FleeceOptions,
): Promise<void> => {
  try {
    await run('fallocate', ['--keep-size', '--length', String(bytes), file], { signal: o.signal })
  } catch (e) {
    if (isNoSpace(e)) {
      throw noSpaceIn('fleecing dir', parent, e, `reserving ${bytes} bytes for ${device}'s overlay`)
    }
    if (isBackupError(e, 'ABORTED')) throw e
    o.warn?.(
      `cannot reserve ${bytes} bytes in the fleecing dir ${parent} (${toBackupError(e).message}): ` +
        "if it fills up during the backup, the guest's writes fail",
    )
  }
}

/**
 * Build the point-in-time graph and export it. On failure everything built is removed.
 *
 * The QMP commands of the set-up get no AbortSignal on purpose: an aborted wait does not stop
 * QEMU from applying a command, so the objects could exist without our knowing. They are short;
 * an abort is honoured between them, and teardown finds our objects by name, not by memory.
 */
export const setupFleecing = async (o: FleeceOptions): Promise<FleeceSession> => {
  const { qmp, disks, signal } = o
  const parent = o.fleeceParent ?? tmpdir()
  const dir: TempDir = await makeTempDir(`${FLEECE_DIR_PREFIX}${o.vmid}-`, parent, 'fleecing dir')
  let server = false
  let torn = false
  const teardown = async (monitor?: () => Promise<QmpClient>): Promise<BackupError[]> => {
    if (torn) return []
    torn = true
    const errors: BackupError[] = []
    try {
      await removeOurObjects(monitor === undefined ? qmp : await monitor(), server)
    } catch (e) {
      errors.push(new BackupError('QMP_COMMAND', `teardown: ${toBackupError(e).message}`))
    }
    await dir.remove()
    return errors
  }
  try {
    for (const d of disks) {
      signal.throwIfAborted()
      const file = join(dir.path, `${d.device}.qcow2`)
      // No backing in the header: QEMU gets the live node as backing through blockdev-add.
      await withSpaceIn('fleecing dir', parent, () =>
        createImage(file, { format: 'qcow2', size: d.size, signal }),
      )
      await reserveOverlay(file, overlayWorstCase(d.size), parent, d.device, o)
      await qmp.execute('blockdev-add', {
        driver: 'qcow2',
        'node-name': `${FLEECE_PREFIX}${d.device}`,
        file: { driver: 'file', filename: file },
        backing: d.node,
      })
    }
    const actions: QmpTransactionAction[] = [...o.bitmapActions]
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
    signal.throwIfAborted()
    await o.aroundInstant?.before()
    try {
      await qmp.execute('transaction', { actions })
      o.onApplied?.()
    } finally {
      await o.aroundInstant?.after()
    }
    signal.throwIfAborted()
    const socketPath = join(dir.path, 'nbd.sock')
    server = true
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socketPath } } })
    for (const d of disks) {
      const bitmap = o.exportBitmaps[d.device]
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: `${EXPORT_PREFIX}${d.device}`,
        'node-name': `${FLEECE_PREFIX}${d.device}`,
        name: d.device,
        writable: false,
        ...(bitmap === undefined ? {} : { bitmaps: [{ node: d.node, name: bitmap }] }),
      })
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
  await qmp.execute('block-export-del', { id, mode: 'hard' })
  await qmp.waitForEvent('BLOCK_EXPORT_DELETED', (d) => d.id === id, {
    since: mark,
    timeoutMs: 30_000,
  })
}

/** Cancel a job and wait until it is gone. A job that already ended is fine. */
const cancelJob = async (qmp: QmpClient, job: string): Promise<void> => {
  const mark = qmp.eventMark()
  try {
    await qmp.execute('block-job-cancel', { device: job, force: true })
  } catch (e) {
    if (e instanceof QmpCommandError && e.errorClass === 'DeviceNotActive') return
    throw e
  }
  await qmp.waitForEvent('BLOCK_JOB_CANCELLED', (d) => d.device === job, {
    since: mark,
    timeoutMs: 30_000,
  })
}

/**
 * Remove our objects from the VM, found by name: exports, then the NBD server (ours if
 * `serverIsOurs`, or if it serves our exports), jobs and overlay nodes. Returns what went.
 */
const removeOurObjects = async (qmp: QmpClient, serverIsOurs: boolean): Promise<string[]> => {
  const cleaned: string[] = []
  const exports = await qmp.execute('query-block-exports')
  const ours = exports.filter((x) => x.id.startsWith(EXPORT_PREFIX))
  for (const x of ours) {
    await deleteExport(qmp, x.id)
    cleaned.push(`export ${x.id}`)
  }
  const jobs = await qmp.execute('query-block-jobs')
  const ourJobs = jobs.filter((j) => j.device.startsWith(FLEECE_PREFIX))
  if (serverIsOurs || ours.length > 0 || ourJobs.length > 0) {
    try {
      await qmp.execute('nbd-server-stop')
      cleaned.push('NBD server')
    } catch {
      // Not running: nothing to stop.
    }
  }
  for (const j of ourJobs) {
    await cancelJob(qmp, j.device)
    cleaned.push(`job ${j.device}`)
  }
  const nodes = await qmp.execute('query-named-block-nodes', { flat: true })
  for (const n of nodes) {
    const name = n['node-name']
    if (name?.startsWith(FLEECE_PREFIX) !== true) continue
    await qmp.execute('blockdev-del', { 'node-name': name })
    cleaned.push(`node ${name}`)
  }
  return cleaned
}

/**
 * Remove the fleecing dirs of guest `vmid` in `parent` whose run is gone: named
 * `guestbackup-fleece-<vmid>-<pid>-XXXXXX` (tmpdir.ts), each is left alone while its pid runs
 * (another VM with the same id on this host, e.g. a plain QEMU one, may be backed up at the
 * same time). Returns the names removed.
 */
export const sweepFleeceDirs = async (vmid: number, parent: string): Promise<string[]> => {
  const removed: string[] = []
  const prefix = `${FLEECE_DIR_PREFIX}${vmid}-`
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue
    const pid = Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1])
    if (Number.isSafeInteger(pid) && pid !== process.pid && processAlive(pid)) continue
    await rm(join(parent, name), { recursive: true, force: true })
    removed.push(name)
  }
  return removed
}

/**
 * Remove what a killed run left: our objects in the VM (QMP accepts one client at a time, so
 * no other backup of this VM can be running), then the fleecing dirs of this guest whose run is
 * gone ({@link sweepFleeceDirs}).
 */
export const recoverLeftovers = async (
  qmp: QmpClient,
  vmid: number,
  fleeceParent: string = tmpdir(),
): Promise<string[]> => {
  const cleaned = await removeOurObjects(qmp, false)
  for (const name of await sweepFleeceDirs(vmid, fleeceParent)) {
    cleaned.push(`fleecing dir ${name}`)
  }
  return cleaned
}
