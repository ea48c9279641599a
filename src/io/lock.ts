import * as fs from 'node:fs'
import { BackupError } from '../errors.ts'
import type { Dir } from './beneath.ts'

/** A held lock. `release` is idempotent. */
export interface GuestLock extends AsyncDisposable {
  release(): Promise<void>
}

// proper-lockfile stats and touches its lock directory by path; in an untrusted store that
// entry may be swapped for a link, so it must never be followed (lstat, lutimes).
const noFollowFs = { ...fs, stat: fs.lstat, utimes: fs.lutimes }

// proper-lockfile registers signal-exit's handler on every catchable signal when it is loaded
// (lib/lockfile.js calls onExit at its top level), so it is loaded when the first lock is taken:
// importing guestbackup, its CLI included, must not change how the process reacts to signals.
const loadLockfile = () => import('proper-lockfile')

/**
 * Lock a guest directory of a store (one backup, prune or free at a time per guest). The lock
 * is `<dir>/.lock`, reached through the open directory `dir` (which must stay open while the
 * lock is held), refreshed while held and considered stale 6 s after its holder died.
 */
export const lockGuest = async (dir: Dir): Promise<GuestLock> => {
  let releaseFn: () => Promise<void>
  try {
    // A lock is a directory; anything else under its name was planted and is no one's lock.
    const st = await dir.lstat('.lock')
    if (st !== undefined && !st.isDirectory()) await dir.unlink('.lock')
    const { default: lockfile } = await loadLockfile()
    releaseFn = await lockfile.lock(dir.path, {
      lockfilePath: dir.at('.lock'),
      // A holder refreshes the lock every 2 s; one killed with SIGKILL leaves it behind, and it
      // counts as stale after 6 s. A new run waits that long instead of failing at once.
      stale: 6_000,
      update: 2_000,
      retries: { retries: 9, factor: 1, minTimeout: 1_000, maxTimeout: 1_000 },
      realpath: false,
      fs: noFollowFs,
    })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOCKED') {
      throw new BackupError('LOCKED', `${dir.label} is locked by another guestbackup process`, {
        cause: e,
      })
    }
    throw new BackupError('IO', `cannot lock ${dir.label}: ${(e as Error).message}`, { cause: e })
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
