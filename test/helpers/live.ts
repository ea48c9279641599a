/**
 * Backups of a running test VM (see qemu-vm.ts) through the job runner, with a reference copy of
 * each export taken at the backup's instant, and restores compared against those references.
 */
import assert from 'node:assert/strict'
import { basename, dirname, join } from 'node:path'
import { runBackupJob } from '../../src/host/runner.ts'
import type { GuestResult } from '../../src/host/runner.ts'
import type { LiveVmGuest } from '../../src/host/live/guest-live.ts'
import { restoreBackup } from '../../src/host/restore.ts'
import { TaskLog } from '../../src/host/task-log.ts'
import { silentLogger } from '../../src/log.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { run } from '../../src/io/spawn.ts'
import { compareImages } from '../../src/qemu/img.ts'

/** Back up one running VM into `storage` (a job of that guest alone); the result must exist. */
export const liveJob = async (
  storage: DirectoryStorage,
  guest: LiveVmGuest,
): Promise<GuestResult> => {
  const [res] = await runBackupJob({
    provider: (log) => storage.newBackupProvider(log),
    storeId: storage.storeId,
    guests: [guest],
    logger: silentLogger(),
    signal: new AbortController().signal,
  })
  assert.ok(res)
  return res
}

/** Options of {@link liveBackup}. */
export interface LiveBackupOptions {
  storage: DirectoryStorage
  vmid: number
  /** QMP socket of the VM. */
  qmp: string
  /** Node names of the exports copied at the instant, like `drive-scsi0`. */
  devices: readonly string[]
  /** Where the copies go: `<refDir>/ref-<tag>-<device>.raw`. */
  refDir: string
  tag: string
  /** Guest config. Default `x\n`. */
  config?: string
  /** Back up only `devices` (default: every disk of the VM). */
  onlyDevices?: boolean
  /** Parent of the fleecing dir (default: the temp dir). */
  fleeceDir?: string
  /** Runs at the instant, after the copies, before the provider reads (e.g. guest writes). */
  during?: (() => Promise<void>) | undefined
}

/**
 * A backup that must succeed; at its instant each device's export is copied to a raw reference
 * file, then `during` runs. Returns the result and the references by device.
 */
export const liveBackup = async (
  opts: LiveBackupOptions,
): Promise<{ res: GuestResult; refs: Record<string, string> }> => {
  const refs: Record<string, string> = {}
  const res = await liveJob(opts.storage, {
    type: 'qemu',
    vmid: opts.vmid,
    config: opts.config ?? 'x\n',
    qmp: opts.qmp,
    devices: opts.onlyDevices === true ? opts.devices : undefined,
    fleeceDir: opts.fleeceDir,
    onInstant: async (socket) => {
      for (const dev of opts.devices) {
        const ref = join(opts.refDir, `ref-${opts.tag}-${dev}.raw`)
        await run('qemu-img', [
          ...['convert', '-f', 'raw', '-O', 'raw'],
          ...[`nbd+unix:///${dev}?socket=${socket}`, ref],
        ])
        refs[dev] = ref
      }
      await opts.during?.()
    },
  })
  assert.equal(res.status, 'ok', res.error?.message)
  return { res, refs }
}

/**
 * Restore `volid` into `target` (its task log next to it, `<target>.log`) and assert that every
 * `<device>.raw` there is identical to its reference.
 */
export const restoreMatches = async (
  storage: DirectoryStorage,
  volid: string,
  target: string,
  refs: Record<string, string>,
): Promise<void> => {
  await restoreBackup({
    provider: storage.newBackupProvider(() => undefined),
    volname: volid.slice(volid.indexOf(':') + 1),
    target,
    log: new TaskLog(join(dirname(target), `${basename(target)}.log`), silentLogger()),
    signal: new AbortController().signal,
  })
  for (const [dev, ref] of Object.entries(refs)) {
    assert.ok(
      await compareImages(join(target, `${dev}.raw`), 'raw', ref, 'raw'),
      `${volid} ${dev} differs from its instant`,
    )
  }
}
