import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import type { Server, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../src/errors.ts'
import { GuestAgent } from '../../src/host/live/qga.ts'

interface Req {
  execute: string
  arguments?: { id?: number }
  id?: string
}

/** A fake agent: `answer` decides each reply (undefined: no reply). */
const fakeAgent = async (
  path: string,
  answer: (req: Req, c: Socket) => string | undefined,
): Promise<{ server: Server; closed: Promise<void> }> => {
  let onClosed: () => void = () => undefined
  const closed = new Promise<void>((r) => (onClosed = r))
  const server = createServer((c) => {
    c.setEncoding('utf8')
    let buf = ''
    c.on('close', onClosed)
    c.on('data', (d: string) => {
      buf += d
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const req = JSON.parse(buf.slice(0, i)) as Req
        buf = buf.slice(i + 1)
        const out = answer(req, c)
        if (out !== undefined) c.write(`${out}\n`)
      }
    })
  })
  await new Promise<void>((r) => server.listen(path, r))
  return { server, closed }
}

const sync = (req: Req, withId: boolean): string =>
  `\xff${JSON.stringify({ return: req.arguments?.id, ...(withId ? { id: req.id } : {}) })}`

const code = (c: string, why?: RegExp) => (e: unknown) => {
  assert.ok(isBackupError(e), String(e))
  assert.equal(e.code, c, e.message)
  if (why) assert.match(e.message, why)
  return true
}

describe('host/live/qga: guest agent client faults', () => {
  let dir: string
  let n = 0
  const sock = () => join(dir, `qga-${n++}.sock`)
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-qga-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('drops the late reply of a timed-out call instead of answering the next one', async () => {
    const path = sock()
    let held: { c: Socket; req: Req } | undefined
    const { server } = await fakeAgent(path, (req, c) => {
      if (req.execute === 'guest-sync-delimited') return sync(req, true)
      if (req.execute === 'guest-fsfreeze-freeze') {
        held = { c, req }
        return undefined
      }
      // Before answering the thaw, the late freeze reply (3 file systems) arrives.
      if (held) held.c.write(`${JSON.stringify({ return: 3, id: held.req.id })}\n`)
      return JSON.stringify({ return: 7, id: req.id })
    })
    try {
      await using agent = await GuestAgent.connect(path)
      await assert.rejects(agent.freeze(100), code('QGA_TIMEOUT', /fsfreeze-freeze/))
      assert.equal(await agent.thaw(), 7)
    } finally {
      server.close()
    }
  })

  it('fails the connection rather than give an id-less reply to the wrong call', async () => {
    const path = sock()
    const { server } = await fakeAgent(path, (req) => {
      if (req.execute === 'guest-sync-delimited') return sync(req, false)
      if (req.execute === 'guest-fsfreeze-freeze') return undefined
      return JSON.stringify({ return: 3 })
    })
    try {
      await using agent = await GuestAgent.connect(path)
      await assert.rejects(agent.freeze(100), code('QGA_TIMEOUT'))
      await assert.rejects(agent.thaw(), code('QGA_PROTOCOL', /without id after a timed-out/))
    } finally {
      server.close()
    }
  })

  it('closes the socket when the sync fails', async () => {
    const path = sock()
    const { server, closed } = await fakeAgent(path, () => JSON.stringify({ return: -1 }))
    try {
      await assert.rejects(GuestAgent.connect(path), code('QGA_PROTOCOL', /sync failed/))
      await closed
    } finally {
      server.close()
    }
  })

  it("reports the agent's error description", async () => {
    const path = sock()
    const { server } = await fakeAgent(path, (req) =>
      req.execute === 'guest-sync-delimited'
        ? sync(req, true)
        : JSON.stringify({ error: { class: 'GenericError', desc: 'no fs' }, id: req.id }),
    )
    try {
      await using agent = await GuestAgent.connect(path)
      await assert.rejects(agent.freeze(), code('QGA_COMMAND', /guest-fsfreeze-freeze: no fs/))
    } finally {
      server.close()
    }
  })
})
