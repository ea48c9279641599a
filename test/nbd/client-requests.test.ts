import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { setImmediate as tick } from 'node:timers/promises'
import { isBackupError, NbdServerError } from '../../src/errors.ts'
import { NBD_CMD, NBD_FLAG, NBD_REPLY_FLAG } from '../../src/nbd/constants.ts'
import type { FakeConnection } from '../helpers/fake-nbd-server.ts'
import { code, holder, nbdClientFixture } from '../helpers/nbd-client.ts'
import {
  encodeChunk,
  encodeErrorChunk,
  encodeOffsetData,
  encodeSimpleReply,
} from '../helpers/nbd-server-wire.ts'

const { setup } = nbdClientFixture()

describe('nbd/client requests against the fake server', () => {
  it('round-trips data with sparse structured reads', async () => {
    const { client, srv } = await setup({ size: 1 << 20 })
    const data = Buffer.alloc(12288)
    data.fill(0xab, 4096, 8192)
    await client.write(65536, data)
    assert.deepEqual(await client.read(65536, 12288), data)
    await client.writeZeroes(65536, 12288)
    assert.equal(
      srv.disk.subarray(65536, 65536 + 12288).every((b) => b === 0),
      true,
    )
  })

  it('matches out-of-order replies by cookie', async () => {
    const h = holder()
    const { client, srv } = await setup({ onRequest: h.onRequest })
    for (let i = 0; i < 4; i++) srv.disk.fill(i + 1, i * 4096, (i + 1) * 4096)
    const reads = [0, 1, 2, 3].map((i) => client.read(i * 4096, 4096))
    await h.waitFor(4)
    for (const [req, conn] of h.held.reverse()) conn.reply(req)
    const bufs = await Promise.all(reads)
    bufs.forEach((b, i) => {
      assert.deepEqual(b, Buffer.alloc(4096, i + 1))
    })
  })

  it('keeps at most maxInFlight requests outstanding', async () => {
    let outstanding = 0
    let peak = 0
    const { client } = await setup(
      {
        onRequest: (req, conn) => {
          peak = Math.max(peak, ++outstanding)
          setImmediate(() => {
            outstanding--
            conn.reply(req)
          })
          return true
        },
      },
      { maxInFlight: 3 },
    )
    await Promise.all(Array.from({ length: 20 }, (_, i) => client.read(i * 4096, 4096)))
    assert.equal(peak, 3)
  })

  it('rejects a server errno with NbdServerError and keeps the connection', async () => {
    const { client } = await setup({
      onRequest: (req, conn) => {
        if (req.offset !== 4096) return false
        conn.write(encodeErrorChunk(req.cookie, 5, 'disk on fire', { offset: 4096 }))
        return true
      },
    })
    await assert.rejects(client.read(4096, 512), (e) => {
      assert.ok(e instanceof NbdServerError)
      assert.equal(e.errno, 5)
      assert.match(e.message, /disk on fire/)
      return true
    })
    assert.equal((await client.read(0, 512)).length, 512)
  })

  it('fails the connection on a simple-reply READ error', async () => {
    const h = holder()
    const { client } = await setup({ structured: false, onRequest: h.onRequest })
    const bad = client.read(0, 512)
    const other = client.read(512, 512)
    await h.waitFor(2)
    const [req, conn] = h.held[0]!
    conn.write(encodeSimpleReply(req.cookie, 5))
    await assert.rejects(bad, (e) => e instanceof NbdServerError && e.errno === 5)
    await assert.rejects(other, code('NBD_CLOSED'))
    await assert.rejects(client.read(0, 512), code('NBD_CLOSED'))
  })

  it('rejects all pending requests on a reply with a wrong cookie', async () => {
    const h = holder()
    const { client } = await setup({ onRequest: h.onRequest })
    const reads = [client.read(0, 512), client.read(512, 512)]
    await h.waitFor(2)
    h.held[0]![1].write(encodeOffsetData(12345n, 0, Buffer.alloc(512), NBD_REPLY_FLAG.DONE))
    for (const r of reads) await assert.rejects(r, code('NBD_PROTOCOL'))
    await assert.rejects(client.flush(), code('NBD_CLOSED'))
  })

  it('rejects pending requests on a truncated reply', async () => {
    const h = holder()
    const { client } = await setup({ onRequest: h.onRequest })
    const reads = [client.read(0, 4096), client.read(4096, 4096)]
    await h.waitFor(2)
    const [req, conn] = h.held[0]!
    const chunk = encodeOffsetData(req.cookie, 0, Buffer.alloc(4096, 1), NBD_REPLY_FLAG.DONE)
    conn.write(chunk.subarray(0, 10))
    conn.socket.end()
    for (const r of reads) {
      await assert.rejects(r, (e) => {
        assert.ok(isBackupError(e, 'NBD_CLOSED'))
        assert.match(e.message, /2 request\(s\) in flight, inside a reply header/)
        return true
      })
    }
  })

  it('rejects with NBD_CLOSED when the server hangs up mid-read', async () => {
    const { client } = await setup({
      onRequest: (req, conn) => {
        const chunk = encodeOffsetData(req.cookie, req.offset, Buffer.alloc(req.length, 1))
        conn.write(chunk.subarray(0, 3000))
        conn.socket.destroy()
        return true
      },
    })
    await assert.rejects(client.read(0, 65536), (e) => {
      assert.ok(isBackupError(e, 'NBD_CLOSED'))
      assert.match(e.message, /bytes missing/)
      return true
    })
  })

  it('tells a reset connection (requests left unread by the server) as the server closing it', async () => {
    const { client } = await setup({
      size: 1 << 20,
      onRequest: (_req, conn) => {
        // Stop reading, let the next request arrive unread, then go: unix(7) resets.
        conn.socket.pause()
        setTimeout(() => conn.socket.destroy(), 100)
        return true
      },
    })
    const first = client.read(0, 512)
    await tick()
    // More than a socket buffer holds: surely unread when the server goes.
    const second = client.write(0, Buffer.alloc(1 << 20, 1))
    for (const p of [first, second]) {
      await assert.rejects(p, (e) => {
        assert.ok(isBackupError(e, 'NBD_CLOSED'))
        assert.match(
          e.message,
          /^NBD server at \S+ closed the connection with 2 request\(s\) in flight \(\w+ (ECONNRESET|EPIPE)\)$/,
        )
        return true
      })
    }
  })

  it('fails on a malformed chunk (data outside the request)', async () => {
    const { client } = await setup({
      onRequest: (req, conn) => {
        conn.write(encodeOffsetData(req.cookie, req.offset + 512, Buffer.alloc(req.length), 1))
        return true
      },
    })
    await assert.rejects(client.read(0, 1024), code('NBD_PROTOCOL'))
  })

  it('aborts a request in flight and discards its late reply', async () => {
    const h = holder()
    const { client } = await setup({ onRequest: h.onRequest })
    const ac = new AbortController()
    const r = client.read(0, 512, { signal: ac.signal })
    await h.waitFor(1)
    ac.abort()
    await assert.rejects(r, code('ABORTED'))
    const [req, conn] = h.held[0]!
    conn.reply(req)
    await client.flush()
    const next = client.read(512, 512)
    await h.waitFor(2)
    h.held[1]![1].reply(h.held[1]![0])
    assert.equal((await next).length, 512)
  })

  it('reads into a caller buffer', async () => {
    const { client, srv } = await setup()
    srv.disk.fill(7, 4096, 8192)
    const into = Buffer.alloc(16384, 0xff)
    const got = await client.read(0, 8192, { into })
    assert.equal(got.buffer, into.buffer)
    assert.equal(got.length, 8192)
    assert.deepEqual(got, Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 7)]))
    assert.deepEqual(into.subarray(8192), Buffer.alloc(8192, 0xff))
    await assert.rejects(client.read(0, 8192, { into: Buffer.alloc(100) }), code('INTERNAL'))
  })

  it('holds back ABORTED of a read into a caller buffer until its reply is in', async () => {
    const h = holder()
    const { client, srv } = await setup({ onRequest: h.onRequest })
    srv.disk.fill(3, 0, 65536)
    const into = Buffer.alloc(65536)
    const ac = new AbortController()
    let settled = false
    const r = client.read(0, 65536, { into, signal: ac.signal }).finally(() => (settled = true))
    await h.waitFor(1)
    ac.abort()
    await tick()
    assert.equal(settled, false)
    h.held[0]![1].reply(h.held[0]![0])
    await assert.rejects(r, code('ABORTED'))
    assert.deepEqual(into, Buffer.alloc(65536, 3))
  })

  it('aborts a request waiting for an in-flight slot without sending it', async () => {
    const h = holder()
    const { client, srv } = await setup({ onRequest: h.onRequest }, { maxInFlight: 1 })
    const first = client.read(0, 512)
    await h.waitFor(1)
    const ac = new AbortController()
    const second = client.read(512, 512, { signal: ac.signal })
    await tick()
    ac.abort()
    await assert.rejects(second, code('ABORTED'))
    h.held[0]![1].reply(h.held[0]![0])
    await first
    await client.flush()
    assert.deepEqual(
      srv.requests.map((r) => r.type),
      [NBD_CMD.READ, NBD_CMD.FLUSH],
    )
  })

  it('validates offsets, lengths and alignment before sending', async () => {
    const { client, srv } = await setup(
      {
        size: 1 << 20,
        blockSize: { minimum: 512, preferred: 4096, maximum: 65536 },
        metaContexts: ['base:allocation'],
      },
      { metaContexts: ['base:allocation'] },
    )
    const bad: [string, () => Promise<unknown>][] = [
      ['beyond the end', () => client.read((1 << 20) - 512, 1024)],
      ['negative', () => client.read(-512, 512)],
      ['fraction', () => client.read(0.5, 512)],
      ['unaligned offset', () => client.read(100, 512)],
      ['unaligned length', () => client.write(0, Buffer.alloc(100))],
      ['over maximum', () => client.read(0, 131072)],
      ['block status beyond the end', () => client.blockStatus(0, 2 << 20)],
    ]
    for (const [what, f] of bad) await assert.rejects(f(), code('INTERNAL'), what)
    assert.equal(srv.requests.length, 0)
  })

  it('refuses operations the export does not offer', async () => {
    const { client } = await setup({ transmissionFlags: NBD_FLAG.HAS_FLAGS | NBD_FLAG.READ_ONLY })
    assert.equal(client.flags.readOnly, true)
    await assert.rejects(client.write(0, Buffer.alloc(512)), code('NBD_UNSUPPORTED'))
    await assert.rejects(client.flush(), code('NBD_UNSUPPORTED'))
    await assert.rejects(client.trim(0, 512), code('NBD_UNSUPPORTED'))
    await assert.rejects(client.writeZeroes(0, 512), code('NBD_UNSUPPORTED'))
  })

  it('splits WRITE_ZEROES at the maximum block size', async () => {
    const { client, srv } = await setup({
      size: 8 << 20,
      blockSize: { minimum: 512, preferred: 4096, maximum: 1 << 20 },
    })
    srv.disk.fill(1)
    await client.writeZeroes(512, 5 << 20, { noHole: true })
    const zs = srv.requests.filter((r) => r.type === NBD_CMD.WRITE_ZEROES)
    assert.deepEqual(
      zs.map((r) => r.length),
      [1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20],
    )
    assert.ok(zs.every((r) => r.flags === 2))
    assert.equal(srv.disk[511], 1)
    assert.ok(srv.disk.subarray(512, 512 + (5 << 20)).every((b) => b === 0))
    assert.equal(srv.disk[512 + (5 << 20)], 1)
  })

  it('survives a server that reads slowly (write backpressure)', async () => {
    const { client, srv } = await setup({ size: 64 << 20 })
    const data = Buffer.alloc(4 << 20)
    const writes = Array.from({ length: 12 }, (_, i) => {
      data.fill(i + 1)
      return client.write(i * data.length, Buffer.from(data), { fua: true })
    })
    await Promise.all(writes)
    for (let i = 0; i < 12; i++) assert.equal(srv.disk[i * data.length + 123], i + 1)
  })

  it('waits for drain when the socket is full, and aborts that wait', async () => {
    let paused: FakeConnection | undefined
    const { client, srv } = await setup({
      size: 64 << 20,
      onRequest: (req, conn) => {
        if (req.type !== NBD_CMD.READ) return false
        // Stop reading: the client's socket buffer fills up behind this request.
        conn.socket.pause()
        paused = conn
        conn.reply(req)
        return true
      },
    })
    await client.read(0, 512)
    const big = Buffer.alloc(8 << 20, 0x42)
    const first = client.write(0, big)
    const ac = new AbortController()
    const second = client.write(8 << 20, big, { signal: ac.signal })
    await tick() // let it reach the wait for 'drain'
    ac.abort()
    await assert.rejects(second, code('ABORTED'))
    paused?.socket.resume()
    await first
    await client.flush()
    const writes = srv.requests.filter((r) => r.type === NBD_CMD.WRITE)
    assert.deepEqual(
      writes.map((r) => r.offset),
      [0],
    )
    assert.equal(srv.disk[(8 << 20) - 1], 0x42)
  })

  it('closes cleanly with NBD_CMD_DISC; close is idempotent; later calls fail', async () => {
    const { client, srv } = await setup()
    await client.read(0, 512)
    await Promise.all([client.close(), client.close()])
    await client.close()
    assert.equal(srv.requests.at(-1)?.type, NBD_CMD.DISC)
    await assert.rejects(client.read(0, 512), code('NBD_CLOSED'))
  })

  it('disconnects when the server answers ESHUTDOWN', async () => {
    const { client, srv } = await setup({
      onRequest: (req, conn) => {
        if (req.type !== NBD_CMD.READ) return false
        conn.write(
          encodeChunk(NBD_REPLY_FLAG.DONE, 0x8001, req.cookie, Buffer.from([0, 0, 0, 108, 0, 0])),
        )
        return true
      },
    })
    await assert.rejects(client.read(0, 512), (e) => e instanceof NbdServerError && e.errno === 108)
    await client.close()
    assert.equal(srv.requests.at(-1)?.type, NBD_CMD.DISC)
  })
})
