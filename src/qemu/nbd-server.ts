/**
 * qemu-nbd as a managed child serving one image on a unix socket inside a private 0700 temp
 * dir. Never `qemu-nbd -c` (kernel NBD), never /dev/nbdN, never modprobe, never mount.
 */
import { stat } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import { awaitReady, startDaemon } from '../io/daemon.ts'
import { BackupError, isBackupError } from '../errors.ts'
import { makeTempDir } from '../io/tmpdir.ts'
import type { TempDir } from '../io/tmpdir.ts'
import type { ImageFormat } from './img.ts'

/** Host page cache mode of qemu-nbd (`--cache`); `none` and `directsync` open with O_DIRECT. */
export type QemuNbdCache = 'none' | 'writeback' | 'writethrough' | 'directsync'

/** Options of {@link startQemuNbd}. */
export interface QemuNbdOptions {
  /**
   * The image: an absolute path (with `format`), or a `json:{…}` spec built by guestbackup
   * (an explicit chain; `format` is then ignored).
   */
  image: string
  format?: ImageFormat
  /** Export name; default `''` (the default export). */
  exportName?: string
  /** Serve read-only (`-r`). Default false. */
  readOnly?: boolean
  /** Pass guest discards down to the image (`--discard=unmap`). Default false. */
  discard?: boolean
  /** Expose a persistent qcow2 dirty bitmap as `qemu:dirty-bitmap:<name>` (`-B`). */
  bitmap?: string
  /** Host page cache mode. Default `writeback` (flushes are honoured). */
  cache?: QemuNbdCache
  /**
   * Cache mode to start once more with when `cache` needs O_DIRECT and the image's file system
   * refuses it (open fails with EINVAL, e.g. tmpfs before Linux 6.6). Any other failure is
   * thrown as it is. Default: no retry.
   */
  cacheFallback?: QemuNbdCache | undefined
  /** Receives a line when the start is retried with `cacheFallback`. */
  log?: ((msg: string) => void) | undefined
  /** AIO mode; `native` needs `cache: 'none'`. Default `threads`. */
  aio?: 'threads' | 'native' | 'io_uring'
  /** Also expose `qemu:allocation-depth` (`-A`). */
  allocationDepth?: boolean
  /** Max simultaneous clients (`-e`). Default 8. */
  shared?: number
  /** Seconds to wait for the server to listen. Default 20. */
  readyTimeoutSec?: number
  signal?: AbortSignal | undefined
}

/** A running qemu-nbd. `stop()` (or dispose) terminates it by its own PID. */
export interface QemuNbd extends AsyncDisposable {
  /** Path of the unix socket. */
  readonly socketPath: string
  readonly exportName: string
  readonly pid: number
  /** `nbd+unix:///<export>?socket=<path>` for qemu-img and libnbd tools. */
  readonly uri: string
  /** SIGTERM (qemu-nbd flushes and closes the image), SIGKILL after 10 s; removes the dir. */
  stop(): Promise<void>
}

/**
 * qemu-nbd allocates a bounce buffer per request (`qemu_blockalign`), which glibc serves with a
 * fresh mmap above its 128 KiB threshold (mallopt(3) M_MMAP_THRESHOLD): every request of a copy
 * then faults in and zeroes its pages. With the threshold above the largest NBD request (32 MiB)
 * and trimming above the buffers in flight, they come from the heap and are reused: measured
 * here, ~0.6 CPU-s of kernel time less per GiB copied (bench/). Tunables: glibc's manual,
 * "Memory Allocation Tunables".
 */
const MALLOC_TUNABLES = {
  GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728',
}

const canConnect = (path: string): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect({ path })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => {
      resolve(false)
    })
  })

const isWritten = async (path: string): Promise<boolean> =>
  ((await stat(path).catch(() => undefined))?.size ?? 0) > 0

/**
 * qemu-nbd's words when O_DIRECT's open failed with EINVAL: QEMU 5.0+ reopens without O_DIRECT
 * to tell "filesystem does not support O_DIRECT" (`qemu_open_internal`, util/osdep.c,
 * https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/util/osdep.c); older ones print strerror.
 */
const O_DIRECT_REFUSED =
  /filesystem does not support O_DIRECT|Could not open '[^']*': Invalid argument/

const usesODirect = (cache: QemuNbdCache): boolean => cache === 'none' || cache === 'directsync'

/**
 * Start qemu-nbd and wait until it accepts connections. Fails with `QEMU_TOOL_FAILED` (the tail
 * of qemu-nbd's stderr in the message and in `details.stderr`) or `ABORTED`.
 */
export const startQemuNbd = async (opts: QemuNbdOptions): Promise<QemuNbd> => {
  const cache = opts.cache ?? 'writeback'
  const fallback = opts.cacheFallback
  try {
    return await startOnce(opts, cache)
  } catch (e) {
    if (fallback === undefined || !usesODirect(cache) || !refusesODirect(e)) throw e
    opts.log?.(
      `qemu-nbd: the file system refuses O_DIRECT (cache=${cache}), retrying with cache=${fallback}`,
    )
    return startOnce(opts, fallback)
  }
}

const refusesODirect = (e: unknown): boolean =>
  isBackupError(e, 'QEMU_TOOL_FAILED') && O_DIRECT_REFUSED.test(String(e.details?.['stderr']))

const startOnce = async (opts: QemuNbdOptions, cache: QemuNbdCache): Promise<QemuNbd> => {
  const dir: TempDir = await makeTempDir('guestbackup-nbd-')
  const socketPath = join(dir.path, 'nbd.sock')
  const pidFile = join(dir.path, 'qemu-nbd.pid')
  const exportName = opts.exportName ?? ''
  const args = [
    `--socket=${socketPath}`,
    `--pid-file=${pidFile}`,
    '--persistent',
    `--shared=${opts.shared ?? 8}`,
    `--export-name=${exportName}`,
    `--cache=${cache}`,
    `--aio=${opts.aio ?? 'threads'}`,
  ]
  if (!opts.image.startsWith('json:')) args.push(`--format=${opts.format ?? 'raw'}`)
  if (opts.readOnly === true) args.push('--read-only')
  if (opts.discard === true) args.push('--discard=unmap')
  if (opts.bitmap !== undefined) args.push(`--bitmap=${opts.bitmap}`)
  if (opts.allocationDepth === true) args.push('--allocation-depth')
  args.push(opts.image)

  // qemu-nbd gets SIGTERM if we die (../io/daemon.ts): no server keeps a disk or a partial
  // backup locked.
  const daemon = startDaemon('qemu-nbd', args, MALLOC_TUNABLES)
  const { child } = daemon
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await daemon.stop()
    await dir.remove()
  }
  const fail = async (msg: string, cause?: unknown): Promise<never> => {
    await stop()
    const tail = daemon.stderr().trim()
    throw new BackupError('QEMU_TOOL_FAILED', `qemu-nbd: ${msg}${tail ? `: ${tail}` : ''}`, {
      cause,
      details: { args, stderr: tail },
    })
  }

  // qemu-nbd listens before it opens the image (qemu-nbd.c: the listener comes first, then
  // blk_new_open) and writes its pid file only once the image is open: a connection alone
  // may reach a server about to fail. Both together mean the export is served.
  await awaitReady(daemon, {
    ready: async () => (await isWritten(pidFile)) && (await canConnect(socketPath)),
    timeoutMs: (opts.readyTimeoutSec ?? 20) * 1000,
    signal: opts.signal,
    what: 'qemu-nbd',
    fail,
    stop,
    timeoutMessage: 'did not start listening in time',
  })
  const pid = child.pid ?? -1
  return {
    socketPath,
    exportName,
    pid,
    uri: `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`,
    stop,
    [Symbol.asyncDispose]: stop,
  }
}
