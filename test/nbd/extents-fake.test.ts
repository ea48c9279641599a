import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { walkExtents } from '../../src/nbd/index.ts'
import { NBD_CMD } from '../../src/nbd/constants.ts'
import { code, nbdClientFixture } from '../helpers/nbd-client.ts'
import { encodeBlockStatus } from '../helpers/nbd-server-wire.ts'

const { setup } = nbdClientFixture()

describe('nbd/extents against the fake server', () => {
  it('walks a range fully when the server answers with one extent at a time', async () => {
    const { client, srv } = await setup(
      {
        size: 1 << 20,
        metaContexts: ['base:allocation', 'qemu:dirty-bitmap:x'],
        onRequest: (req, conn) => {
          if (req.type !== NBD_CMD.BLOCK_STATUS) return false
          // One short extent per context: 4 KiB, alternating flags by 8 KiB.
          const flags = Math.floor(req.offset / 8192) % 2
          conn.write(encodeBlockStatus(req.cookie, 1, [{ length: 4096, flags }]))
          conn.write(encodeBlockStatus(req.cookie, 2, [{ length: 4096, flags: 1 }], 1))
          return true
        },
      },
      { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:x'] },
    )
    const got = []
    for await (const e of walkExtents(client, 'base:allocation', { offset: 4096, length: 32768 }))
      got.push(e)
    assert.deepEqual(got, [
      { offset: 4096, length: 4096, flags: 0 },
      { offset: 8192, length: 8192, flags: 1 },
      { offset: 16384, length: 8192, flags: 0 },
      { offset: 24576, length: 8192, flags: 1 },
      { offset: 32768, length: 4096, flags: 0 },
    ])
    assert.equal(srv.requests.length, 8)
    await assert.rejects(walkExtents(client, 'nope:ctx').next(), code('NBD_UNSUPPORTED'))
  })

  it('merges equal extents and clips to the range with real allocation data', async () => {
    const { client, srv } = await setup({ size: 1 << 20 }, { metaContexts: ['base:allocation'] })
    srv.disk.fill(9, 65536, 131072)
    const got = []
    for await (const e of walkExtents(client, 'base:allocation', { chunk: 16384 })) got.push(e)
    assert.deepEqual(got, [
      { offset: 0, length: 65536, flags: 3 },
      { offset: 65536, length: 65536, flags: 0 },
      { offset: 131072, length: (1 << 20) - 131072, flags: 3 },
    ])
  })
})
