/**
 * Per-guest locks of a store that several hosts write at once (NFS, CephFS): one backup, prune
 * or remove per guest at a time, across processes and hosts.
 *
 * Protocol (state per lock: free → held → released | broken):
 * - Acquire builds the lock aside, `mkdir <guest>/.lock.new-<nonce>` with its record
 *   `holder.json` in it (lock-record.ts: host, boot id, pid namespace, pid and its start time,
 *   operation, since, a random nonce and a heartbeat counter), then renames that directory to
 *   `.lock`: the lock appears with its record, so a holder killed at any moment leaves a lock
 *   its waiters can judge (on this host: at once), never a bare one. rename(2) of a directory
 *   fails on an existing non-empty one (ENOTEMPTY, EEXIST), atomically, on every file system
 *   we support, NFS included (one RENAME call the server performs or refuses; the same holds
 *   for MKDIR). `O_CREAT | O_EXCL` is not safe there: open(2), O_EXCL: "On NFS, O_EXCL is
 *   supported only when using NFSv3 or later on kernel 2.6 or later. In NFS environments
 *   where O_EXCL support is not provided, programs that rely on it for performing locking
 *   tasks will contain a race condition." An existing `.lock` is never renamed over (checked
 *   first; rename(2) would replace an empty one).
 * - The holder rewrites `.lock/holder.json` every `heartbeatMs` with the counter incremented,
 *   by temp file + rename inside the lock directory. Everything goes through the lock
 *   directory's open fd (beneath.ts).
 * - A waiter never compares clocks, its own or another host's. It breaks a lock when (a) the
 *   record names a process of this very host (host name, boot id and pid namespace) that is
 *   gone (no such pid, or a pid started at another time): at once; or (b) what it reads of the
 *   lock (nonce and heartbeat, or the bare directory and whatever unparseable record it holds)
 *   stayed the same for `staleMs` on the waiter's own monotonic clock (`performance.now()`),
 *   watched without a gap (a waiter that was itself paused, or whose reads stalled, for more
 *   than a quarter of `staleMs` starts counting again). The holder's `since` is shown, never
 *   used: a holder whose clock is hours off is live while its counter moves.
 * - Breaking is exclusive per lock instance (its nonce, or for a lock without a record its
 *   inode and ctime): the breaker creates `.lock.break-<instance>` (mkdir: one waiter wins),
 *   checks the lock is still that instance with that counter, renames it to
 *   `.lock.stale-<instance>` and removes it. A waiter that finds a break directory left for
 *   `staleMs` (its breaker died) removes it. Release renames `.lock` away (then removes it)
 *   only while its record carries our nonce, so a lock broken and taken by another is never
 *   released by us. Leftover `.lock.new-*`, `.lock.stale-*`, `.lock.released-*` and
 *   `.lock.break-*` entries are removed by the next holder.
 *
 * The bound this rests on: a live holder must not go `staleMs` (default 90 s) without its
 * heartbeat reaching the store (process paused, host suspended, NFS server unreachable that
 * long). The heartbeat runs every 5 s; 90 s covers NFS attribute caching at its nfs(5)
 * defaults (`acregmax` and `acdirmax` 60 s, what a client that does not revalidate on open,
 * e.g. a `nocto` mount, may serve unchanged) plus several lost heartbeats. A holder killed on
 * another host holds its guests for 90 s; on this host, its lock is broken at once.
 */
import { createHash, randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { BackupError } from '../errors.ts'
import type { Dir } from './beneath.ts'
import {
  describeHolder,
  HOLDER_FILE,
  HOLDER_MAX_BYTES,
  holderGoneHere,
  newHolder,
  parseHolder,
} from './lock-record.ts'
import type { HolderRecord, LockOperation } from './lock-record.ts'

export type { LockOperation } from './lock-record.ts'

/** Heartbeat period, ms. */
export const HEARTBEAT_MS = 5_000
/** Unchanged heartbeat after which a lock held on another host is stale, ms (see the bound). */
export const STALE_MS = 90_000
/** How often a waiter looks at the lock, ms (plus up to 25% jitter). */
export const POLL_MS = 1_000
/** A waiter logs that it is still waiting at most this often, ms. */
const LOG_EVERY_MS = 60_000

const LOCK = '.lock'
const LEFTOVER = /^\.lock\.(?:new|stale|released|break)-/

/** How long to wait for a lock and how to judge it; shared by every lock of a command. */
export interface LockPolicy {
  /** How long to wait for a held lock before failing with `LOCKED`, ms. Default 0: fail at once. */
  waitMs?: number | undefined
  /** Ends a wait with `ABORTED`. */
  signal?: AbortSignal | undefined
  /** Gets the wait and break messages (one line when the wait starts, then one a minute). */
  log?: ((message: string) => void) | undefined
  /**
   * How long a lock held on another host must look unchanged (on the waiter's monotonic
   * clock) to be stale, ms. Default {@link STALE_MS}; shorter in tests only.
   */
  staleMs?: number | undefined
  /** Heartbeat period of a held lock, ms. Default {@link HEARTBEAT_MS}; tests only. */
  heartbeatMs?: number | undefined
  /** Poll period of a waiter, ms. Default {@link POLL_MS}. */
  pollMs?: number | undefined
}

/** Options of {@link lockGuest}. */
export interface LockOptions extends LockPolicy {
  /** What the lock is taken for, recorded for waiters. */
  operation: LockOperation
  /** Names the guest in messages, e.g. `guest 100`. Default: the guest directory's path. */
  what?: string | undefined
}

/** A held lock. `release` is idempotent. */
export interface GuestLock extends AsyncDisposable {
  release(): Promise<void>
}

/** What a waiter sees at `.lock`. */
type Seen =
  | { kind: 'free' }
  | {
      kind: 'held'
      /** This lock instance: the holder's nonce, or the bare directory's inode and ctime. */
      instance: string
      /** Changes whenever the holder shows life (heartbeat), or the lock is another one. */
      key: string
      holder: HolderRecord | undefined
    }

const observe = async (dir: Dir): Promise<Seen> => {
  const st = await dir.lstat(LOCK)
  if (st === undefined) return { kind: 'free' }
  if (!st.isDirectory()) {
    // A lock is a directory; anything else under its name was planted and is no one's lock.
    await dir.unlink(LOCK)
    return { kind: 'free' }
  }
  let text: string | undefined
  try {
    await using lockDir = await dir.tryOpenDir(LOCK)
    if (lockDir === undefined) return { kind: 'free' }
    text = await lockDir.tryReadFile(HOLDER_FILE, HOLDER_MAX_BYTES)
  } catch (e) {
    // Swapped for a link or a mount point, or its record is not a plain file: no record.
    if (!(e instanceof BackupError)) throw e
    text = undefined
  }
  const holder = parseHolder(text)
  if (holder !== undefined) {
    return { kind: 'held', instance: holder.nonce, key: `${holder.heartbeat}`, holder }
  }
  const content = text === undefined ? '-' : createHash('sha256').update(text).digest('hex')
  const instance = `i${st.ino}-${Math.round(st.ctimeMs * 1000)}`
  return { kind: 'held', instance, key: content.slice(0, 16), holder: undefined }
}

const same = (a: Seen, b: Seen): boolean =>
  a.kind === 'held' && b.kind === 'held' && a.instance === b.instance && a.key === b.key

const removeQuietly = async (dir: Dir, name: string): Promise<void> => {
  await dir.removeTree(name).catch(() => undefined)
}

/** `guest 100 is locked by prune on host pve2 (pid 4242) since 2026-12-02T06:40:00Z`. */
const heldBy = (dir: Dir, holder: HolderRecord | undefined): string =>
  holder === undefined
    ? `an unknown holder (${dir.labelOf(LOCK)} has no readable holder record)`
    : describeHolder(holder)

const fmtWait = (ms: number): string =>
  ms % 60_000 === 0 ? `${ms / 60_000} min` : `${Math.round(ms / 1000)} s`

/**
 * Lock a guest directory of a store for `operation`. The lock is `<dir>/.lock`, reached through
 * the open directory `dir`, which must stay open while the lock is held. A held lock is waited
 * for up to `waitMs` (default: not at all), then `LOCKED` names its holder; a stale one is
 * broken (see the protocol above). `ABORTED` when `signal` ends the wait; `IO` when the store
 * refuses the lock directory.
 */
export const lockGuest = async (dir: Dir, opts: LockOptions): Promise<GuestLock> => {
  const what = opts.what ?? dir.label
  const waitMs = opts.waitMs ?? 0
  const staleMs = opts.staleMs ?? STALE_MS
  const pollMs = opts.pollMs ?? POLL_MS
  const maxGap = staleMs / 4
  const log = opts.log ?? (() => undefined)
  const start = performance.now()
  let last: Seen = { kind: 'free' }
  let since = start
  let seenAt = start
  let loggedAt: number | undefined
  // A break directory some other waiter holds, and since when we see it unchanged.
  let breaker: { key: string; since: number } | undefined
  let freeSpins = 0
  try {
    for (;;) {
      opts.signal?.throwIfAborted()
      const held = await tryAcquire(dir, opts)
      if (held !== undefined) return held
      const seen = await observe(dir)
      const now = performance.now()
      // Gone between our mkdir and our look: try again, but do not spin on a file system
      // that keeps saying both "exists" and "does not".
      if (seen.kind === 'free' && ++freeSpins < 10) continue
      freeSpins = 0
      if (seen.kind === 'free') {
        await sleep(pollMs, undefined, { signal: opts.signal })
        continue
      }
      if (!same(seen, last) || now - seenAt > maxGap) since = now
      last = seen
      seenAt = now
      const gone = seen.holder !== undefined && holderGoneHere(seen.holder)
      if (gone || now - since >= staleMs) {
        const why = gone
          ? 'its process is gone'
          : `it did not change for ${Math.round((now - since) / 1000)} s`
        const name = `.lock.break-${seen.instance}`
        if (await dir.mkdir(name)) {
          try {
            // Ours to break, if it is still the very lock judged stale.
            if (same(await observe(dir), seen)) {
              log(`breaking the stale lock of ${what}, held by ${heldBy(dir, seen.holder)}: ${why}`)
              await breakLock(dir, seen.instance)
              breaker = undefined
              continue
            }
          } finally {
            await removeQuietly(dir, name)
          }
        } else {
          // Another waiter is breaking it; a break directory left that long lost its breaker.
          const st = await dir.lstat(name)
          const key = st === undefined ? '' : `${st.ino}-${st.ctimeMs}`
          if (breaker?.key !== key) breaker = { key, since: now }
          else if (now - breaker.since >= staleMs) await removeQuietly(dir, name)
        }
      }
      if (now - start >= waitMs) {
        throw new BackupError('LOCKED', `${what} is locked by ${heldBy(dir, seen.holder)}`, {
          details: { holder: seen.holder },
        })
      }
      if (loggedAt === undefined || now - loggedAt >= LOG_EVERY_MS) {
        const again = loggedAt === undefined ? '' : 'still '
        const holder = heldBy(dir, seen.holder)
        log(`${again}waiting for the lock of ${what}, held by ${holder} (up to ${fmtWait(waitMs)})`)
        loggedAt = now
      }
      const pause = pollMs * (1 + Math.random() / 4)
      await sleep(Math.max(1, Math.min(pause, waitMs - (now - start))), undefined, {
        signal: opts.signal,
      })
    }
  } catch (e) {
    if (e instanceof BackupError) throw e
    if (opts.signal?.aborted === true) {
      throw new BackupError('ABORTED', `interrupted while waiting for the lock of ${what}`, {
        cause: e,
      })
    }
    throw new BackupError('IO', `cannot lock ${what}: ${(e as Error).message}`, { cause: e })
  }
}

/** Move the stale lock `instance` out of the way (renaming is the step only one can do). */
const breakLock = async (dir: Dir, instance: string): Promise<void> => {
  const tomb = `.lock.stale-${instance}`
  try {
    await dir.rename(LOCK, tomb)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e
    // A tomb of this instance left by a breaker that died: we hold its break directory.
    await dir.removeTree(tomb)
    await dir.rename(LOCK, tomb)
  }
  await removeQuietly(dir, tomb)
}

/**
 * Build the lock with our record aside and rename it to `.lock`; undefined when `.lock` is
 * there (or our work dir was swept by the holder that got it first).
 */
const tryAcquire = async (dir: Dir, opts: LockOptions): Promise<GuestLock | undefined> => {
  const nonce = randomBytes(16).toString('hex')
  const record = newHolder(opts.operation, nonce)
  const work = `.lock.new-${nonce}`
  // rename(2) replaces an empty directory: a bare `.lock` (no lock of ours, but maybe being
  // judged by a breaker) is never renamed over, it is waited out like a lock without record.
  if ((await dir.lstat(LOCK)) !== undefined) return undefined
  if (!(await dir.mkdir(work))) return undefined
  try {
    {
      await using w = await dir.openDir(work)
      await w.writeFileAtomic(HOLDER_FILE, JSON.stringify(record))
    }
    await dir.rename(work, LOCK)
  } catch (e) {
    await removeQuietly(dir, work)
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOENT' || code === 'ENOTDIR') {
      return undefined
    }
    throw e
  }
  return await hold(dir, record, opts.heartbeatMs ?? HEARTBEAT_MS, opts.log)
}

/** We made `.lock`: keep the heartbeat going, sweep what others left. */
const hold = async (
  dir: Dir,
  record: HolderRecord,
  heartbeatMs: number,
  log: ((message: string) => void) | undefined,
): Promise<GuestLock> => {
  const { nonce } = record
  let lockDir: Dir
  try {
    lockDir = await dir.openDir(LOCK)
  } catch (e) {
    await removeQuietly(dir, LOCK)
    throw e
  }
  for (const e of await dir.list()) {
    if (!LEFTOVER.test(e.name)) continue
    await removeQuietly(dir, e.name)
    log?.(`removed ${dir.labelOf(e.name)}: a lock left half taken, broken or released`)
  }
  let beating: Promise<void> | undefined
  const timer = setInterval(() => {
    if (beating !== undefined) return
    record.heartbeat++
    beating = lockDir
      .writeFileAtomic(HOLDER_FILE, JSON.stringify(record))
      .catch(() => undefined)
      .finally(() => {
        beating = undefined
      })
  }, heartbeatMs)
  timer.unref()
  let released: Promise<void> | undefined
  const release = (): Promise<void> => {
    released ??= (async () => {
      clearInterval(timer)
      await beating
      try {
        // Only our own lock: one broken while we were (too long) paused is another's now.
        let ours = false
        {
          await using current = await dir.tryOpenDir(LOCK)
          const text = await current?.tryReadFile(HOLDER_FILE, HOLDER_MAX_BYTES)
          ours = parseHolder(text)?.nonce === nonce
        }
        if (ours) {
          await dir.rename(LOCK, `.lock.released-${nonce}`)
          await removeQuietly(dir, `.lock.released-${nonce}`)
        }
      } catch {
        // The guest directory is gone or the lock was taken over: nothing left to release.
      } finally {
        await lockDir.close()
      }
    })()
    return released
  }
  return { release, [Symbol.asyncDispose]: release }
}
