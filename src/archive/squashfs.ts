/**
 * Container archives as squashfs images: created with `mksquashfs`, opened for the 'directory'
 * restore mechanism with a FUSE mount (no `mount`, no loop devices), and copied into the new
 * root with a tar pipe, as pve-container does.
 *
 * Fidelity (measured by test/archive/squashfs.test.ts): squashfs keeps owners, modes, mtimes,
 * hardlinks, symlinks, fifos, device nodes and `user.`/`trusted.`/`security.` xattrs, but
 * **POSIX ACLs are lost** (squashfs has no `system.` xattr prefix). Reading through squashfuse
 * 0.1.104 adds two quirks, both handled or documented in {@link extractDirectory}: it lists
 * `security.*` xattrs as `trusted.*` and vice versa (fixed upstream in vasi/squashfuse#83), and it
 * reports full `st_blocks`, so copies of sparse files are fully allocated. guestbackup's own
 * restore therefore unpacks the image with `unsquashfs` (squashfs-extract.ts) and uses the mount
 * only for file capabilities; Proxmox copies the mount.
 */
import { constants } from 'node:fs'
import { chmod, mkdtemp, open, realpath, rm, stat, writeFile } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import { run, spawnTool } from '../io/spawn.ts'
import type { Tool } from '../io/spawn.ts'
import type { UserNamespace } from '../io/userns.ts'
import { parseExcludes, squashfsExcludeArgs } from './excludes.ts'
import { findExcluded } from './exclude-walk.ts'
import { writeAtomically } from '../io/fs.ts'
import { assertDirectory, followProcIo, stderrLines } from './internal.ts'
import { mountsAt } from './mountinfo.ts'

export { extractDirectory } from './directory.ts'
export type { ExtractDirectoryOptions } from './directory.ts'

/**
 * mksquashfs' `-mem`: the memory its read, fragment and write queues may use. Its default is a
 * quarter of the host's physical memory (squashfs-tools `USAGE`, "-mem <size> Use <size>
 * physical memory", and `get_default_phys_mem()` in `mksquashfs.c`), which on a virtualisation
 * host is far more than a backup should take. 128 MiB keeps its peak RSS near 120 MiB (256 MiB
 * let it reach ~185 MiB) in the same time, measured on 2 cores over a 23k-file, 550 MiB tree
 * (bench/lib/ct-tree.ts).
 */
export const MKSQUASHFS_MEM = '128M'

/** The warning returned when mksquashfs dropped POSIX ACLs. */
export const SQUASHFS_ACL_WARNING = 'squashfs does not store POSIX ACLs'

/** Options of {@link createSquashfs}. */
export interface CreateSquashfsOptions {
  /** The directory whose contents become the image's root. */
  directory: string
  /** vzdump exclude patterns, see `excludes.ts`. `lost+found` is always excluded. */
  excludes?: readonly string[] | undefined
  /** Final image path; written as `output + '.partial'` first. Must not exist. */
  output: string
  /** zstd level. Default 3 (mksquashfs' default 15 is about 20× slower for the same size). */
  compressionLevel?: number | undefined
  /** Kills mksquashfs and removes the partial image. */
  signal?: AbortSignal | undefined
  /**
   * Gets the bytes mksquashfs has read so far (about the tree's data: see
   * {@link followProcIo}), about twice a second.
   */
  onBytesRead?: ((bytes: number) => void) | undefined
  /**
   * Run mksquashfs in this user namespace, as an unprivileged container's mapped root: the image
   * holds the container's view of the owners. Default: as ourselves.
   */
  namespace?: UserNamespace | undefined
}

/** Result of {@link createSquashfs}. */
export interface CreateSquashfsResult {
  /** Size of the image in bytes. */
  bytes: number
  /** Exclude warnings, {@link SQUASHFS_ACL_WARNING} if ACLs were dropped, other diagnostics. */
  warnings: string[]
}

/**
 * Build a squashfs image of `directory`, as the DirectoryExample's squashfs mode does:
 * `mksquashfs DIR OUT.partial -noappend -quiet -no-progress -mem 128M -comp zstd
 * -Xcompression-level 3 -wildcards -ef /dev/stdin [-e …]` ({@link MKSQUASHFS_MEM}; the
 * excluded paths are those tar would leave out, excludes.ts {@link squashfsExcludeArgs}), then fsync and rename to `output`. Called once per container backup in
 * squashfs mode. POSIX ACLs are not stored (see the module comment).
 *
 * @throws BackupError `USAGE` (bad excludes, existing output), `ARCHIVE_TOOL_FAILED` with
 *   mksquashfs' stderr, `ABORTED`. No output or partial file is left behind.
 */
export const createSquashfs = async (
  opts: CreateSquashfsOptions,
): Promise<CreateSquashfsResult> => {
  throwIfAborted(opts.signal)
  const rules = parseExcludes(opts.excludes ?? [])
  const level = opts.compressionLevel ?? 3
  if (!Number.isInteger(level) || level < 1 || level > 22) {
    throw new BackupError('USAGE', `invalid zstd compression level ${level}`)
  }
  const ns = opts.namespace
  // tar's matcher decides (exclude-match.ts); mksquashfs is handed the paths it found.
  const excl = squashfsExcludeArgs(
    await findExcluded(opts.directory, opts.excludes ?? [], { signal: opts.signal }),
  )
  const stderr = await writeAtomically(opts.output, async (partial) => {
    // Absolute paths: mksquashfs would take a name starting with '-' for an option.
    // In a namespace mksquashfs cannot open our `/proc/<pid>/fd/<n>` (ptrace access mode, proc(5)):
    // it writes to its stdout, the partial file handed to it owned by the mapped root.
    await using out = ns === undefined ? undefined : await handOver(partial, ns)
    const dest = out === undefined ? resolve(partial) : '/proc/self/fd/1'
    const args = [
      ns === undefined ? resolve(opts.directory) : '.',
      dest,
      '-noappend',
      '-quiet',
      '-no-progress',
    ]
    args.push('-mem', MKSQUASHFS_MEM)
    args.push('-comp', 'zstd')
    args.push('-Xcompression-level', String(level), ...excl.args)
    // It writes into the store itself: it must not outlive a killed run (tar, writing into our
    // pipe, dies of SIGPIPE with us).
    await using list = await excludeFile(excl.input)
    const tool = spawnTool('mksquashfs', args, {
      stdin: list.fd,
      stdout: out?.fd ?? 'ignore',
      signal: opts.signal,
      dieWithParent: true,
      namespace: ns,
      // As tar's (tar.ts): the mapped root needs no search permission on the path to it.
      ...(ns === undefined ? {} : { cwd: resolve(opts.directory) }),
    })
    if (opts.onBytesRead === undefined) await tool.done
    else await followProcIo(tool.child.pid, tool.done, 'rchar', opts.onBytesRead)
    if (ns !== undefined) {
      // mksquashfs stores an unreadable file as empty and goes on (mksquashfs.c, "Failed to read
      // file %s, creating empty file"); tar, as Proxmox runs it, fails the backup instead.
      const bad = /^Failed to read file (.*), creating empty file$/m.exec(tool.stderr())
      if (bad !== null) {
        throw new BackupError(
          'ARCHIVE_TOOL_FAILED',
          `mksquashfs: ${bad[1] ?? '?'}: Cannot open: Permission denied (as the container's root)`,
        )
      }
      await out?.chown(0, 0)
    }
    await chmod(partial, 0o600) // like the tar archive: a whole container file system
    return tool.stderr()
  })
  const warnings = [...rules.warnings]
  const seen = new Set<string>()
  for (const line of stderrLines(stderr)) {
    const w = line.startsWith('Unrecognised xattr prefix system.posix_acl_')
      ? SQUASHFS_ACL_WARNING
      : line
    if (!seen.has(w)) warnings.push(w)
    seen.add(w)
  }
  const { size } = await stat(opts.output)
  return { bytes: size, warnings }
}

/**
 * The exclude file as mksquashfs' stdin (`-ef /dev/stdin`): a regular file, since Node's pipes
 * are sockets that /dev/stdin cannot open (ENXIO). Removed at once, readable by the mapped root
 * through its own `/proc/self/fd/0`; closed on dispose.
 */
const excludeFile = async (input: Buffer): Promise<FileHandle & AsyncDisposable> => {
  const dir = await mkdtemp(join(tmpdir(), 'gb-excludes-'))
  try {
    const path = join(dir, 'excludes')
    await writeFile(path, input, { mode: 0o644 })
    const fh = await open(path, constants.O_RDONLY)
    return Object.assign(fh, { [Symbol.asyncDispose]: () => fh.close() })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** The partial image opened for writing and owned by the namespace's root, closed on dispose. */
const handOver = async (
  partial: string,
  ns: UserNamespace,
): Promise<FileHandle & AsyncDisposable> => {
  const fh = await open(partial, constants.O_WRONLY)
  await fh.chown(ns.rootUid, ns.rootGid)
  return Object.assign(fh, { [Symbol.asyncDispose]: () => fh.close() })
}

/** The FUSE programs that can serve a squashfs image (both from the squashfuse package). */
export type SquashfuseProgram = 'squashfuse_ll' | 'squashfuse'

/** Options of {@link mountSquashfs}. */
export interface MountSquashfsOptions {
  /** Aborts waiting for the mount; a half-started mount is cleaned up. */
  signal?: AbortSignal | undefined
  /** How long to wait for the mount to appear, in ms. Default 10 000. */
  timeoutMs?: number | undefined
  /**
   * Default `squashfuse_ll`: it passes the image's inode numbers through, so hardlinks stay
   * hardlinks when the tree is copied out. `squashfuse` (high-level FUSE) invents a new inode
   * number per path, so tar would store hardlinked files twice.
   */
  program?: SquashfuseProgram | undefined
}

/** How long to wait for squashfuse to exit after an unmount, before signalling it (ms). */
const EXIT_TIMEOUT_MS = 5000
/** Poll interval while waiting for the mount to appear (ms). */
const POLL_MS = 10

/** Resolve with true if `p` settles within `ms`, else false. */
const within = async (p: Promise<unknown>, ms: number): Promise<boolean> => {
  const ac = new AbortController()
  const timer = sleep(ms, false, { signal: ac.signal }).catch(() => false)
  const r = await Promise.race([p.then(() => true), timer])
  ac.abort()
  return r
}

/**
 * A squashfs image served read-only by a `squashfuse -f` child. Dispose (or
 * {@link SquashfsMount.unmount}) to unmount with `fusermount3 -u` and reap the child.
 */
export class SquashfsMount implements AsyncDisposable {
  /** The mount point (resolved, absolute). */
  readonly path: string
  /** The image file. */
  readonly image: string
  readonly #tool: Tool
  readonly #exited: Promise<void>
  #hasExited = false
  #unmounting: Promise<void> | undefined

  /** @internal Use {@link mountSquashfs}. */
  constructor(image: string, path: string, tool: Tool) {
    this.image = image
    this.path = path
    this.#tool = tool
    this.#exited = tool.done.then(
      () => {
        this.#hasExited = true
      },
      () => {
        this.#hasExited = true
      },
    )
  }

  /** @internal Wait until the FUSE mount appears, the child fails, or the wait is aborted. */
  async waitMounted(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      throwIfAborted(signal)
      if (await this.#mounted()) return
      if (this.#hasExited) {
        await this.#tool.done // rejects with squashfuse's stderr
        throw new BackupError(
          'ARCHIVE_TOOL_FAILED',
          `squashfuse exited without mounting ${this.path}`,
        )
      }
      if (Date.now() > deadline) {
        throw new BackupError('ARCHIVE_TOOL_FAILED', `timed out mounting ${this.image}`, {
          details: { stderr: this.#tool.stderr() },
        })
      }
      await sleep(POLL_MS)
    }
  }

  /** Whether anything is mounted at our path ({@link mountSquashfs} required nothing before). */
  async #mounted(): Promise<boolean> {
    return (await mountsAt(this.path)).length > 0
  }

  async #fusermount(lazy: boolean): Promise<unknown> {
    try {
      await run('fusermount3', lazy ? ['-u', '-z', this.path] : ['-u', this.path])
      return undefined
    } catch (e) {
      return e
    }
  }

  async #unmount(): Promise<void> {
    let error: unknown
    if (await this.#mounted()) {
      // A busy mount (open files, a cwd inside) cannot be unmounted; detach it lazily instead.
      error = await this.#fusermount(false)
      if (error !== undefined && (await this.#fusermount(true)) === undefined) error = undefined
      if (!(await within(this.#exited, EXIT_TIMEOUT_MS))) this.#tool.child.kill('SIGTERM')
    } else if (!this.#hasExited) {
      // Not (yet) mounted: stop squashfuse; libfuse unmounts on SIGTERM if it got that far.
      this.#tool.child.kill('SIGTERM')
    }
    if (!(await within(this.#exited, EXIT_TIMEOUT_MS))) this.#tool.child.kill('SIGKILL')
    await this.#exited
    // A child that died on its own leaves a dead mount ("Transport endpoint is not connected").
    if (await this.#mounted()) error = (await this.#fusermount(true)) ?? error
    if (await this.#mounted()) {
      throw new BackupError('ARCHIVE_TOOL_FAILED', `cannot unmount ${this.path}`, { cause: error })
    }
  }

  /** Unmount and wait for squashfuse to exit. Idempotent; concurrent calls share one attempt. */
  unmount(): Promise<void> {
    this.#unmounting ??= this.#unmount()
    return this.#unmounting
  }

  /** Same as {@link SquashfsMount.unmount}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.unmount()
  }
}

/**
 * Mount `image` read-only at `mountpoint` (an existing directory) with `squashfuse_ll -f` as a
 * managed child process, and wait until the mount is visible in `/proc/self/mountinfo`. Called by
 * a provider's `restore_container_init` for the 'directory' mechanism; dispose the result in
 * `restore_container_cleanup`. If this process dies, the mount stays until `fusermount3 -u`.
 *
 * @throws BackupError `USAGE` (image not a file, mountpoint not a directory or already a mount
 *   point), `ARCHIVE_TOOL_FAILED` (squashfuse failed, e.g. not a squashfs image, or timed out),
 *   `ABORTED`. On any failure no mount and no child process remain.
 */
export const mountSquashfs = async (
  image: string,
  mountpoint: string,
  opts: MountSquashfsOptions = {},
): Promise<SquashfsMount> => {
  throwIfAborted(opts.signal)
  const st = await stat(image).catch((e: unknown) => {
    throw new BackupError('USAGE', `image ${image} is not accessible`, { cause: e })
  })
  if (!st.isFile()) throw new BackupError('USAGE', `image ${image} is not a regular file`)
  await assertDirectory(mountpoint, 'mountpoint')
  const path = await realpath(mountpoint)
  if ((await mountsAt(path)).length > 0)
    throw new BackupError('USAGE', `${path} is already a mount point`)
  const program = opts.program ?? 'squashfuse_ll'
  const args = ['-f', resolve(image), path]
  const tool = spawnTool(program, args, { stdin: 'ignore', stdout: 'ignore' })
  const mount = new SquashfsMount(image, path, tool)
  try {
    await mount.waitMounted(opts.timeoutMs ?? 10_000, opts.signal)
    return mount
  } catch (e) {
    await mount.unmount()
    throw e
  }
}
