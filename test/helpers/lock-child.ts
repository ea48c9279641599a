/**
 * A process that takes one guest lock (test/io/lock-hosts.test.ts): the options come as JSON
 * in argv[2], events go to stdout as JSON lines (`log`, `acquired`, `released`, `error`), each
 * with the wall time `t` of this machine (all the processes of a test share its clock). Run it
 * with GUESTBACKUP_LOCK_HOST / GUESTBACKUP_LOCK_BOOT_ID to make it another host.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Dir } from '../../src/io/beneath.ts'
import { lockGuest } from '../../src/io/lock.ts'
import type { LockOperation } from '../../src/io/lock.ts'
import { toBackupError } from '../../src/errors.ts'

/** Options of one lock child. */
export interface LockChildOptions {
  /** The guest directory. */
  dir: string
  operation: LockOperation
  what: string
  waitMs: number
  staleMs: number
  heartbeatMs: number
  pollMs: number
  /** How long to hold the lock once taken, ms; -1: until killed. */
  holdMs: number
}

/** One line a lock child prints. */
export interface LockChildEvent {
  event: 'log' | 'acquired' | 'released' | 'error'
  t: number
  message?: string
  code?: string
}

const out = (ev: Omit<LockChildEvent, 't'>): void => {
  process.stdout.write(`${JSON.stringify({ ...ev, t: Date.now() })}\n`)
}

const main = async (): Promise<void> => {
  const o = JSON.parse(process.argv[2] ?? '{}') as LockChildOptions
  await using dir = await Dir.open(o.dir)
  try {
    const lock = await lockGuest(dir, {
      operation: o.operation,
      what: o.what,
      waitMs: o.waitMs,
      staleMs: o.staleMs,
      heartbeatMs: o.heartbeatMs,
      pollMs: o.pollMs,
      log: (message) => {
        out({ event: 'log', message })
      },
    })
    out({ event: 'acquired' })
    await sleep(o.holdMs < 0 ? 2 ** 31 - 1 : o.holdMs)
    await lock.release()
    out({ event: 'released' })
  } catch (e) {
    const err = toBackupError(e)
    out({ event: 'error', code: err.code, message: err.message })
    process.exitCode = 1
  }
}

await main()
