/**
 * QmpClient against the in-process fake server: handshake, id matching, error replies and the
 * faults a real QEMU rarely shows (garbage, hang-ups, silence, event floods).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { isBackupError, QmpCommandError } from '../../src/errors.ts'
import type { ErrorCode } from '../../src/errors.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import type { QmpConnectOptions } from '../../src/qmp/index.ts'
import { answerAll, startFakeQmpServer } from '../helpers/fake-qmp-server.ts'
import type {
  FakeCommand,
  FakeHandler,
  FakePeer,
  FakeQmpServerOptions,
} from '../helpers/fake-qmp-server.ts'

const code = (c: ErrorCode) => (e: unknown) => isBackupError(e, c)

describe('QmpClient faults (fake server)', () => {
  let tmp: TempDir
  let n = 0
  before(async () => {
    tmp = await makeTempDir('guestbackup-qmp-fake-')
  })
  after(async () => {
    await tmp.remove()
  })

  /** A fresh server in its own directory, plus a connected client; both closed by the caller. */
  const setup = async (
    handler: FakeHandler = answerAll,
    opts: Omit<FakeQmpServerOptions, 'dir' | 'handler'> = {},
    clientOpts: QmpConnectOptions = {},
  ) => {
    const dir = join(tmp.path, String(++n))
    await mkdir(dir)
    const server = await startFakeQmpServer({ dir, handler, ...opts })
    const client = await QmpClient.connect(server.path, { timeoutMs: 2000, ...clientOpts }).catch(
      async (e: unknown) => {
        await server.close()
        throw e
      },
    )
    return {
      server,
      client,
      [Symbol.asyncDispose]: async () => {
        await client.close()
        await server.close()
      },
    }
  }

  describe('handshake', () => {
    it('reads the greeting and sends qmp_capabilities first, with an integer id', async () => {
      await using t = await setup()
      assert.deepEqual(t.client.version, { major: 7, minor: 2, micro: 22 })
      assert.equal(t.client.state, 'ready')
      assert.equal(t.server.received[0]?.execute, 'qmp_capabilities')
      assert.equal(typeof t.server.received.at(0)?.id, 'number')
    })

    it('fails with QMP_CLOSED when nothing listens', async () => {
      await assert.rejects(QmpClient.connect(join(tmp.path, 'missing.sock')), code('QMP_CLOSED'))
    })

    it('times out with QMP_TIMEOUT when no greeting comes', async () => {
      const dir = join(tmp.path, 'silent')
      await mkdir(dir)
      await using server = await startFakeQmpServer({ dir, greeting: null })
      const t0 = Date.now()
      await assert.rejects(QmpClient.connect(server.path, { timeoutMs: 100 }), code('QMP_TIMEOUT'))
      assert.ok(Date.now() - t0 < 1000)
    })

    it('aborts with ABORTED, before and during the handshake', async () => {
      const dir = join(tmp.path, 'abort')
      await mkdir(dir)
      await using server = await startFakeQmpServer({ dir, greeting: null })
      await assert.rejects(
        QmpClient.connect(server.path, { signal: AbortSignal.abort() }),
        code('ABORTED'),
      )
      const ac = new AbortController()
      setTimeout(() => {
        ac.abort(new Error('user'))
      }, 30)
      await assert.rejects(QmpClient.connect(server.path, { signal: ac.signal }), code('ABORTED'))
    })

    it('fails with QMP_PROTOCOL when the first message is not a greeting', async () => {
      const dir = join(tmp.path, 'nogreet')
      await mkdir(dir)
      await using server = await startFakeQmpServer({ dir, greeting: '{"return": {}}' })
      await assert.rejects(QmpClient.connect(server.path), code('QMP_PROTOCOL'))
    })

    it('fails with QmpCommandError when qmp_capabilities is refused', async () => {
      await assert.rejects(
        setup((cmd, peer) => {
          peer.fail(cmd, 'CommandNotFound', 'Capabilities negotiation is already complete')
        }),
        (e: unknown) => e instanceof QmpCommandError && e.errorClass === 'CommandNotFound',
      )
    })
  })

  describe('commands', () => {
    it('maps an error reply to QmpCommandError and keeps the connection', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'blockdev-del') peer.fail(cmd, 'GenericError', "Node 'x' not found")
        else peer.reply(cmd, cmd.execute === 'query-block' ? [] : {})
      })
      await assert.rejects(t.client.execute('blockdev-del', { 'node-name': 'x' }), (e: unknown) => {
        assert.ok(e instanceof QmpCommandError)
        assert.equal(e.code, 'QMP_COMMAND')
        assert.equal(e.errorClass, 'GenericError')
        assert.equal(e.desc, "Node 'x' not found")
        assert.match(e.message, /blockdev-del/)
        return true
      })
      assert.deepEqual(await t.client.execute('query-block'), [])
      assert.deepEqual(t.server.received.at(-2)?.arguments, { 'node-name': 'x' })
    })

    it('matches replies by id when they come out of order', async () => {
      const held: FakeCommand[] = []
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'qmp_capabilities') {
          peer.reply(cmd)
          return
        }
        held.push(cmd)
        if (held.length === 3) for (const c of held.reverse()) peer.reply(c, c.execute)
      })
      const results = await Promise.all([
        t.client.executeRaw('a'),
        t.client.executeRaw('b'),
        t.client.executeRaw('c'),
      ])
      assert.deepEqual(results, ['a', 'b', 'c'])
    })

    it('times out a slow reply with QMP_TIMEOUT and drops the late answer', async () => {
      let slow: { cmd: FakeCommand; peer: FakePeer } | undefined
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'slow') slow = { cmd, peer }
        else peer.reply(cmd, cmd.execute)
      })
      await assert.rejects(t.client.executeRaw('slow', {}, { timeoutMs: 50 }), code('QMP_TIMEOUT'))
      slow?.peer.reply(slow.cmd, 'late') // must not be taken as the answer to the next command
      assert.equal(await t.client.executeRaw('next'), 'next')
      assert.equal(t.client.state, 'ready')
    })

    it('uses commandTimeoutMs as the default timeout', async () => {
      await using t = await setup(
        (cmd, peer) => {
          if (cmd.execute === 'qmp_capabilities') peer.reply(cmd)
        },
        {},
        { commandTimeoutMs: 30 },
      )
      await assert.rejects(t.client.execute('query-status'), code('QMP_TIMEOUT'))
    })

    it('stops waiting with ABORTED, and sends nothing for an aborted signal', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute !== 'hang') peer.reply(cmd)
      })
      const ac = new AbortController()
      const p = t.client.executeRaw('hang', undefined, { signal: ac.signal })
      ac.abort()
      await assert.rejects(p, code('ABORTED'))
      await assert.rejects(t.client.execute('stop', {}, { signal: ac.signal }), code('ABORTED'))
      await t.client.execute('cont')
      assert.deepEqual(
        t.server.received.map((c) => c.execute),
        ['qmp_capabilities', 'hang', 'cont'],
      )
    })

    it('rejects pending commands with QMP_CLOSED when the server hangs up', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'qmp_capabilities') peer.reply(cmd)
        if (cmd.execute === 'query-block-jobs') peer.destroy()
      })
      // Observe every rejection from the start, so none is reported as unhandled meanwhile.
      const pending = assert.rejects(t.client.execute('query-status'), code('QMP_CLOSED'))
      const waiting = assert.rejects(
        t.client.waitForEvent('BLOCK_JOB_COMPLETED'),
        code('QMP_CLOSED'),
      )
      const next = t.client.events().next()
      await assert.rejects(t.client.execute('query-block-jobs'), code('QMP_CLOSED'))
      await pending
      await waiting
      assert.deepEqual(await next, { value: undefined, done: true })
      assert.equal((await t.client.closed).code, 'QMP_CLOSED')
      await assert.rejects(t.client.execute('query-status'), code('QMP_CLOSED'))
    })

    it('fails the connection with QMP_PROTOCOL on a garbage line', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'qmp_capabilities') peer.reply(cmd)
        if (cmd.execute === 'query-status') peer.raw('this is not QMP\r\n')
      })
      const other = assert.rejects(t.client.executeRaw('unanswered'), code('QMP_PROTOCOL'))
      await assert.rejects(t.client.execute('query-status'), code('QMP_PROTOCOL'))
      await other
      assert.equal((await t.client.closed).code, 'QMP_PROTOCOL')
      await assert.rejects(t.client.execute('query-status'), (e: unknown) => {
        assert.ok(isBackupError(e, 'QMP_CLOSED'))
        assert.ok(isBackupError(e.cause, 'QMP_PROTOCOL'))
        return true
      })
    })

    it('fails the connection on an over-long line and on a reply without id', async () => {
      {
        await using t = await setup(
          (cmd, peer) => {
            if (cmd.execute === 'big') peer.raw(`{"return": "${'x'.repeat(5000)}"}\r\n`)
            else peer.reply(cmd)
          },
          {},
          { maxLineBytes: 1024 },
        )
        await assert.rejects(t.client.executeRaw('big'), code('QMP_PROTOCOL'))
      }
      {
        await using t = await setup((cmd, peer) => {
          if (cmd.execute === 'bad')
            peer.raw('{"error": {"class": "GenericError", "desc": "JSON parse error"}}\r\n')
          else peer.reply(cmd)
        })
        await assert.rejects(t.client.executeRaw('bad'), code('QMP_PROTOCOL'))
      }
    })

    it('ignores replies with unknown ids', async () => {
      await using t = await setup((cmd, peer) => {
        peer.raw('{"return": "stray", "id": 999999}\r\n')
        peer.raw('{"return": "stray", "id": "not-ours"}\r\n')
        peer.reply(cmd, cmd.execute)
      })
      assert.equal(await t.client.executeRaw('x'), 'x')
    })

    it('closes idempotently; close rejects pending commands with QMP_CLOSED', async () => {
      const t = await setup((cmd, peer) => {
        if (cmd.execute === 'qmp_capabilities') peer.reply(cmd)
      })
      const pending = assert.rejects(t.client.execute('query-status'), code('QMP_CLOSED'))
      await Promise.all([t.client.close(), t.client.close()])
      await t.client.close()
      await pending
      assert.equal(t.client.state, 'closed')
      await t.server.close()
    })

    it('closes on leaving an await using block', async () => {
      await using t = await setup()
      let inner: QmpClient | undefined
      {
        await using client = await QmpClient.connect(t.server.path)
        inner = client
        assert.equal(client.state, 'ready')
      }
      assert.equal(inner.state, 'closed')
      assert.equal((await inner.closed).code, 'QMP_CLOSED')
    })
  })

  describe('events', () => {
    it('finds an event that arrived before the reply, via the since marker', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'quit')
          peer.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' })
        peer.reply(cmd)
      })
      const mark = t.client.eventMark()
      await t.client.execute('quit')
      const ev = await t.client.waitForEvent('SHUTDOWN', (d) => !d.guest, { since: mark })
      assert.equal(ev.data.reason, 'host-qmp-quit')
      assert.equal(ev.seq, mark + 1)
      // Without the marker only later events count: this wait would miss it.
      await assert.rejects(
        t.client.waitForEvent('SHUTDOWN', undefined, { timeoutMs: 30 }),
        code('QMP_TIMEOUT'),
      )
    })

    it('filters by name and predicate, and times out or aborts', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'go') {
          peer.event('BLOCK_JOB_COMPLETED', {
            type: 'backup',
            device: 'other',
            len: 1,
            offset: 1,
            speed: 0,
          })
          peer.event('JOB_STATUS_CHANGE', { id: 'job0', status: 'concluded' })
          peer.event('BLOCK_JOB_COMPLETED', {
            type: 'backup',
            device: 'job0',
            len: 2,
            offset: 2,
            speed: 0,
          })
        }
        if (cmd.execute === 'stop') peer.event('STOP')
        peer.reply(cmd)
      })
      const done = t.client.waitForEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'job0', {
        timeoutMs: 2000,
      })
      await t.client.executeRaw('go')
      const ev = await done
      assert.equal(ev.data.len, 2)
      assert.deepEqual(
        t.client.recentEvents().map((e) => e.event),
        ['BLOCK_JOB_COMPLETED', 'JOB_STATUS_CHANGE', 'BLOCK_JOB_COMPLETED'],
      )
      await assert.rejects(
        t.client.waitForEvent('RESUME', undefined, { timeoutMs: 20 }),
        code('QMP_TIMEOUT'),
      )
      const ac = new AbortController()
      const aborted = t.client.waitForEvent('RESUME', undefined, { signal: ac.signal })
      ac.abort()
      await assert.rejects(aborted, code('ABORTED'))
      const broken = t.client.waitForEvent('STOP', () => {
        throw new Error('predicate bug')
      })
      await t.client.execute('stop')
      await assert.rejects(broken, { message: 'predicate bug' })
    })

    it('iterates events with events(), also replaying from a marker', async () => {
      await using t = await setup((cmd, peer) => {
        if (cmd.execute === 'cont') peer.event('RESUME')
        if (cmd.execute === 'stop') peer.event('STOP')
        peer.reply(cmd)
      })
      const mark = t.client.eventMark()
      await t.client.execute('cont')
      const ac = new AbortController()
      const seen: string[] = []
      const reader = (async () => {
        for await (const ev of t.client.events({ since: mark, signal: ac.signal })) {
          seen.push(ev.event)
          if (seen.length === 2) break
        }
      })()
      await t.client.execute('stop')
      await reader
      assert.deepEqual(seen, ['RESUME', 'STOP'])
      const aborted = t.client.events({ signal: AbortSignal.abort() })
      await assert.rejects(aborted.next(), code('ABORTED'))
      const ac2 = new AbortController()
      const live = t.client.events({ signal: ac2.signal })
      const next = assert.rejects(live.next(), code('ABORTED'))
      ac2.abort()
      await next
    })

    it('survives an event flood with bounded memory and still answers commands', async () => {
      const FLOOD = 20_000
      await using t = await setup(
        async (cmd, peer) => {
          if (cmd.execute === 'flood') {
            await peer.flood(FLOOD, 'JOB_STATUS_CHANGE', (i) => ({
              id: `job${i}`,
              status: 'running',
            }))
          }
          peer.reply(cmd, cmd.execute)
        },
        {},
        { eventBufferSize: 64 },
      )
      const mark = t.client.eventMark()
      const slow = t.client.events({ bufferSize: 16 }) // never read during the flood
      const last = t.client.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === `job${FLOOD - 1}`, {
        timeoutMs: 20_000,
      })
      const during = t.client.execute('query-status')
      assert.equal(await t.client.executeRaw('flood', undefined, { timeoutMs: 20_000 }), 'flood')
      assert.equal(await during, 'query-status')
      assert.equal((await last).seq, mark + FLOOD)
      // The ring keeps the newest 64, the slow subscriber the newest 16 (a gap shows in seq).
      const recent = t.client.recentEvents()
      assert.equal(recent.length, 64)
      assert.equal(recent[0]?.seq, mark + FLOOD - 63)
      const first = await slow.next()
      assert.equal(first.done, false)
      assert.equal(first.value.seq, mark + FLOOD - 15)
      await slow.return?.()
      // Events after the marker were dropped from the ring, so waiting from it is an error.
      await assert.rejects(
        t.client.waitForEvent('BLOCK_JOB_COMPLETED', undefined, { since: mark }),
        code('QMP_PROTOCOL'),
      )
      assert.equal(await t.client.executeRaw('after'), 'after')
    })
  })
})
