/**
 * Directory handles that reach files beneath a trusted directory without ever following a
 * symbolic link, leaving the file system, or opening a special file: the store is untrusted
 * ground (anyone who can write to it, or a compromised NFS/CephFS server, can plant links,
 * FIFOs and device nodes), while guestbackup runs as root.
 *
 * Node's `fs` has no `openat(2)`. Linux gives the same guarantee through procfs: a path
 * `/proc/<pid>/fd/<n>/<name>` starts at the directory open as fd `n` (a "magic link" that
 * resolves to the open file itself, not to a name; see proc(5), `/proc/pid/fd/`), so
 * `open("/proc/<pid>/fd/<n>/<name>", O_NOFOLLOW)` is `openat(n, name, O_NOFOLLOW)`. Every step
 * below is anchored that way: a directory is opened with `O_DIRECTORY | O_NOFOLLOW` relative to
 * its already open parent, one plain name at a time, and must sit on the parent's device; a file
 * is opened with `O_PATH | O_NOFOLLOW` (which never opens a device or blocks on a FIFO) and
 * checked with `fstat` before its content is read through its own magic link. Child processes
 * (qemu-img, qemu-nbd, tar) are handed `/proc/<pid>/fd/<n>` of a pinned file, so a name swapped
 * after the check cannot redirect them.
 */
import { constants, lutimes } from 'node:fs'
import type { Dirent, Stats } from 'node:fs'
import {
  copyFile,
  lstat,
  mkdir,
  open,
  readdir,
  rename,
  rmdir,
  statfs,
  unlink,
} from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { BackupError } from '../errors.ts'

/**
 * `O_PATH` (Linux ≥ 2.6.39), absent from Node's `fs.constants`. The value is the generic one
 * (`include/uapi/asm-generic/fcntl.h`), used by x86-64 and arm64.
 */
export const O_PATH = 0o10000000

const O_DIR = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

/** Path of our own open fd `fd` as any process (ours or a child) can open it. */
export const fdPath = (fd: number): string => `/proc/${process.pid}/fd/${fd}`

/** A plain name: one path component, never `.`, `..`, empty, or containing `/` or NUL. */
export const isPlainName = (name: string): boolean =>
  name !== '' && name !== '.' && name !== '..' && !/[/\0]/.test(name) && name.length <= 255

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code

/** Error for a store entry that is not what it must be (a link, a FIFO, another device …). */
export const unsafePath = (what: string, why: string): BackupError =>
  new BackupError('UNSAFE_PATH', `refusing ${what}: ${why}`, { details: { path: what, why } })

const kind = (st: Stats): string =>
  st.isSymbolicLink()
    ? 'a symbolic link'
    : st.isDirectory()
      ? 'a directory'
      : st.isFIFO()
        ? 'a FIFO'
        : st.isSocket()
          ? 'a socket'
          : st.isBlockDevice() || st.isCharacterDevice()
            ? 'a device node'
            : st.isFile()
              ? 'a regular file'
              : 'not a regular file'

/** A regular file held open by `O_PATH`: its identity cannot change while it is pinned. */
export interface PinnedFile extends AsyncDisposable {
  /** `/proc/<pid>/fd/<n>`: open it (in-process or in a child) to reach exactly this file. */
  readonly path: string
  /** `fstat` of the pinned file at pin time. */
  readonly stat: Stats
  /** Where the file was found, for messages. */
  readonly label: string
  close(): Promise<void>
}

/** Options of {@link Dir.openDir}. */
export interface OpenDirOptions {
  /** Create the directory (with this mode) if it does not exist. */
  create?: number
}

/**
 * An open directory of a trusted tree. Every name passed to its methods must be a plain name
 * ({@link isPlainName}); nothing reached through it follows a symbolic link.
 */
export class Dir implements AsyncDisposable {
  readonly #fh: FileHandle
  readonly #dev: number
  /** The directory's logical path, for messages only (never opened). */
  readonly label: string

  private constructor(fh: FileHandle, dev: number, label: string) {
    this.#fh = fh
    this.#dev = dev
    this.label = label
  }

  /**
   * Open a trusted directory by path (the store root an administrator named). Symbolic links
   * in this path are the administrator's and are followed; nothing below it is.
   */
  static async open(path: string, opts: { noFollow?: boolean } = {}): Promise<Dir> {
    let fh: FileHandle
    try {
      // noFollow: the last component must not be a symbolic link (ELOOP).
      const flags = opts.noFollow === true ? O_DIR : constants.O_RDONLY | constants.O_DIRECTORY
      fh = await open(path, flags)
    } catch (e) {
      const code = errno(e) === 'ENOENT' ? 'NOT_FOUND' : 'IO'
      throw new BackupError(code, `cannot open directory ${path}: ${(e as Error).message}`, {
        cause: e,
      })
    }
    const st = await fh.stat()
    return new Dir(fh, st.dev, path)
  }

  /** `/proc/<pid>/fd/<n>`: this directory, for `cwd` of a child or in-process calls. */
  get path(): string {
    return fdPath(this.#fh.fd)
  }

  /** The path of `name` in this directory, anchored at the open fd. Its last component is
   * resolved by whoever opens it: pass it only to calls that do not follow it. */
  at(name: string): string {
    if (!isPlainName(name)) throw unsafePath(`${this.label}/${name}`, 'not a plain file name')
    return `${this.path}/${name}`
  }

  /** Display path of an entry. */
  labelOf(name: string): string {
    return `${this.label}/${name}`
  }

  /** `lstat` of an entry, or undefined if there is none. */
  async lstat(name: string): Promise<Stats | undefined> {
    try {
      return await lstat(this.at(name))
    } catch (e) {
      if (errno(e) === 'ENOENT') return undefined
      throw e
    }
  }

  /** Entries of this directory (never `.`/`..`), sorted by name. */
  async list(): Promise<Dirent[]> {
    const entries = await readdir(this.path, { withFileTypes: true })
    return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  /**
   * Open the subdirectory `name`: refused if it is a symbolic link, not a directory, or on
   * another device (a mount point). `NOT_FOUND` if it does not exist (unless `create`).
   */
  async openDir(name: string, opts: OpenDirOptions = {}): Promise<Dir> {
    const path = this.at(name)
    if (opts.create !== undefined) {
      try {
        await mkdir(path, { mode: opts.create })
      } catch (e) {
        if (errno(e) !== 'EEXIST') throw e
      }
    }
    let fh: FileHandle
    try {
      fh = await open(path, O_DIR)
    } catch (e) {
      const code = errno(e)
      if (code === 'ENOENT') {
        throw new BackupError('NOT_FOUND', `${this.labelOf(name)} does not exist`, { cause: e })
      }
      if (code === 'ELOOP' || code === 'ENOTDIR') {
        const st = await this.lstat(name).catch(() => undefined)
        throw unsafePath(this.labelOf(name), st ? `${kind(st)}, not a directory` : code)
      }
      throw e
    }
    const st = await fh.stat()
    if (st.dev !== this.#dev) {
      await fh.close()
      throw unsafePath(this.labelOf(name), 'a mount point (another file system)')
    }
    return new Dir(fh, st.dev, this.labelOf(name))
  }

  /** {@link openDir}, or undefined when `name` does not exist. */
  async tryOpenDir(name: string): Promise<Dir | undefined> {
    try {
      return await this.openDir(name)
    } catch (e) {
      if (e instanceof BackupError && e.code === 'NOT_FOUND') return undefined
      throw e
    }
  }

  /**
   * Pin the regular file `name`: opened with `O_PATH | O_NOFOLLOW`, refused unless it is a
   * regular file on this directory's device. `NOT_FOUND` if it does not exist.
   */
  async pin(name: string): Promise<PinnedFile> {
    let fh: FileHandle
    try {
      fh = await open(this.at(name), O_PATH | constants.O_NOFOLLOW)
    } catch (e) {
      if (errno(e) === 'ENOENT') {
        throw new BackupError('NOT_FOUND', `${this.labelOf(name)} does not exist`, { cause: e })
      }
      throw e
    }
    const st = await fh.stat()
    if (!st.isFile() || st.dev !== this.#dev) {
      await fh.close()
      throw unsafePath(
        this.labelOf(name),
        st.isFile() ? 'on another file system' : `${kind(st)}, not a regular file`,
      )
    }
    return pinned(fh, st, this.labelOf(name))
  }

  /** {@link pin}, or undefined when `name` does not exist. */
  async tryPin(name: string): Promise<PinnedFile | undefined> {
    try {
      return await this.pin(name)
    } catch (e) {
      if (e instanceof BackupError && e.code === 'NOT_FOUND') return undefined
      throw e
    }
  }

  /**
   * Read the regular file `name` as UTF-8, at most `max` bytes (a larger file is refused, not
   * truncated). `NOT_FOUND` if it does not exist.
   */
  async readFile(name: string, max: number): Promise<string> {
    await using file = await this.pin(name)
    return (await readPinned(file, max)).toString('utf8')
  }

  /** {@link readFile} as bytes. */
  async readBytes(name: string, max: number): Promise<Buffer> {
    await using file = await this.pin(name)
    return await readPinned(file, max)
  }

  /** {@link readFile}, or undefined when `name` does not exist. */
  async tryReadFile(name: string, max: number): Promise<string | undefined> {
    await using file = await this.tryPin(name)
    return file === undefined ? undefined : (await readPinned(file, max)).toString('utf8')
  }

  /**
   * Create the file `name` exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`: an existing entry,
   * a planted link included, makes it fail) and pin it.
   */
  async createFile(name: string, mode = 0o600): Promise<PinnedFile> {
    const fh = await open(
      this.at(name),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      mode,
    )
    return pinned(fh, await fh.stat(), this.labelOf(name))
  }

  /**
   * Replace `name` atomically and durably: a fresh, exclusively created temporary file with a
   * random name, fsynced, renamed over `name` (a rename replaces a planted link, it never
   * writes through it), then the directory fsynced.
   */
  async writeFileAtomic(name: string, data: string | Buffer, mode = 0o600): Promise<void> {
    const tmp = `.${name.slice(0, 200)}.${randomBytes(6).toString('hex')}.tmp`
    const fh = await open(
      this.at(tmp),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      mode,
    )
    try {
      try {
        await fh.writeFile(data)
        await fh.sync()
      } finally {
        await fh.close()
      }
      await rename(this.at(tmp), this.at(name))
    } catch (e) {
      await unlink(this.at(tmp)).catch(() => undefined)
      throw e
    }
    await this.sync()
  }

  /** Copy the trusted file `source` into a new entry `name` (refused if `name` exists). */
  async copyIn(source: string, name: string): Promise<void> {
    await copyFile(source, this.at(name), constants.COPYFILE_EXCL)
  }

  /** Create the subdirectory `name`; false if it existed. */
  async mkdir(name: string, mode = 0o700): Promise<boolean> {
    try {
      await mkdir(this.at(name), { mode })
      return true
    } catch (e) {
      if (errno(e) === 'EEXIST') return false
      throw e
    }
  }

  /** Remove the non-directory entry `name` (a link itself, never its target); true if it was there. */
  async unlink(name: string): Promise<boolean> {
    try {
      await unlink(this.at(name))
      return true
    } catch (e) {
      if (errno(e) === 'ENOENT') return false
      throw e
    }
  }

  /** Rename the entry `from` to `to` in `target` (default: this directory). */
  async rename(from: string, to: string, target: Dir = this): Promise<void> {
    await rename(this.at(from), target.at(to))
  }

  /**
   * Remove `name` and, if it is a directory, everything below it. Links are removed, never
   * followed; a mount point inside is refused (nothing on another file system is deleted).
   * True if something was removed.
   */
  async removeTree(name: string): Promise<boolean> {
    const st = await this.lstat(name)
    if (st === undefined) return false
    if (!st.isDirectory()) return this.unlink(name)
    {
      await using sub = await this.openDir(name)
      for (const e of await sub.list()) await sub.removeTree(e.name)
    }
    try {
      await rmdir(this.at(name))
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e
    }
    return true
  }

  /** Set an entry's times without following a link (the lock's heartbeat). */
  lutimes(name: string, time: Date): Promise<void> {
    return new Promise((resolve, reject) => {
      lutimes(this.at(name), time, time, (e) => {
        if (e) reject(e)
        else resolve()
      })
    })
  }

  /** Free bytes available to us on this directory's file system. */
  async freeBytes(): Promise<number> {
    const s = await statfs(this.path)
    return s.bavail * s.bsize
  }

  /** fsync the directory, so renames and creations inside it are durable. */
  async sync(): Promise<void> {
    await this.#fh.sync()
  }

  /** Change the owner of the directory itself. */
  async chown(uid: number, gid: number): Promise<void> {
    await this.#fh.chown(uid, gid)
  }

  /** Change the mode of the directory itself. */
  async chmod(mode: number): Promise<void> {
    await this.#fh.chmod(mode)
  }

  /**
   * Give the regular file `name` the owner `uid:gid` and `mode`, through its own open handle
   * (`O_NOFOLLOW | O_NONBLOCK`, checked with `fstat`). False, changing nothing, when `name` is
   * not a regular file of this device with a single link (a link, FIFO, device node, directory
   * or hard link: not a file this store wrote).
   */
  async ownFile(name: string, uid: number, gid: number, mode: number): Promise<boolean> {
    // lstat first, so a device node is never opened; fstat then checks what was opened.
    if ((await this.lstat(name))?.isFile() !== true) return false
    let fh: FileHandle
    try {
      fh = await open(
        this.at(name),
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
      )
    } catch (e) {
      if (errno(e) === 'ELOOP' || errno(e) === 'ENXIO') return false
      throw e
    }
    try {
      const st = await fh.stat()
      if (!st.isFile() || st.nlink !== 1 || st.dev !== this.#dev) return false
      await fh.chown(uid, gid)
      await fh.chmod(mode)
      return true
    } finally {
      await fh.close()
    }
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => undefined)
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

const pinned = (fh: FileHandle, stat: Stats, label: string): PinnedFile => {
  const close = async (): Promise<void> => {
    await fh.close().catch(() => undefined)
  }
  return { path: fdPath(fh.fd), stat, label, close, [Symbol.asyncDispose]: close }
}

const readPinned = async (file: PinnedFile, max: number): Promise<Buffer> => {
  if (file.stat.size > max) throw unsafePath(file.label, `larger than ${max} bytes`)
  // The magic link itself is followed here: it names exactly the pinned file.
  await using fh = await open(file.path, constants.O_RDONLY)
  const buf = Buffer.alloc(Math.min(max, file.stat.size) + 1)
  let n = 0
  for (;;) {
    const { bytesRead } = await fh.read(buf, n, buf.length - n, n)
    if (bytesRead === 0) break
    n += bytesRead
    if (n === buf.length) throw unsafePath(file.label, `grew beyond ${max} bytes while read`)
  }
  return buf.subarray(0, n)
}

/** procfs and sysfs report sizes of 0 for files with content: never input to a backup. */
const PSEUDO_FS = new Set([0x9fa0 /* PROC_SUPER_MAGIC */, 0x62656572 /* SYSFS_MAGIC */])

/**
 * Read a file named by the user (a guest config): it must be a regular file, not on procfs or
 * sysfs, of at most `max` bytes. Checked through an `O_PATH` open, so a FIFO or a device is
 * refused at once instead of blocking or streaming without end. `USAGE` error otherwise.
 */
export const readInputFile = async (path: string, what: string, max: number): Promise<string> => {
  let fh: FileHandle
  try {
    fh = await open(path, O_PATH)
  } catch (e) {
    throw new BackupError('USAGE', `cannot read ${what} ${path}: ${(e as Error).message}`, {
      cause: e,
    })
  }
  await using file = pinned(fh, await fh.stat(), path)
  if (!file.stat.isFile()) {
    throw new BackupError('USAGE', `${what} ${path} is ${kind(file.stat)}, not a regular file`)
  }
  if (PSEUDO_FS.has((await statfs(file.path)).type)) {
    throw new BackupError('USAGE', `${what} ${path} is a kernel pseudo-file, not a config file`)
  }
  try {
    return (await readPinned(file, max)).toString('utf8')
  } catch (e) {
    if (e instanceof BackupError && e.code === 'UNSAFE_PATH') {
      throw new BackupError('USAGE', `${what} ${path} is larger than ${max} bytes`, { cause: e })
    }
    throw new BackupError('USAGE', `cannot read ${what} ${path}: ${(e as Error).message}`, {
      cause: e,
    })
  }
}
