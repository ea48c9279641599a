import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Dir } from '../../src/io/beneath.ts'
import { lockGuest } from '../../src/io/lock.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

// The guest lock as the CLI shows it: LOCKED names the holder, --lock-wait waits with a message.
describe('cli: --lock-wait', () => {
  let dir = ''
  let store = ''
  let volid = ''
  const host = process.env['GUESTBACKUP_LOCK_HOST'] ?? hostname()
  // As a regular expression: the holder as LOCKED and the wait message name it.
  const holder = `backup on host ${host} (pid ${process.pid}) since `.replace(/[.()]/g, '\\$&')
  const hold = async () => {
    const guest = await Dir.open(join(store, '100'))
    const lock = await lockGuest(guest, { operation: 'backup', what: 'guest 100' })
    return {
      lock,
      async [Symbol.asyncDispose]() {
        await lock.release()
        await guest.close()
      },
    }
  }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-lock-'))
    store = join(dir, 'store')
    await mkdir(join(dir, 'root'))
    await writeFile(join(dir, 'root', 'f'), 'data\n')
    await writeFile(join(dir, 'ct.conf'), 'hostname: t\n')
    await runCliInProcessOk(['init', store])
    const r = await runCliInProcessOk(
      backupArgs(store, 100, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root'), '--json'),
    )
    volid = (JSON.parse(r.stdout) as { volid: string }).volid
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('refuses a bad --lock-wait with one usage line', async () => {
    for (const cmd of [
      ['remove', '--store', store, volid],
      ['prune', '--store', store],
      backupArgs(store, 100, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root')),
    ]) {
      const r = await runCliInProcess([...cmd, '--lock-wait', '5d'])
      assert.equal(r.code, 2)
      assert.equal(
        r.stderr,
        "error: option '--lock-wait <time>' argument '5d' is invalid. expected a time: minutes as vzdump's lockwait (180), or with a unit (30s, 5m, 2h) (see --help)\n",
      )
    }
  })

  it('with --lock-wait 0, remove, prune and backup fail at once naming the holder', async () => {
    await using _held = await hold()
    const rm0 = await runCliInProcess(['remove', '--store', store, volid, '--lock-wait', '0'])
    assert.equal(rm0.code, 1)
    assert.match(rm0.stderr, new RegExp(`^guestbackup: guest 100 is locked by ${holder}\\S+Z\\n$`))
    const bk = await runCliInProcess([
      ...backupArgs(store, 100, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root')),
      '--lock-wait',
      '0',
    ])
    assert.equal(bk.code, 1)
    assert.match(bk.stderr, new RegExp(`guestbackup: guest 100 is locked by ${holder}\\S+Z`))
    const pr = await runCliInProcess([
      'prune',
      '--store',
      store,
      '--keep',
      'keep-last=1',
      '--lock-wait',
      '0s',
    ])
    assert.equal(pr.code, 1)
    assert.match(pr.stderr, new RegExp(`guest 100 is locked by ${holder}`))
  })

  it('waits with one message and goes on once the lock is released', async () => {
    const held = await hold()
    setTimeout(() => void held[Symbol.asyncDispose](), 1_500)
    const t0 = Date.now()
    const r = await runCliInProcess(['remove', '--store', store, volid, '--lock-wait', '1m'])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(Date.now() - t0 >= 1_400)
    assert.match(
      r.stderr,
      new RegExp(
        `^warn: waiting for the lock of guest 100, held by ${holder}\\S+Z \\(up to 1 min\\)\\n$`,
      ),
    )
    assert.equal((await runCliInProcessOk(['list', '--store', store])).stdout, '')
  })
})
