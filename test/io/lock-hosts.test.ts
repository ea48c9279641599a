/**
 * The guest lock between processes that play different hosts of one shared store: each child
 * (helpers/lock-child.ts) is a real OS process with its own GUESTBACKUP_LOCK_HOST and
 * GUESTBACKUP_LOCK_BOOT_ID, so a waiter cannot see its holder's pid and has only the protocol
 * (mkdir, holder record, heartbeat) to go by, as over NFS (docs/testing.md says why no real
 * NFS mount runs here). Staleness is shortened through the options, not the environment.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rename, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { LockChildEvent, LockChildOptions } from '../helpers/lock-child.ts'
import type { HolderRecord } from '../../src/io/lock-record.ts'

const CHILD = fileURLToPath(new URL('../helpers/lock-child.ts', import.meta.url))
const FAST = { staleMs: 2_000, heartbeatMs: 100, pollMs: 50 }

interface Child {
  proc: ChildProcess
  events: LockChildEvent[]
  /** The first event of this kind (waits for it). */
  next(kind: LockChildEvent['event']): Promise<LockChildEvent>
  exited: Promise<void>
}

/** Start a lock child as `host` (boot id: one per host name unless given). */
const lockChild = (o: Partial<LockChildOptions> & { dir: string; host: string; boot?: string }) => {
  const opts: LockChildOptions = {
    operation: 'backup',
    what: 'guest 100',
    waitMs: 0,
    holdMs: 0,
    ...FAST,
    ...o,
  }
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(opts)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      ...process.env,
      GUESTBACKUP_LOCK_HOST: o.host,
      GUESTBACKUP_LOCK_BOOT_ID: o.boot ?? `boot-of-${o.host}`,
    },
  })
  const events: LockChildEvent[] = []
  const waiters: (() => void)[] = []
  createInterface({ input: proc.stdout }).on('line', (l) => {
    events.push(JSON.parse(l) as LockChildEvent)
    for (const w of waiters.splice(0)) w()
  })
  const exited = new Promise<void>((resolve) =>
    proc.once('close', () => {
      resolve()
    }),
  )
  const next = async (kind: LockChildEvent['event']): Promise<LockChildEvent> => {
    for (;;) {
      const e = events.find((x) => x.event === kind)
      if (e !== undefined) return e
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`child exited without '${kind}': ${JSON.stringify(events)}`)
      }
      await Promise.race([new Promise<void>((r) => waiters.push(r)), exited])
    }
  }
  return { proc, events, next, exited } satisfies Child
}

const logs = (c: Child): string[] =>
  c.events.filter((e) => e.event === 'log').map((e) => e.message ?? '')

/** Write a holder record by hand, as another implementation or another host's clock would. */
const writeRecord = async (guest: string, r: HolderRecord): Promise<void> => {
  const tmp = join(guest, '.lock', `.holder.${randomBytes(4).toString('hex')}.tmp`)
  await writeFile(tmp, JSON.stringify(r))
  await rename(tmp, join(guest, '.lock', 'holder.json'))
}

const foreign = (since: string, heartbeat: number): HolderRecord => ({
  version: 1,
  host: 'pve-skewed',
  boot: 'another-boot',
  pidns: 'pid:[4026531836]',
  pid: 4242,
  start: '123',
  operation: 'prune',
  since,
  nonce: 'a'.repeat(32),
  heartbeat,
})

describe('io/lock: processes on different hosts of one store', { timeout: 60_000 }, () => {
  let dir = ''
  let n = 0
  const guest = async (): Promise<string> => {
    const g = join(dir, String(100 + n++))
    await mkdir(g)
    return g
  }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-lock-hosts-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('one waits and then takes the lock; with no wait another fails naming the holder', async () => {
    const g = await guest()
    const a = lockChild({ dir: g, host: 'pve1', holdMs: 2_500 })
    await a.next('acquired')
    const b = lockChild({ dir: g, host: 'pve2', operation: 'prune', waitMs: 20_000 })
    const c = lockChild({ dir: g, host: 'pve3', operation: 'remove', waitMs: 0 })
    const failed = await c.next('error')
    assert.equal(failed.code, 'LOCKED')
    assert.match(
      failed.message ?? '',
      new RegExp(
        `^guest 100 is locked by backup on host pve1 \\(pid ${a.proc.pid}\\) since \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`,
      ),
    )
    const got = await b.next('acquired')
    const released = await a.next('released')
    assert.ok(got.t >= released.t, 'the waiter took the lock before the holder released it')
    assert.deepEqual(
      logs(b).map((l) => l.replace(/since [\dT:-]+Z/, 'since T')),
      [
        `waiting for the lock of guest 100, held by backup on host pve1 (pid ${a.proc.pid}) since T (up to 20 s)`,
      ],
    )
    await Promise.all([a.exited, b.exited, c.exited])
  })

  it('breaks a SIGKILLed holder on another host only after its heartbeat stood still for STALE', async () => {
    const g = await guest()
    const a = lockChild({ dir: g, host: 'pve1', holdMs: -1 })
    await a.next('acquired')
    // A live holder on another host is not stale, however long it holds.
    const early = lockChild({ dir: g, host: 'pve2', waitMs: FAST.staleMs * 2 })
    assert.equal((await early.next('error')).code, 'LOCKED')
    a.proc.kill('SIGKILL')
    await a.exited
    const t0 = Date.now()
    const b = lockChild({ dir: g, host: 'pve2', waitMs: 20_000 })
    const got = await b.next('acquired')
    assert.ok(got.t - t0 >= FAST.staleMs, `broken after ${got.t - t0} ms`)
    const breaking = logs(b).filter((l) => l.startsWith('breaking'))
    assert.equal(breaking.length, 1, logs(b).join('\n'))
    assert.match(
      breaking[0] ?? '',
      new RegExp(
        `^breaking the stale lock of guest 100, held by backup on host pve1 \\(pid ${a.proc.pid}\\) since \\S+: it did not change for [23] s$`,
      ),
    )
    await b.exited
  })

  it('breaks a SIGKILLed holder of this very host at once (its pid is gone)', async () => {
    const g = await guest()
    const a = lockChild({ dir: g, host: 'pve1', holdMs: -1 })
    await a.next('acquired')
    a.proc.kill('SIGKILL')
    await a.exited
    // Not waiting at all: only the same-host rule can let it in.
    const b = lockChild({ dir: g, host: 'pve1', waitMs: 0, staleMs: 60_000 })
    await b.next('acquired')
    assert.deepEqual(
      logs(b).map((l) => l.replace(/since [\dT:-]+Z/, 'since T')),
      [
        `breaking the stale lock of guest 100, held by backup on host pve1 (pid ${a.proc.pid}) since T: its process is gone`,
      ],
    )
    // Same host name, another boot: that pid means nothing here, so it is not broken at once.
    const c = lockChild({ dir: g, host: 'pve1', holdMs: -1 })
    await b.exited
    await c.next('acquired')
    c.proc.kill('SIGKILL')
    await c.exited
    const d = lockChild({ dir: g, host: 'pve1', boot: 'rebooted', waitMs: 0 })
    assert.equal((await d.next('error')).code, 'LOCKED')
    await d.exited
  })

  it('lets exactly one of several waiters break a stale lock; the others wait their turn', async () => {
    const g = await guest()
    const a = lockChild({ dir: g, host: 'pve1', holdMs: -1 })
    await a.next('acquired')
    a.proc.kill('SIGKILL')
    await a.exited
    // Four waiters of this host see the dead pid at once, and race to break the lock.
    const ws = ['w1', 'w2', 'w3', 'w4'].map(() =>
      lockChild({ dir: g, host: 'pve1', waitMs: 30_000, holdMs: 300, staleMs: 60_000 }),
    )
    await Promise.all(ws.map((w) => w.exited))
    const breaks = ws.flatMap(logs).filter((l) => l.startsWith('breaking'))
    assert.equal(breaks.length, 1, breaks.join('\n'))
    const spans = ws
      .map((w) => {
        const got = w.events.find((e) => e.event === 'acquired')
        const gone = w.events.find((e) => e.event === 'released')
        assert.ok(got !== undefined && gone !== undefined, JSON.stringify(w.events))
        return [got.t, gone.t] as const
      })
      .sort((x, y) => x[0] - y[0])
    for (let i = 1; i < spans.length; i++) {
      assert.ok(
        (spans[i]?.[0] ?? 0) >= (spans[i - 1]?.[1] ?? 0),
        `overlap: ${JSON.stringify(spans)}`,
      )
    }
  })

  it('never breaks a holder whose clock is hours off while its heartbeat moves', async () => {
    for (const since of ['2000-01-01T00:00:00Z', '2099-12-31T23:59:59Z']) {
      const g = await guest()
      await mkdir(join(g, '.lock'))
      let beat = 0
      await writeRecord(g, foreign(since, beat))
      // The lock dir's times say nothing either (an old mtime broke proper-lockfile's rule).
      const past = new Date(Date.UTC(2000, 0, 1))
      await utimes(join(g, '.lock'), past, past)
      const timer = setInterval(() => void writeRecord(g, foreign(since, ++beat)), 150)
      try {
        const b = lockChild({ dir: g, host: 'pve2', waitMs: FAST.staleMs * 2 })
        const e = await b.next('error')
        assert.equal(e.code, 'LOCKED')
        assert.equal(
          e.message,
          `guest 100 is locked by prune on host pve-skewed (pid 4242) since ${since}`,
        )
        assert.equal(logs(b).filter((l) => l.startsWith('breaking')).length, 0)
      } finally {
        clearInterval(timer)
      }
      // Its heartbeat stops: now it is stale, on the waiter's clock.
      const c = lockChild({ dir: g, host: 'pve2', waitMs: 20_000 })
      await c.next('acquired')
      assert.ok(logs(c).some((l) => l.includes('it did not change for')))
      await c.exited
    }
  })

  it('locks two guests of one store from two hosts at once', async () => {
    const [g1, g2] = [await guest(), await guest()]
    const a = lockChild({ dir: g1, host: 'pve1', holdMs: 1_500 })
    const b = lockChild({ dir: g2, host: 'pve2', holdMs: 1_500, what: 'guest 101' })
    const [ga, gb] = [await a.next('acquired'), await b.next('acquired')]
    const [ra, rb] = [await a.next('released'), await b.next('released')]
    assert.ok(ga.t < rb.t && gb.t < ra.t, 'the two guests were not held at the same time')
    await Promise.all([a.exited, b.exited])
  })
})
