/**
 * A validated qcow2 chain presented as a regular file of raw guest data: `qemu-storage-daemon`
 * opens the pinned chain read-only from an explicit spec and exports its top node through FUSE
 * onto a regular file in a private 0700 temp dir (`--export type=fuse`, QEMU 7.2
 * https://qemu.readthedocs.io/en/v7.2.0/tools/qemu-storage-daemon.html; the export "presents"
 * the node's guest-visible content, so reading the file gives the chain's raw data). This is what
 * Proxmox's qemu-server can restore from: `restore_vm_volume_init` must return a path that
 * `stat`s as a file and passes `file_size_info(..., 'raw', untrusted)` (qemu-server
 * `PVE/QemuServer.pm::restore_external_archive`), which an NBD URI does not. No kernel NBD, no
 * loop device, no copy of the disk.
 */
import { stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountsAt } from '../archive/mountinfo.ts'
import { awaitReady, startDaemon } from '../io/daemon.ts'
import { BackupError } from '../errors.ts'
import { run } from '../io/spawn.ts'
import { makeTempDir } from '../io/tmpdir.ts'
import { readOnlyChainSpec } from './chain.ts'
import type { Qcow2Spec } from './chain.ts'

/** Options of {@link startFuseExport}. */
export interface FuseExportOptions {
  /** The pinned chain (from `chainSpec` of an `openChain` result); opened read-only. */
  spec: Qcow2Spec
  /** Virtual size of the chain in bytes: the export is live once the file has this size. */
  size: number
  /** How long to wait for the mount, in milliseconds. Default 20 000. */
  readyTimeoutMs?: number
  /** Aborts the start (the daemon is stopped, nothing stays mounted). Not used after start. */
  signal?: AbortSignal | undefined
}

/** A running FUSE export. `stop()` (or dispose) ends it; idempotent. */
export interface FuseExport extends AsyncDisposable {
  /** The regular file showing the chain's raw content (read-only). */
  readonly path: string
  /** PID of qemu-storage-daemon. */
  readonly pid: number
  /**
   * SIGTERM (the daemon unmounts its export and exits), SIGKILL after 10 s, then a lazy
   * `fusermount3 -u -z` if a mount is still there, and removal of the temp dir.
   */
  stop(): Promise<void>
}

const NODE = 'gb-top'
const POLL_MS = 20

/** The spec with every node read-only, the top one named for the export. */
const readOnlySpec = (spec: Qcow2Spec): Record<string, unknown> => ({
  ...readOnlyChainSpec(spec),
  'node-name': NODE,
})

/**
 * Start qemu-storage-daemon exporting `opts.spec` onto a regular file and wait until the mount
 * is live (in `/proc/self/mountinfo`, with the chain's size).
 *
 * @throws BackupError `QEMU_TOOL_FAILED` (the daemon failed or timed out), `ABORTED`. On every
 *   failure the daemon is stopped, nothing stays mounted and the temp dir is gone.
 */
export const startFuseExport = async (opts: FuseExportOptions): Promise<FuseExport> => {
  opts.signal?.throwIfAborted()
  const dir = await makeTempDir('guestbackup-fuse-')
  const path = join(dir.path, 'disk.raw')
  // The FUSE mount point of a file export must be an existing regular file.
  await writeFile(path, '', { mode: 0o600, flag: 'wx' })
  const blockdev = JSON.stringify(readOnlySpec(opts.spec))
  // `allow-other=off`: only root (us, and qemu-img run by qemu-server as root) may read it.
  const exportSpec = JSON.stringify({
    type: 'fuse',
    id: 'gb-export',
    'node-name': NODE,
    mountpoint: path,
    writable: false,
    'allow-other': 'off',
  })
  const args = ['--blockdev', blockdev, '--export', exportSpec]
  // The daemon gets SIGTERM if we die (./io/daemon.ts), on which it unmounts its export.
  const daemon = startDaemon('qemu-storage-daemon', args)
  const { child } = daemon

  let stopping: Promise<void> | undefined
  const mounted = async (): Promise<boolean> => (await mountsAt(path)).length > 0
  const doStop = async (): Promise<void> => {
    await daemon.stop()
    // A daemon killed hard leaves a dead mount ("Transport endpoint is not connected").
    let error: unknown
    if (await mounted()) {
      await run('fusermount3', ['-u', '-z', path]).catch((e: unknown) => {
        error = e
      })
    }
    if (await mounted()) {
      throw new BackupError('QEMU_TOOL_FAILED', `cannot unmount the FUSE export ${path}`, {
        cause: error,
      })
    }
    await dir.remove()
  }
  const stop = (): Promise<void> => (stopping ??= doStop())
  const fail = async (msg: string, cause?: unknown): Promise<never> => {
    await stop()
    const tail = daemon.stderr().trim()
    throw new BackupError(
      'QEMU_TOOL_FAILED',
      `qemu-storage-daemon: ${msg}${tail ? `: ${tail}` : ''}`,
      { cause, details: { args } },
    )
  }

  await awaitReady(daemon, {
    ready: async () => {
      if (!(await mounted())) return false
      const size = (await stat(path)).size
      if (size === opts.size) return true
      return fail(`the export shows ${size} bytes, expected ${opts.size}`)
    },
    timeoutMs: opts.readyTimeoutMs ?? 20_000,
    pollMs: POLL_MS,
    signal: opts.signal,
    what: 'FUSE export',
    fail,
    stop,
    timeoutMessage: 'the FUSE export did not appear in time',
  })
  return { path, pid: child.pid ?? -1, stop, [Symbol.asyncDispose]: stop }
}
