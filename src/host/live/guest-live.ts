/**
 * Backup of a running VM over QMP (what qemu-server's `archive_external` does with PVE's
 * backup-access API, done with upstream QEMU building blocks): recover leftovers of a killed run,
 * discover the disks, ask the provider which may be incremental, freeze one instant for all disks
 * (fleecing overlays + bitmaps in one transaction, optional guest-agent fs-freeze), export them
 * over NBD on a private unix socket, run `backupVm`, tear the graph down on every path. The
 * bitmaps are committed or rolled back by the runner after `backupCleanup`.
 */
import type { BackupInfo, BackupProvider, VmVolume, VolumeSize } from '../../api/provider.ts'
import { BackupError, toBackupError } from '../../errors.ts'
import type { ProgressInfo } from '../../api/progress.ts'
import { setTimeout as sleep } from 'node:timers/promises'
import { QmpClient } from '../../qmp/client.ts'
import type { TaskLog } from '../task-log.ts'
import {
  commitBitmaps,
  currentGeneration,
  instantActions,
  planDiskBitmaps,
  recoverBitmaps,
  rollbackBitmaps,
} from './bitmaps.ts'
import type { DiskBitmapPlan } from './bitmaps.ts'
import { listLiveDisks } from './discover.ts'
import { recoverLeftovers, setupFleecing } from './fleece.ts'
import { GuestAgent } from './qga.ts'
import { openNbdReader } from '../disks.ts'
import { CleanupStack } from '../../io/cleanup.ts'

/** A running VM to back up. */
export interface LiveVmGuest {
  type: 'qemu'
  vmid: number
  config: string
  firewallConfig?: string
  /** QMP socket of the running QEMU. */
  qmp: string
  /** Guest agent socket; when given, file systems are frozen around the instant. */
  qga?: string | undefined
  /** Back up only these devices (default: every disk). */
  devices?: readonly string[] | undefined
  /**
   * Where fleecing overlays live (they hold the old data the guest overwrites during the
   * backup). Default: the system temp dir.
   */
  fleeceDir?: string | undefined
  /** Test hook: called with the NBD socket after the instant, before the provider reads. */
  onInstant?: ((socketPath: string) => Promise<void>) | undefined
}

/** What the runner does after `backupCleanup`. */
export interface BitmapFinalizer {
  commit(): Promise<void>
  rollback(): Promise<void>
}

/** Connect to the guest agent; without one the backup is crash-consistent (logged). */
const connectAgent = async (path: string, log: TaskLog): Promise<GuestAgent | undefined> => {
  try {
    return await GuestAgent.connect(path)
  } catch (e) {
    log.warn(`guest agent unavailable, backup is crash-consistent: ${toBackupError(e).message}`)
    return undefined
  }
}

/** The earliest QEMU we drive: persistent bitmaps, blockdev-backup sync=none, block exports. */
const MIN_QEMU = [5, 2] as const

/** Back up a running VM; returns how to finish its bitmaps. */
export const backupLiveVm = async (
  provider: BackupProvider,
  guest: LiveVmGuest,
  storeId: string,
  info: BackupInfo & ProgressInfo,
  log: TaskLog,
): Promise<BitmapFinalizer> => {
  const { signal } = info
  const mechanism = await provider.backupGetMechanism(guest.vmid, 'qemu')
  if (mechanism !== 'nbd' && mechanism !== 'file-handle') {
    throw new BackupError(
      'PROVIDER_INVALID',
      `mechanism '${mechanism}' requested by backup provider is not supported for VMs`,
    )
  }
  const qmp = await QmpClient.connect(guest.qmp, { signal })
  // A QMP monitor serves one client at a time, and on a Proxmox node pvestatd and qm need it:
  // it is held for set-up and the instant only, then given back while the disks are copied;
  // teardown and the bitmap commit connect again (and give it back at once).
  let held: QmpClient | undefined = qmp
  const monitor = async (): Promise<QmpClient> => {
    // The monitor may be busy with another client (pvestatd, qm) or still closing our last
    // connection: try a few times before giving up on teardown or the bitmap commit.
    for (let attempt = 1; held === undefined; attempt++) {
      try {
        held = await QmpClient.connect(guest.qmp)
      } catch (e) {
        if (attempt >= 5) throw e
        log.info(`QMP monitor busy (${toBackupError(e).message}), retrying`)
        await sleep(200 * attempt)
      }
    }
    return held
  }
  const release = async (): Promise<void> => {
    const q = held
    held = undefined
    await q?.close()
  }
  // Disposed last on every path, after a failure's bitmap rollback (which may reconnect).
  await using _monitor = { [Symbol.asyncDispose]: release }
  let plans: DiskBitmapPlan[] = []
  // Bitmaps change only with the instant's transaction; before it there is nothing to undo.
  const state = { applied: false }
  try {
    const v = qmp.version
    if (v.major < MIN_QEMU[0] || (v.major === MIN_QEMU[0] && v.minor < MIN_QEMU[1])) {
      throw new BackupError('UNSUPPORTED', `QEMU ${v.major}.${v.minor} is too old (need 5.2+)`)
    }
    log.info(`QEMU ${v.major}.${v.minor}.${v.micro}: fleecing overlay + backup job graph`)
    for (const what of await recoverLeftovers(qmp, guest.vmid, guest.fleeceDir)) {
      log.warn(`cleaned leftover of a killed run: ${what}`)
    }
    let disks = await listLiveDisks(qmp, signal)
    const fixed = await recoverBitmaps(qmp, disks, storeId)
    for (const f of fixed) log.warn(`bitmap recovery: ${f}`)
    if (fixed.length > 0) disks = await listLiveDisks(qmp, signal)
    if (guest.devices !== undefined) {
      const want = new Set(guest.devices)
      disks = disks.filter((d) => want.has(d.device))
      for (const dev of want) {
        if (!disks.some((d) => d.device === dev))
          throw new BackupError('USAGE', `the VM has no disk ${dev}`)
      }
    }
    if (disks.length === 0) throw new BackupError('USAGE', 'the VM has no disks')
    const sizes: Record<string, VolumeSize> = {}
    for (const d of disks) {
      const gen = currentGeneration(d, storeId)
      sizes[d.device] = { size: d.size, ...(gen === undefined ? {} : { bitmapGeneration: gen }) }
    }
    const answer = (await provider.backupVmQueryIncremental(guest.vmid, sizes)) ?? {}
    plans = disks.map((d) => planDiskBitmaps(d, storeId, answer[d.device]))
    const persistentNodes = new Set(disks.filter((d) => d.format === 'qcow2').map((d) => d.node))
    const freeze = { attempted: false, done: false }
    // Closed right after the thaw; disposing it again only matters if the set-up failed before.
    await using agent = guest.qga === undefined ? undefined : await connectAgent(guest.qga, log)
    const session = await setupFleecing({
      qmp,
      disks,
      bitmapActions: instantActions(plans, (node) => persistentNodes.has(node)),
      exportBitmaps: Object.fromEntries(plans.map((p) => [p.device, p.read])),
      vmid: guest.vmid,
      fleeceParent: guest.fleeceDir,
      warn: (msg) => {
        log.warn(msg)
      },
      onApplied: () => {
        state.applied = true
      },
      aroundInstant: {
        before: async () => {
          if (agent === undefined) return
          try {
            // A freeze that timed out may still take effect in the guest: thaw regardless.
            freeze.attempted = true
            const n = await agent.freeze()
            freeze.done = true
            log.info(`guest agent froze ${n} file system(s)`)
          } catch (e) {
            log.warn(`fs-freeze failed, backup is crash-consistent: ${toBackupError(e).message}`)
          }
        },
        after: async () => {
          // Thaw whenever a freeze was attempted, as qemu-server does (a thaw of a thawed guest
          // is harmless); a failed thaw is logged, never left silent.
          try {
            if (agent !== undefined && freeze.attempted) await agent.thaw()
          } catch (e) {
            log.warn(`fs-thaw failed: ${toBackupError(e).message}`)
          } finally {
            await agent?.close()
          }
        },
      },
      signal,
    })
    // Disposed last opened first: the readers, then the fleecing graph (exports, NBD server,
    // jobs, overlays) through a new monitor connection.
    await using open = new CleanupStack()
    open.defer(async () => {
      for (const e of await session.teardown(monitor)) log.error(`teardown: ${e.message}`)
    })
    await release()
    await guest.onInstant?.(session.socketPath)
    const volumes: Record<string, VmVolume> = {}
    for (const p of plans) {
      const d = disks.find((x) => x.device === p.device)
      if (d === undefined) continue
      log.info(
        `${p.device}: ${d.format} ${d.file}, ${d.size} bytes, bitmap ${p.mode}${p.read ? ` (${p.read})` : ''}`,
      )
      const ids = {
        ...(p.read === undefined ? {} : { bitmapName: p.read, bitmapGeneration: p.read }),
        ...(p.next === undefined ? {} : { nextBitmapGeneration: p.next }),
      }
      if (mechanism === 'nbd') {
        volumes[p.device] = {
          size: d.size,
          bitmapMode: p.mode,
          nbdPath: session.socketPath,
          ...ids,
        }
      } else {
        const opened = open.use(await openNbdReader(session.socketPath, p.device, p.read, signal))
        volumes[p.device] = {
          size: d.size,
          bitmapMode: p.mode,
          fileHandle: opened.reader,
          nextDirtyRegion: opened.nextDirtyRegion,
          ...ids,
        }
      }
    }
    await provider.backupVm(guest.vmid, guest.config, volumes, {
      ...info,
      consistency: freeze.done ? 'fs' : 'crash',
    })
  } catch (e) {
    try {
      if (state.applied) await rollbackBitmaps(await monitor(), plans)
    } catch (re) {
      log.error(`bitmap rollback failed (the next run repairs it): ${toBackupError(re).message}`)
    }
    throw e
  }
  let done = false
  const finish = async (fn: (q: QmpClient) => Promise<void>): Promise<void> => {
    if (done) return
    done = true
    await using _given = { [Symbol.asyncDispose]: release }
    await fn(await monitor())
  }
  return {
    commit: () => finish((q) => commitBitmaps(q, plans)),
    rollback: () => finish((q) => rollbackBitmaps(q, plans)),
  }
}
