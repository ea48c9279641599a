import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { BackupError, isBackupError, NbdServerError } from '../../src/errors.ts'
import { NBD_CMD, NBD_REPLY_FLAG } from '../../src/nbd/constants.ts'
import { inFlight, Receiver } from '../../src/nbd/receiver.ts'
import type { InFlight } from '../../src/nbd/receiver.ts'
import {
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetData,
  encodeOffsetHole,
  encodeSimpleReply,
} from '../helpers/nbd-server-wire.ts'

const DONE = NBD_REPLY_FLAG.DONE
const isProtocolError = (e: unknown): boolean => isBackupError(e, 'NBD_PROTOCOL')

interface Harness {
  readonly rx: Receiver
  readonly done: Map<bigint, NbdServerError | undefined>
  readonly reqs: Map<bigint, InFlight>
}

const harness = (
  reqs: readonly InFlight[],
  opts: { structured?: boolean; contexts?: number[] } = {},
): Harness => {
  const pending = new Map(reqs.map((r) => [r.cookie, r]))
  const done = new Map<bigint, NbdServerError | undefined>()
  const rx = new Receiver({
    structured: opts.structured ?? true,
    contextIds: new Set(opts.contexts ?? [1, 2]),
    lookup: (c) => pending.get(c),
    complete: (req, err) => {
      pending.delete(req.cookie)
      done.set(req.cookie, err)
    },
  })
  return { rx, done, reqs: new Map(reqs.map((r) => [r.cookie, r])) }
}

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff
  return b
}

// A conversation with five requests in flight: a sparse READ (data, hole, data out of order),
// a large READ (zero-copy path), a failing READ, a WRITE, and a BLOCK_STATUS on two contexts.
const big = pattern(300 * 1024, 3)
const requests = (): InFlight[] => [
  inFlight(1n, NBD_CMD.READ, 4096, 12288, { dest: Buffer.alloc(12288, 0xee) }),
  inFlight(2n, NBD_CMD.READ, 1 << 20, big.length, { dest: Buffer.alloc(big.length) }),
  inFlight(3n, NBD_CMD.READ, 0, 512, { dest: Buffer.alloc(512) }),
  inFlight(4n, NBD_CMD.WRITE, 0, 512),
  inFlight(5n, NBD_CMD.BLOCK_STATUS, 0, 1 << 20),
]
const stream = Buffer.concat([
  encodeOffsetData(1n, 4096 + 8192, pattern(4096, 1)),
  encodeOffsetData(2n, 1 << 20, big.subarray(0, 100 * 1024)),
  encodeOffsetHole(1n, 4096 + 4096, 4096),
  encodeSimpleReply(4n, 0),
  encodeOffsetData(2n, (1 << 20) + 100 * 1024, big.subarray(100 * 1024), DONE),
  encodeOffsetData(3n, 0, Buffer.alloc(512, 1)),
  encodeBlockStatus(5n, 2, [{ length: 1 << 20, flags: 1 }]),
  encodeErrorChunk(3n, 5, 'media error', { offset: 0, flags: 0 }),
  encodeOffsetData(1n, 4096, pattern(4096, 9)),
  encodeBlockStatus(5n, 1, [
    { length: 65536, flags: 0 },
    { length: 2 << 20, flags: 3 },
  ]),
  encodeNoneChunk(1n),
  encodeNoneChunk(3n),
  encodeNoneChunk(5n),
])

const checkOutcome = (h: Harness): void => {
  assert.equal(h.done.size, 5)
  assert.equal(h.done.get(1n), undefined)
  assert.deepEqual(
    h.reqs.get(1n)?.dest,
    Buffer.concat([pattern(4096, 9), Buffer.alloc(4096), pattern(4096, 1)]),
  )
  assert.equal(h.done.get(2n), undefined)
  assert.ok(h.reqs.get(2n)?.dest?.equals(big))
  const e = h.done.get(3n)
  assert.ok(e instanceof NbdServerError)
  assert.equal(e.errno, 5)
  assert.match(e.message, /media error/)
  assert.equal(h.done.get(4n), undefined)
  assert.deepEqual(h.reqs.get(5n)?.status.get(1), [
    { length: 65536, flags: 0 },
    { length: 2 << 20, flags: 3 },
  ])
  assert.deepEqual(h.reqs.get(5n)?.status.get(2), [{ length: 1 << 20, flags: 1 }])
  assert.ok(h.rx.idle)
}

describe('nbd/receiver', () => {
  it('completes interleaved structured replies fed in one piece', () => {
    const h = harness(requests())
    h.rx.push(stream)
    checkOutcome(h)
  })

  it('gives the same result for the stream split at every byte offset', () => {
    for (
      let cut = 0;
      cut <= stream.length;
      cut += cut < 2000 || cut > stream.length - 2000 ? 1 : 97
    ) {
      const h = harness(requests())
      h.rx.push(stream.subarray(0, cut))
      h.rx.push(stream.subarray(cut))
      checkOutcome(h)
    }
  })

  it('gives the same result fed one byte at a time', () => {
    const h = harness(requests())
    for (let i = 0; i < stream.length; i++) h.rx.push(stream.subarray(i, i + 1))
    checkOutcome(h)
  })

  it('receives large payloads into lent destination slices (zero-copy reads)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 70000 }), { minLength: 1 }), (sizes) => {
        const h = harness(requests())
        const scratch = Buffer.alloc(4096)
        let lent = 0
        for (let i = 0, k = 0; i < stream.length; k++) {
          const buf = h.rx.readBuffer(scratch)
          if (buf !== scratch) lent++
          const n = Math.min(buf.length, stream.length - i, sizes[k % sizes.length] ?? 1)
          stream.copy(buf, 0, i, i + n)
          h.rx.received(n, buf)
          i += n
        }
        checkOutcome(h)
        assert.ok(lent > 0)
      }),
      { numRuns: 50 },
    )
  })

  it('copies simple READ replies into the destination', () => {
    const r = inFlight(7n, NBD_CMD.READ, 0, 1000, { dest: Buffer.alloc(1000) })
    const h = harness([r, inFlight(8n, NBD_CMD.FLUSH, 0, 0)], { structured: false })
    h.rx.push(Buffer.concat([encodeSimpleReply(8n, 0), encodeSimpleReply(7n, 0, pattern(1000, 4))]))
    assert.deepEqual([...h.done.keys()], [8n, 7n])
    assert.ok(r.dest?.equals(pattern(1000, 4)))
  })

  it('fails a request on a simple error reply and keeps going for non-READs', () => {
    const h = harness([inFlight(1n, NBD_CMD.WRITE, 0, 512), inFlight(2n, NBD_CMD.TRIM, 0, 512)])
    h.rx.push(Buffer.concat([encodeSimpleReply(1n, 28), encodeSimpleReply(2n, 0)]))
    assert.equal(h.done.get(1n)?.errno, 28)
    assert.equal(h.done.get(2n), undefined)
  })

  it('fails the connection on a simple READ error (cannot resynchronise)', () => {
    const r = inFlight(1n, NBD_CMD.READ, 0, 512, { dest: Buffer.alloc(512) })
    const h = harness([r], { structured: false })
    assert.throws(
      () => {
        h.rx.push(encodeSimpleReply(1n, 5))
      },
      (e) => isBackupError(e, 'NBD_CLOSED') && e.cause instanceof NbdServerError,
    )
    assert.equal(h.done.get(1n)?.errno, 5)
  })

  const violations: [string, InFlight[], Buffer, { structured?: boolean }?][] = [
    ['unknown cookie', [], encodeSimpleReply(99n, 0)],
    ['bad magic', [], Buffer.alloc(20, 0x55)],
    [
      'chunk outside the request',
      [inFlight(1n, NBD_CMD.READ, 4096, 512, { dest: Buffer.alloc(512) })],
      encodeOffsetData(1n, 4096 + 256, Buffer.alloc(512)),
    ],
    [
      'hole outside the request',
      [inFlight(1n, NBD_CMD.READ, 4096, 512, { dest: Buffer.alloc(512) })],
      encodeOffsetHole(1n, 0, 512),
    ],
    [
      'overlapping chunks',
      [inFlight(1n, NBD_CMD.READ, 0, 1024, { dest: Buffer.alloc(1024) })],
      Buffer.concat([
        encodeOffsetData(1n, 0, Buffer.alloc(600)),
        encodeOffsetHole(1n, 512, 512, DONE),
      ]),
    ],
    [
      'data longer than the request',
      [inFlight(1n, NBD_CMD.READ, 0, 512, { dest: Buffer.alloc(512) })],
      encodeOffsetData(1n, 0, Buffer.alloc(1024)),
    ],
    [
      'success without all the data',
      [inFlight(1n, NBD_CMD.READ, 0, 1024, { dest: Buffer.alloc(1024) })],
      encodeOffsetData(1n, 0, Buffer.alloc(512), DONE),
    ],
    [
      'structured reply that was not negotiated',
      [inFlight(1n, NBD_CMD.WRITE, 0, 512)],
      encodeNoneChunk(1n),
      { structured: false },
    ],
    [
      'simple reply to a READ after structured replies',
      [inFlight(1n, NBD_CMD.READ, 0, 512, { dest: Buffer.alloc(512) })],
      encodeSimpleReply(1n, 0, Buffer.alloc(512)),
    ],
    [
      'data chunk for a WRITE',
      [inFlight(1n, NBD_CMD.WRITE, 0, 512)],
      encodeOffsetData(1n, 0, Buffer.alloc(512)),
    ],
    [
      'block status for an unknown context',
      [inFlight(1n, NBD_CMD.BLOCK_STATUS, 0, 512)],
      encodeBlockStatus(1n, 9, [{ length: 512, flags: 0 }]),
    ],
    [
      'block status missing a context',
      [inFlight(1n, NBD_CMD.BLOCK_STATUS, 0, 512)],
      encodeBlockStatus(1n, 1, [{ length: 512, flags: 0 }], DONE),
    ],
    [
      'REQ_ONE answered with two extents',
      [inFlight(1n, NBD_CMD.BLOCK_STATUS, 0, 4096, { reqOne: true })],
      encodeBlockStatus(1n, 1, [
        { length: 512, flags: 0 },
        { length: 512, flags: 1 },
      ]),
    ],
    [
      'extents past the request before the last one',
      [inFlight(1n, NBD_CMD.BLOCK_STATUS, 0, 512)],
      encodeBlockStatus(1n, 1, [
        { length: 512, flags: 0 },
        { length: 512, flags: 1 },
      ]),
    ],
    [
      'NONE without DONE',
      [inFlight(1n, NBD_CMD.WRITE, 0, 512)],
      encodeChunk(0, 0, 1n, Buffer.alloc(0)),
    ],
    [
      'unknown chunk type',
      [inFlight(1n, NBD_CMD.WRITE, 0, 512)],
      encodeChunk(0, 77, 1n, Buffer.alloc(4)),
    ],
  ]
  for (const [name, reqs, bytes, opts] of violations) {
    it(`rejects ${name} as NBD_PROTOCOL`, () => {
      assert.throws(() => {
        harness(reqs, opts).rx.push(bytes)
      }, isProtocolError)
    })
  }

  it('treats unknown error chunk types as errors of that request', () => {
    const h = harness([inFlight(1n, NBD_CMD.WRITE, 0, 512)])
    const p = Buffer.from([0, 0, 0, 22, 0, 2, 0x68, 0x69, 9, 9])
    h.rx.push(encodeChunk(DONE, 0x8000 + 50, 1n, p))
    assert.equal(h.done.get(1n)?.errno, 22)
  })

  it('only ever throws BackupError on random input', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 48 }), { maxLength: 6 }),
        fc.boolean(),
        (chunks, st) => {
          const h = harness(requests(), { structured: st })
          try {
            for (const c of chunks) h.rx.push(Buffer.from(c))
          } catch (e) {
            if (!(e instanceof BackupError)) throw e
          }
        },
      ),
      { numRuns: 3000 },
    )
  })

  it('only ever throws BackupError on mutated valid streams', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 3,
        }),
        (edits) => {
          const b = Buffer.from(stream)
          for (const [at, v] of edits) b[at % 4096] = v
          try {
            harness(requests()).rx.push(b)
          } catch (e) {
            if (!(e instanceof BackupError)) throw e
          }
        },
      ),
      { numRuns: 2000 },
    )
  })
})
