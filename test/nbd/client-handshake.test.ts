import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { isBackupError } from '../../src/errors.ts'
import { NbdClient, walkExtents } from '../../src/nbd/index.ts'
import { NBD_FLAG_HS, NBD_OPT, NBD_REP } from '../../src/nbd/constants.ts'
import { FakeNbdServer } from '../helpers/fake-nbd-server.ts'
import type { FakeNbdOptions } from '../helpers/fake-nbd-server.ts'
import { code, nbdClientFixture } from '../helpers/nbd-client.ts'
import { encodeMetaContext, encodeOptionReply } from '../helpers/nbd-server-wire.ts'

const { cleanup, setup } = nbdClientFixture()

describe('nbd/client handshake against the fake server', () => {
  it('negotiates size, flags, block sizes and meta contexts', async () => {
    const { client, srv } = await setup(
      {
        size: 4 << 20,
        exportName: 'vda',
        metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
        blockSize: { minimum: 512, preferred: 4096, maximum: 1 << 20 },
      },
      { exportName: 'vda', metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b', 'x:nope'] },
    )
    assert.equal(client.size, 4 << 20)
    assert.equal(client.exportName, 'vda')
    assert.deepEqual(client.blockSize, { minimum: 512, preferred: 4096, maximum: 1 << 20 })
    assert.deepEqual([...client.metaContexts.keys()], ['base:allocation', 'qemu:dirty-bitmap:b'])
    assert.equal(client.structuredReplies, true)
    assert.deepEqual(client.flags, {
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      canFastZero: true,
      canMultiConn: true,
      canDf: false,
      canCache: false,
    })
    assert.equal(srv.options.at(-1), 7) // NBD_OPT_GO last
  })

  it('names the export when the server does not know it', async () => {
    const srv = await FakeNbdServer.start({ exportName: 'vda' })
    cleanup.push(() => srv.close())
    await assert.rejects(NbdClient.connect({ path: srv.path, exportName: 'vdb' }), (e) => {
      assert.ok(isBackupError(e, 'NOT_FOUND'))
      assert.match(e.message, /"vdb"/)
      return true
    })
  })

  it('falls back to simple replies when the server has no structured replies', async () => {
    const { client } = await setup({ structured: false }, { metaContexts: ['base:allocation'] })
    assert.equal(client.structuredReplies, false)
    assert.equal(client.metaContexts.size, 0)
    await client.write(8192, Buffer.alloc(4096, 7))
    assert.deepEqual(await client.read(8192, 4096), Buffer.alloc(4096, 7))
    await assert.rejects(client.blockStatus(0, 4096), code('NBD_UNSUPPORTED'))
    assert.deepEqual(
      await NbdClient.listMetaContexts({ path: (await setup({ structured: false })).srv.path }),
      [],
    )
  })

  it('falls back to NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes', async () => {
    for (const handshakeFlags of [
      NBD_FLAG_HS.FIXED_NEWSTYLE,
      NBD_FLAG_HS.FIXED_NEWSTYLE | NBD_FLAG_HS.NO_ZEROES,
    ]) {
      const { client } = await setup({ noGo: true, handshakeFlags, size: 65536 })
      assert.equal(client.size, 65536)
      await client.write(0, Buffer.alloc(512, 1))
      assert.deepEqual(await client.read(0, 512), Buffer.alloc(512, 1))
    }
  })

  it('refuses servers without fixed newstyle negotiation', async () => {
    const srv = await FakeNbdServer.start({ handshakeFlags: 0 })
    cleanup.push(() => srv.close())
    await assert.rejects(NbdClient.connect({ path: srv.path }), code('NBD_UNSUPPORTED'))
  })

  it('fails with NBD_CLOSED when nothing listens', async () => {
    await assert.rejects(NbdClient.connect({ path: '/nonexistent/nbd.sock' }), code('NBD_CLOSED'))
  })

  it('lists meta contexts with NBD_OPT_LIST_META_CONTEXT, then NBD_OPT_ABORT', async () => {
    const srv = await FakeNbdServer.start({
      metaContexts: ['base:allocation', 'qemu:dirty-bitmap:a'],
    })
    cleanup.push(() => srv.close())
    assert.deepEqual(await NbdClient.listMetaContexts({ path: srv.path }), [
      'base:allocation',
      'qemu:dirty-bitmap:a',
    ])
    assert.deepEqual(await NbdClient.listMetaContexts({ path: srv.path, queries: ['qemu:'] }), [
      'qemu:dirty-bitmap:a',
    ])
    assert.deepEqual(srv.options.slice(-3), [8, 9, 2])
  })

  it('aborts the handshake on its signal', async () => {
    const srv = await FakeNbdServer.start()
    cleanup.push(() => srv.close())
    await assert.rejects(
      NbdClient.connect({ path: srv.path, signal: AbortSignal.abort() }),
      code('ABORTED'),
    )
  })
})

describe('nbd/client handshake failures', () => {
  const reply = (opt: number, type: number, msg = '') =>
    encodeOptionReply(opt, type, Buffer.from(msg))
  const cases: [string, FakeNbdOptions, Parameters<typeof isBackupError>[1], RegExp][] = [
    [
      'TLS required',
      { onOption: (o) => (o === NBD_OPT.GO ? reply(o, NBD_REP.ERR_TLS_REQD) : undefined) },
      'NBD_UNSUPPORTED',
      /requires TLS/,
    ],
    [
      'policy refusal',
      { onOption: (o) => (o === NBD_OPT.GO ? reply(o, NBD_REP.ERR_POLICY, 'go away') : undefined) },
      'NBD_UNSUPPORTED',
      /policy.*go away/,
    ],
    [
      'shutdown during negotiation',
      {
        onOption: (o) =>
          o === NBD_OPT.STRUCTURED_REPLY ? reply(o, NBD_REP.ERR_SHUTDOWN) : undefined,
      },
      'NBD_CLOSED',
      /shutting down/,
    ],
    [
      'a reply to another option',
      { onOption: (o) => (o === NBD_OPT.GO ? reply(NBD_OPT.INFO, NBD_REP.ACK) : undefined) },
      'NBD_PROTOCOL',
      /NBD_OPT_INFO while NBD_OPT_GO/,
    ],
    [
      'GO acknowledged without NBD_INFO_EXPORT',
      { onOption: (o) => (o === NBD_OPT.GO ? reply(o, NBD_REP.ACK) : undefined) },
      'NBD_PROTOCOL',
      /without NBD_INFO_EXPORT/,
    ],
    [
      'an invalid minimum block size',
      { blockSize: { minimum: 3, preferred: 4096, maximum: 1 << 20 } },
      'NBD_PROTOCOL',
      /minimum must be a power of 2/,
    ],
    [
      'a maximum block size that is not a multiple of the minimum',
      { blockSize: { minimum: 512, preferred: 4096, maximum: 1000 } },
      'NBD_PROTOCOL',
      /multiple of minimum/,
    ],
    ['transmission flags without HAS_FLAGS', { transmissionFlags: 0 }, 'NBD_PROTOCOL', /HAS_FLAGS/],
    [
      'an unexpected reply type',
      {
        onOption: (o) =>
          o === NBD_OPT.STRUCTURED_REPLY
            ? encodeOptionReply(o, NBD_REP.META_CONTEXT, encodeMetaContext(1, 'a:b'))
            : undefined,
      },
      'NBD_PROTOCOL',
      /unexpected meta-context reply/,
    ],
  ]
  for (const [name, opts, want, message] of cases) {
    it(`fails on ${name}`, async () => {
      const srv = await FakeNbdServer.start(opts)
      cleanup.push(() => srv.close())
      await assert.rejects(NbdClient.connect({ path: srv.path }), (e) => {
        assert.ok(isBackupError(e, want), String(e))
        assert.match(e.message, message)
        return true
      })
    })
  }

  it('treats an unsupported SET_META_CONTEXT as no contexts', async () => {
    const { client } = await setup(
      {
        onOption: (o) =>
          o === NBD_OPT.SET_META_CONTEXT ? encodeOptionReply(o, NBD_REP.ERR_UNSUP) : undefined,
      },
      { metaContexts: ['base:allocation'] },
    )
    assert.equal(client.metaContexts.size, 0)
    await assert.rejects(walkExtents(client, 'base:allocation').next(), code('NBD_UNSUPPORTED'))
  })
})
