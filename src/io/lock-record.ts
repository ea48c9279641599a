/**
 * The holder record of a guest lock (`<guest>/.lock/holder.json`): who holds the lock (host,
 * boot, pid namespace, pid and its start time), for what (`operation`), since when (the holder's
 * own clock, shown to people only, never compared), and a `nonce` and `heartbeat` counter that
 * waiters watch. The record lives in the store, which is untrusted ground: it is parsed with
 * strict patterns (it ends up in one-line error messages) and anything else counts as no record.
 */
import { readFileSync, readlinkSync } from 'node:fs'
import { hostname } from 'node:os'
import * as z from 'zod'

/** Name of the record inside the lock directory. */
export const HOLDER_FILE = 'holder.json'

/** A record is a few hundred bytes; anything larger is not ours. */
export const HOLDER_MAX_BYTES = 4096

/** What a lock is held for (shown in LOCKED errors and wait messages). */
export type LockOperation = 'backup' | 'prune' | 'remove' | 'verify' | 'check'

/** Schema of {@link HOLDER_FILE}. */
export const HolderRecordSchema = z.strictObject({
  version: z.literal(1),
  /** `os.hostname()` of the holder (`GUESTBACKUP_LOCK_HOST` in tests). */
  host: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/),
  /** `/proc/sys/kernel/random/boot_id` of the holder (`GUESTBACKUP_LOCK_BOOT_ID` in tests). */
  boot: z.string().regex(/^[A-Za-z0-9-]{1,64}$/),
  /** The holder's pid namespace (`pid:[4026531836]`): its pid means something only inside. */
  pidns: z.string().regex(/^pid:\[\d{1,20}\]$/),
  pid: z
    .number()
    .int()
    .min(1)
    .max(2 ** 31),
  /** Start time of the holder process (proc(5) `stat` field 22): a reused pid is not it. */
  start: z.string().regex(/^\d{1,20}$/),
  operation: z.string().regex(/^[a-z][a-z-]{0,31}$/),
  /** When the lock was taken, by the holder's clock (ISO 8601 UTC); for people only. */
  since: z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/),
  /** Random, per acquisition: a release or a break acts only on the lock it looked at. */
  nonce: z.string().regex(/^[0-9a-f]{32}$/),
  /** Incremented at each refresh: a moving counter is a live holder, whatever its clock. */
  heartbeat: z.number().int().min(0),
})

/** A parsed holder record. */
export type HolderRecord = z.infer<typeof HolderRecordSchema>

/** Parse a record read from the store; undefined when it is not one. */
export const parseHolder = (text: string | undefined): HolderRecord | undefined => {
  if (text === undefined) return undefined
  try {
    const r = HolderRecordSchema.safeParse(JSON.parse(text))
    return r.success ? r.data : undefined
  } catch {
    return undefined
  }
}

/** Where this process runs, as a lock holder names it. */
export interface HostIdentity {
  host: string
  boot: string
  pidns: string
}

const readOr = (read: () => string, fallback: string): string => {
  try {
    return read().trim()
  } catch {
    return fallback
  }
}

/**
 * The start time of process `pid` (proc(5) `/proc/<pid>/stat` field 22, clock ticks since
 * boot), or undefined when there is no such process or it is a zombie. The command name (field 2) may hold
 * spaces and parentheses: the fields after it start at the last `)`.
 */
export const processStart = (pid: number): string | undefined => {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // Fields 3… after the ')': field 3 is the state, field 22 the 20th of them. A zombie (or a
  // dead task) has released everything: it holds no lock, whether reaped yet or not.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19]
}

/**
 * This host's identity. `GUESTBACKUP_LOCK_HOST` and `GUESTBACKUP_LOCK_BOOT_ID` override the
 * host name and boot id: testing aids that let processes of one machine play several hosts of
 * a shared store (docs/testing.md).
 */
export const hostIdentity = (): HostIdentity => ({
  host: process.env['GUESTBACKUP_LOCK_HOST'] ?? hostname(),
  boot:
    process.env['GUESTBACKUP_LOCK_BOOT_ID'] ??
    readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8'), 'unknown'),
  pidns: readOr(() => readlinkSync('/proc/self/ns/pid'), 'pid:[0]'),
})

/** A fresh record for this process. */
export const newHolder = (operation: LockOperation, nonce: string): HolderRecord => ({
  version: 1,
  ...hostIdentity(),
  pid: process.pid,
  start: processStart(process.pid) ?? '0',
  operation,
  since: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
  nonce,
  heartbeat: 0,
})

/**
 * True when `r` names a process of this very host (same host name, boot and pid namespace)
 * that no longer exists: no process with its pid, or one started at another time (the pid was
 * reused). Only then may a waiter break the lock at once; a holder anywhere else is judged by
 * its heartbeat alone.
 */
export const holderGoneHere = (r: HolderRecord, here: HostIdentity = hostIdentity()): boolean =>
  r.host === here.host &&
  r.boot === here.boot &&
  r.pidns === here.pidns &&
  processStart(r.pid) !== r.start

/** `backup on host pve2 (pid 4242) since 2026-12-02T06:40:00Z`. */
export const describeHolder = (r: HolderRecord): string =>
  `${r.operation} on host ${r.host} (pid ${r.pid}) since ${r.since}`
