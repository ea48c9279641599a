import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Dir } from '../../src/io/beneath.ts'
import { lockGuest } from '../../src/io/lock.ts'
import { HolderRecordSchema, parseHolder, processStart } from '../../src/io/lock-record.ts'
import { BackupError } from '../../src/errors.ts'

const FAST = { staleMs: 1_500, heartbeatMs: 100, pollMs: 50 }

const isCode = (code: string, message?: RegExp) => (e: unknown) =>
  e instanceof BackupError && e.code === code && (message === undefined || message.test(e.message))

describe('io/lock: one host', () => {
  let dir = ''
  let n = 0
  /** A fresh guest directory, open. */
  const guest = async (): Promise<{ path: string; dir: Dir }> => {
    const path = join(dir, String(100 + n++))
    await mkdir(path)
    return { path, dir: await Dir.open(path) }
  }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-lock-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('records the holder in .lock/holder.json and removes it on release (idempotent)', async () => {
    const g = await guest()
    await using _d = g.dir
    const lock = await lockGuest(g.dir, { operation: 'prune', what: 'guest 100', ...FAST })
    const record = parseHolder(await readFile(join(g.path, '.lock', 'holder.json'), 'utf8'))
    assert.ok(record !== undefined)
    assert.equal(record.host, process.env['GUESTBACKUP_LOCK_HOST'] ?? hostname())
    assert.equal(record.pid, process.pid)
    assert.equal(record.start, processStart(process.pid))
    assert.equal(record.operation, 'prune')
    assert.match(record.since, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    assert.match(record.pidns, /^pid:\[\d+\]$/)
    await lock.release()
    await lock.release()
    assert.deepEqual(await readdir(g.path), [])
  })

  it('moves the heartbeat while held', async () => {
    const g = await guest()
    await using _d = g.dir
    await using _l = await lockGuest(g.dir, { operation: 'backup', ...FAST })
    const read = async () =>
      parseHolder(await readFile(join(g.path, '.lock', 'holder.json'), 'utf8'))?.heartbeat ?? -1
    const first = await read()
    await sleep(450)
    assert.ok((await read()) >= first + 2, 'the heartbeat did not move')
  })

  it('fails with LOCKED naming operation, host, pid and since when told not to wait', async () => {
    const g = await guest()
    await using _d = g.dir
    await using _l = await lockGuest(g.dir, { operation: 'backup', what: 'guest 7', ...FAST })
    const host = process.env['GUESTBACKUP_LOCK_HOST'] ?? hostname()
    await assert.rejects(
      lockGuest(g.dir, { operation: 'prune', what: 'guest 7', waitMs: 0, ...FAST }),
      isCode(
        'LOCKED',
        new RegExp(
          `^guest 7 is locked by backup on host ${host.replaceAll('.', '\\.')} \\(pid ${process.pid}\\) since \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`,
        ),
      ),
    )
  })

  it('waits for the lock with one message, and takes it when released', async () => {
    const g = await guest()
    await using _d = g.dir
    const held = await lockGuest(g.dir, { operation: 'remove', what: 'guest 8', ...FAST })
    const lines: string[] = []
    setTimeout(() => void held.release(), 400)
    const t0 = performance.now()
    await using _l = await lockGuest(g.dir, {
      operation: 'backup',
      what: 'guest 8',
      waitMs: 10_000,
      log: (m) => lines.push(m),
      ...FAST,
    })
    assert.ok(performance.now() - t0 >= 350)
    assert.equal(lines.length, 1, lines.join('\n'))
    assert.match(
      lines[0] ?? '',
      /^waiting for the lock of guest 8, held by remove on host \S+ \(pid \d+\) since \S+ \(up to 10 s\)$/,
    )
  })

  it('ends a wait with ABORTED when the signal fires', async () => {
    const g = await guest()
    await using _d = g.dir
    await using _held = await lockGuest(g.dir, { operation: 'backup', what: 'guest 9', ...FAST })
    await assert.rejects(
      lockGuest(g.dir, {
        operation: 'prune',
        what: 'guest 9',
        waitMs: 60_000,
        signal: AbortSignal.timeout(300),
        ...FAST,
      }),
      isCode('ABORTED', /^interrupted while waiting for the lock of guest 9$/),
    )
  })

  it('removes a non-directory planted at .lock, and a dangling link there', async () => {
    for (const plant of ['file', 'link'] as const) {
      const g = await guest()
      await using _d = g.dir
      const target = join(dir, `target-${plant}`)
      await mkdir(target)
      if (plant === 'file') await writeFile(join(g.path, '.lock'), 'x')
      else await symlink(target, join(g.path, '.lock'))
      await using _l = await lockGuest(g.dir, { operation: 'backup', waitMs: 0, ...FAST })
      assert.ok((await lstat(join(g.path, '.lock'))).isDirectory())
      assert.deepEqual(await readdir(target), [], 'wrote through the planted link')
    }
  })

  for (const record of [undefined, '{ not json']) {
    it(`treats a lock without a readable record by how long it stays unchanged (${record ?? 'empty'})`, async () => {
      const g = await guest()
      await using _d = g.dir
      await mkdir(join(g.path, '.lock'))
      if (record !== undefined) await writeFile(join(g.path, '.lock', 'holder.json'), record)
      await assert.rejects(
        lockGuest(g.dir, { operation: 'backup', what: 'guest 1', waitMs: 0, ...FAST }),
        isCode('LOCKED', /^guest 1 is locked by an unknown holder \(.*\/\.lock has no readable/),
      )
      const lines: string[] = []
      const t0 = performance.now()
      await using _l = await lockGuest(g.dir, {
        operation: 'backup',
        waitMs: 10_000,
        log: (m) => lines.push(m),
        ...FAST,
      })
      assert.ok(performance.now() - t0 >= FAST.staleMs, 'broken before it was stale')
      assert.ok(lines.some((l) => /^breaking the stale lock of .*: it did not change for/.test(l)))
    })
  }

  it('does not release a lock that was broken and taken by another', async () => {
    const g = await guest()
    await using _d = g.dir
    const mine = await lockGuest(g.dir, { operation: 'backup', ...FAST })
    // Another took it over (as after a pause of ours beyond the bound): a new record, nonce.
    const other = {
      ...HolderRecordSchema.parse(
        JSON.parse(await readFile(join(g.path, '.lock', 'holder.json'), 'utf8')),
      ),
      nonce: 'f'.repeat(32),
      host: 'elsewhere',
    }
    await rm(join(g.path, '.lock'), { recursive: true })
    await mkdir(join(g.path, '.lock'))
    await writeFile(join(g.path, '.lock', 'holder.json'), JSON.stringify(other))
    await mine.release()
    assert.equal(
      parseHolder(await readFile(join(g.path, '.lock', 'holder.json'), 'utf8'))?.nonce,
      other.nonce,
    )
  })

  it('locks two guests of one store at once', async () => {
    const [a, b] = [await guest(), await guest()]
    await using _a = a.dir
    await using _b = b.dir
    await using _la = await lockGuest(a.dir, { operation: 'backup', waitMs: 0, ...FAST })
    await using _lb = await lockGuest(b.dir, { operation: 'backup', waitMs: 0, ...FAST })
    assert.ok((await lstat(join(a.path, '.lock'))).isDirectory())
    assert.ok((await lstat(join(b.path, '.lock'))).isDirectory())
  })
})
