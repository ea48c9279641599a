/**
 * Where a restored VM disk is written: a new sparse raw file in the restore directory, or an
 * existing regular file or block device the administrator named (`restore --target-disk`).
 * Either is opened here, by us, and stays open until the copy ends; `qemu-img` is handed
 * `/proc/<pid>/fd/<n>` of that open file (proc(5), `/proc/pid/fd/`), so it writes exactly the
 * file that was checked, whatever happens to the name meanwhile.
 */
import { constants } from 'node:fs'
import type { Stats } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { BackupError } from '../errors.ts'
import { fdPath, O_PATH } from '../io/beneath.ts'

/** An open restore target; disposing it closes it. */
export interface RawTarget extends AsyncDisposable {
  /** `/proc/<pid>/fd/<n>` of the open target, for qemu-img. */
  readonly path: string
  /** The path it was opened by, for messages. */
  readonly label: string
  /** Created here and all zero (a fresh sparse file): zeroes need not be written. */
  readonly fresh: boolean
  /**
   * The file system takes `O_DIRECT` writes (tmpfs, for one, refuses them): qemu-img may write
   * with `-t none`, past the page cache.
   */
  readonly direct: boolean
  /** `dev:ino` of a file, `rdev` of a block device: two targets with one identity are one disk. */
  readonly identity: string
  close(): Promise<void>
}

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code

const describe = (st: Stats): string =>
  st.isSymbolicLink()
    ? 'a symbolic link'
    : st.isDirectory()
      ? 'a directory'
      : st.isCharacterDevice()
        ? 'a character device'
        : st.isFIFO()
          ? 'a FIFO'
          : st.isSocket()
            ? 'a socket'
            : 'not a file'

/** Whether `O_DIRECT` opens of the file behind `fh` succeed (EINVAL where unsupported). */
const takesDirect = async (fh: FileHandle): Promise<boolean> => {
  try {
    const d = await open(fdPath(fh.fd), constants.O_WRONLY | constants.O_DIRECT)
    await d.close()
    return true
  } catch (e) {
    if (errno(e) === 'EINVAL') return false
    throw e
  }
}

const wrap = (fh: FileHandle, label: string, fresh: boolean, direct: boolean, id: string) => {
  let closed: Promise<void> | undefined
  const close = (): Promise<void> => (closed ??= fh.close())
  const t: RawTarget = {
    path: fdPath(fh.fd),
    label,
    fresh,
    direct,
    identity: id,
    close,
    [Symbol.asyncDispose]: close,
  }
  return t
}

/**
 * Create `path` as a new sparse file of `size` bytes (exclusive create, mode 0600, no link
 * followed). Errors pass as Node gives them (a full file system is placed by the caller).
 */
export const createRawTarget = async (path: string, size: number): Promise<RawTarget> => {
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW
  const fh = await open(path, flags, 0o600)
  try {
    await fh.truncate(size)
    const st = await fh.stat()
    return wrap(fh, path, true, await takesDirect(fh), `${st.dev}:${st.ino}`)
  } catch (e) {
    await fh.close()
    throw e
  }
}

/**
 * Open an existing disk target: a regular file of at least `size` bytes or a block device
 * (qemu-img refuses one smaller than the disk), named without a symbolic link as its last
 * component. Its data is overwritten; what lies beyond `size` is left as it was.
 *
 * @throws BackupError `USAGE` naming the target for anything else (missing, a link, a
 *   directory, a character device, a FIFO, too small).
 */
export const openExistingTarget = async (path: string, size: number): Promise<RawTarget> => {
  const refuse = (why: string, cause?: unknown): BackupError =>
    new BackupError('USAGE', `disk target ${path} ${why}`, { cause })
  let fh: FileHandle
  try {
    // O_PATH first: it opens a symbolic link itself, a FIFO without blocking, no device.
    const probe = await open(path, O_PATH | constants.O_NOFOLLOW)
    try {
      const st = await probe.stat()
      if (!st.isFile() && !st.isBlockDevice()) {
        throw refuse(`is ${describe(st)}, not a regular file or block device`)
      }
      fh = await open(fdPath(probe.fd), constants.O_WRONLY)
    } finally {
      await probe.close()
    }
  } catch (e) {
    if (e instanceof BackupError) throw e
    if (errno(e) === 'ENOENT') throw refuse('does not exist', e)
    throw refuse(`cannot be opened: ${(e as Error).message}`, e)
  }
  try {
    const st = await fh.stat()
    if (st.isFile() && st.size < size) {
      throw refuse(`has ${st.size} bytes, the disk needs ${size}`)
    }
    const id = st.isBlockDevice() ? `rdev:${st.rdev}` : `${st.dev}:${st.ino}`
    return wrap(fh, path, false, await takesDirect(fh), id)
  } catch (e) {
    await fh.close()
    throw e
  }
}
