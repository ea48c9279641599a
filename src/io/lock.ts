import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import { BackupError } from '../errors.ts'

/** A held lock. `release` is idempotent. */
export interface GuestLock extends AsyncDisposable {
  release(): Promise<void>
}

/**
 * Lock a guest directory of a store (one backup, prune or free at a time per guest). The lock
 * is `<dir>/.lock`, refreshed while held and considered stale 30 s after its holder died.
 */
export const lockGuest = async (dir: string): Promise<GuestLock> => {
  let releaseFn: () => Promise<void>
  try {
    releaseFn = await lockfile.lock(dir, {
      lockfilePath: join(dir, '.lock'),
      stale: 30_000,
      update: 5_000,
      retries: 0,
      realpath: false,
    })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOCKED') {
      throw new BackupError('LOCKED', `${dir} is locked by another guestbackup process`, {
        cause: e,
      })
    }
    throw new BackupError('IO', `cannot lock ${dir}: ${(e as Error).message}`, { cause: e })
  }
  let released = false
  const release = async (): Promise<void> => {
    if (released) return
    released = true
    try {
      await releaseFn()
    } catch {
      // Already released or compromised (e.g. the dir was removed): nothing left to do.
    }
  }
  return { release, [Symbol.asyncDispose]: release }
}
