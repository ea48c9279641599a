/**
 * Durable writes by path, for files guestbackup produces outside a store handle (archives while
 * they are written, a restore's config files). One rule for all of them: the data goes into a
 * new file created exclusively and without following a link, which is fsynced, renamed to its
 * final name, and then its directory is fsynced, so after a crash the name holds either
 * nothing or the whole file (rename(2) is atomic; the directory fsync makes the rename durable,
 * see fsync(2)). Writes inside a store go through `Dir.writeFileAtomic` (./beneath.ts), which follows
 * the same rule relative to a directory handle.
 */
import { constants } from 'node:fs'
import { lstat, open, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { BackupError, toBackupError } from '../errors.ts'
import { fdPath } from './beneath.ts'

/** fsync a file or directory by path. */
export const fsyncPath = async (path: string): Promise<void> => {
  const fh = await open(path, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** True if `path` exists (without following a final symlink). */
export const exists = async (path: string): Promise<boolean> => {
  try {
    await lstat(path)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw toBackupError(e)
  }
}

const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW

/**
 * Produce `output` atomically: `write` fills `output + '.partial'`, which is then fsynced and
 * renamed, and the directory is fsynced. On any failure the partial file is removed, so nothing
 * half-written ever carries the final name. Refuses (`USAGE`) when `output` already exists.
 * `write` gets the path of the very file created (`/proc/<pid>/fd/<n>`), so a name planted in
 * the directory meanwhile cannot redirect the tool that fills it.
 */
export const writeAtomically = async <T>(
  output: string,
  write: (partial: string) => Promise<T>,
  mode = 0o600,
): Promise<T> => {
  if (await exists(output)) {
    throw new BackupError('USAGE', `output ${output} already exists`, { details: { output } })
  }
  const partial = `${output}.partial`
  try {
    await rm(partial, { force: true })
    const fh = await open(partial, CREATE_NEW, mode)
    let result: T
    try {
      result = await write(fdPath(fh.fd))
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(partial, output)
    await fsyncPath(dirname(output))
    return result
  } catch (e) {
    await rm(partial, { force: true })
    throw toBackupError(e)
  }
}

/** Write `data` to the new file `path` durably (see {@link writeAtomically}). */
export const writeFileDurably = async (
  path: string,
  data: string | Uint8Array,
  mode = 0o600,
): Promise<void> => {
  await writeAtomically(
    path,
    async (partial) => {
      const fh = await open(partial, constants.O_WRONLY)
      try {
        await fh.writeFile(data)
      } finally {
        await fh.close()
      }
    },
    mode,
  )
}
