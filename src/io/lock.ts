import { join } from 'node:path'
import lockfile from 'proper-lockfile'
import { BackupError } from '../errors.ts'

/** A held lock. `release` is idempotent. */
export interface GuestLock extends AsyncDisposable {
  release(): Promise<void>
}

/**
 * Lock a guest directory of a store (one backup, prune or free at a time per guest). The lock
 * is `<dir>/.lock`, refreshed while held and considered stale 6 s after its holder died.
 */
export const lockGuest = async (dir: string): Promise<GuestLock> => {
  let releaseFn: () => Promise<void>
  try {
    releaseFn = await lockfile.lock(dir, {
      lockfilePath: join(dir, '.lock'),
      // A holder refreshes the lock every 2 s; one killed with SIGKILL leaves it behind, and it
      // counts as stale after 6 s. A new run waits that long instead of failing at once.
      stale: 6_000,
      update: 2_000,
      retries: { retries: 9, factor: 1, minTimeout: 1_000, maxTimeout: 1_000 },
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
