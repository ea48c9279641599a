import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { BackupError, isBackupError } from '../../src/errors.ts'
import {
  NBD_FLAG_HS,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG,
  NBD_REPLY_TYPE,
} from '../../src/nbd/constants.ts'
import { FrameQueue, FrameReader } from '../../src/nbd/frame-queue.ts'
import {
  checkChunkLength,
  decodeBlockStatus,
  decodeDataOffset,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeReplyHeader,
  replyHeaderLength,
} from '../../src/nbd/wire-transmission.ts'
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeOptionReply,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
} from '../../src/nbd/wire.ts'
import type { OptionReply } from '../../src/nbd/wire.ts'
import {
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContext,
  encodeOffsetData,
  encodeOffsetHole,
  encodeOptionReply,
  encodeRequest,
  encodeSimpleReply,
} from '../helpers/nbd-server-wire.ts'

const isProtocolError = (e: unknown): boolean => isBackupError(e, 'NBD_PROTOCOL')

const u16 = fc.integer({ min: 0, max: 0xffff })
const u32 = fc.integer({ min: 0, max: 0xffffffff })
const u64safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })
const cookie = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
/** NBD strings: UTF-8 without NUL, at most 4096 bytes. */
const nbdString = fc
  .string({ unit: 'grapheme', maxLength: 64 })
  .filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= 4096)

/** Split an option reply into header and payload and decode both. */
const decodeWholeOptionReply = (b: Buffer): { option: number; reply: OptionReply } => {
  const h = decodeOptionReplyHeader(b.subarray(0, 20))
  return { option: h.option, reply: decodeOptionReply(h, b.subarray(20)) }
}

describe('nbd/wire handshake messages', () => {
  it('round-trips the greeting and the client flags', () => {
    fc.assert(
      fc.property(u16, u32, (hs, cf) => {
        assert.deepEqual(decodeGreeting(encodeGreeting(hs)), { handshakeFlags: hs })
        assert.equal(decodeClientFlags(encodeClientFlags(cf)), cf)
      }),
    )
  })

  it('rejects oldstyle servers as NBD_UNSUPPORTED and bad magics as NBD_PROTOCOL', () => {
    const old = Buffer.alloc(18)
    old.writeBigUInt64BE(0x4e42444d41474943n, 0)
    old.writeBigUInt64BE(0x00420281861253n, 8)
    assert.throws(
      () => decodeGreeting(old),
      (e) => isBackupError(e, 'NBD_UNSUPPORTED'),
    )
    const bad = encodeGreeting(NBD_FLAG_HS.FIXED_NEWSTYLE)
    bad.writeUInt8(bad.readUInt8(3) ^ 1, 3)
    assert.throws(() => decodeGreeting(bad), isProtocolError)
  })

  it('round-trips option requests with their data', () => {
    fc.assert(
      fc.property(u32, fc.uint8Array({ maxLength: 300 }), (opt, data) => {
        const b = encodeOption(opt, Buffer.from(data))
        assert.deepEqual(decodeOptionHeader(b), { option: opt, length: data.length })
        assert.deepEqual(new Uint8Array(b.subarray(16)), data)
      }),
    )
  })

  it('round-trips NBD_OPT_GO/INFO and META_CONTEXT option data', () => {
    fc.assert(
      fc.property(nbdString, fc.array(u16, { maxLength: 8 }), (name, infos) => {
        assert.deepEqual(decodeInfoRequest(encodeInfoRequest(name, infos)), {
          exportName: name,
          infos,
        })
      }),
    )
    fc.assert(
      fc.property(nbdString, fc.array(nbdString, { maxLength: 5 }), (name, queries) => {
        assert.deepEqual(decodeMetaContextRequest(encodeMetaContextRequest(name, queries)), {
          exportName: name,
          queries,
        })
      }),
    )
  })

  it('refuses to encode strings longer than 4096 bytes', () => {
    assert.throws(
      () => encodeInfoRequest('x'.repeat(4097), []),
      (e) => isBackupError(e, 'USAGE'),
    )
  })

  it('round-trips option replies: ACK, INFO, META_CONTEXT, errors', () => {
    fc.assert(
      fc.property(u32, u64safe, u16, nbdString, u32, (opt, size, flags, name, id) => {
        const ack = decodeWholeOptionReply(encodeOptionReply(opt, NBD_REP.ACK))
        assert.deepEqual(ack, { option: opt, reply: { kind: 'ack' } })
        const info = decodeWholeOptionReply(
          encodeOptionReply(opt, NBD_REP.INFO, encodeInfoExport(size, flags)),
        )
        assert.deepEqual(info.reply, { kind: 'info', info: { type: 'export', size, flags } })
        const ctx = decodeWholeOptionReply(
          encodeOptionReply(opt, NBD_REP.META_CONTEXT, encodeMetaContext(id, name)),
        )
        assert.deepEqual(ctx.reply, { kind: 'meta-context', id, name })
        const err = decodeWholeOptionReply(
          encodeOptionReply(opt, NBD_REP.ERR_UNKNOWN, Buffer.from(name)),
        )
        assert.deepEqual(err.reply, { kind: 'error', type: NBD_REP.ERR_UNKNOWN, message: name })
      }),
    )
    fc.assert(
      fc.property(u32, u32, u32, (min, pref, max) => {
        const r = decodeWholeOptionReply(
          encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, encodeInfoBlockSize(min, pref, max)),
        )
        assert.deepEqual(r.reply, {
          kind: 'info',
          info: { type: 'block-size', minimum: min, preferred: pref, maximum: max },
        })
      }),
    )
  })

  it('ignores unknown info types and reply types without failing', () => {
    const p = Buffer.from([0, 99, 1, 2, 3])
    const r = decodeWholeOptionReply(encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, p))
    assert.deepEqual(r.reply, { kind: 'info', info: { type: 'unknown', infoType: 99 } })
    const u = decodeWholeOptionReply(encodeOptionReply(NBD_OPT.GO, 77, p))
    assert.deepEqual(u.reply, { kind: 'unknown', type: 77 })
  })

  it('bounds option reply lengths before allocation', () => {
    const h = encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO).subarray(0, 20)
    h.writeUInt32BE(0xffffffff, 16)
    assert.throws(() => decodeOptionReplyHeader(h), isProtocolError)
    const info = encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, Buffer.from([0, NBD_INFO.EXPORT]))
    assert.throws(() => decodeWholeOptionReply(info), isProtocolError)
  })

  it('round-trips the NBD_OPT_EXPORT_NAME reply', () => {
    fc.assert(
      fc.property(u64safe, u16, fc.boolean(), (size, flags, zeroes) => {
        const b = encodeExportNameReply(size, flags, zeroes)
        assert.equal(b.length, zeroes ? 134 : 10)
        assert.deepEqual(decodeExportNameReply(b), { size, flags })
      }),
    )
  })
})

describe('nbd/wire transmission messages', () => {
  it('round-trips request headers', () => {
    fc.assert(
      fc.property(u16, u16, cookie, u64safe, u32, (flags, type, c, offset, length) => {
        const r = { flags, type, cookie: c, offset, length }
        assert.deepEqual(decodeRequest(encodeRequest(r)), r)
      }),
    )
  })

  it('round-trips simple reply and chunk headers', () => {
    fc.assert(
      fc.property(cookie, u32, u16, u16, fc.uint8Array({ maxLength: 64 }), (c, err, fl, ty, p) => {
        const s = encodeSimpleReply(c, err)
        assert.equal(replyHeaderLength(s), 16)
        assert.deepEqual(decodeReplyHeader(s), { kind: 'simple', error: err, cookie: c })
        const ch = encodeChunk(fl, ty, c, Buffer.from(p))
        assert.equal(replyHeaderLength(ch), 20)
        assert.deepEqual(decodeReplyHeader(ch), {
          kind: 'structured',
          flags: fl,
          type: ty,
          cookie: c,
          length: p.length,
        })
      }),
    )
  })

  it('round-trips OFFSET_DATA, OFFSET_HOLE, BLOCK_STATUS and error payloads', () => {
    const desc = fc
      .tuple(fc.integer({ min: 1, max: 0xffffffff }), u32)
      .map(([length, flags]) => ({ length, flags }))
    fc.assert(
      fc.property(
        cookie,
        u64safe,
        fc.integer({ min: 1, max: 0xffffffff }),
        u32,
        fc.array(desc, { minLength: 1, maxLength: 20 }),
        fc.integer({ min: 1, max: 0xffffffff }),
        nbdString,
        (c, off, holeLen, ctx, descriptors, errno, msg) => {
          const data = encodeOffsetData(c, off, Buffer.from('abc'))
          assert.equal(decodeDataOffset(data, 20), off)
          assert.equal(data.subarray(28).toString(), 'abc')
          const hole = encodeOffsetHole(c, off, holeLen)
          assert.deepEqual(decodeOffsetHole(hole.subarray(20)), { offset: off, length: holeLen })
          const bs = encodeBlockStatus(c, ctx, descriptors)
          assert.deepEqual(decodeBlockStatus(bs.subarray(20)), { contextId: ctx, descriptors })
          const e1 = encodeErrorChunk(c, errno, msg)
          const h1 = decodeReplyHeader(e1)
          assert.ok(h1.kind === 'structured' && h1.type === NBD_REPLY_TYPE.ERROR)
          assert.equal(h1.flags, NBD_REPLY_FLAG.DONE)
          assert.deepEqual(decodeErrorChunk(h1.type, e1.subarray(20)), {
            errno,
            message: msg,
            offset: undefined,
          })
          const e2 = encodeErrorChunk(c, errno, msg, { offset: off, flags: 0 })
          assert.deepEqual(decodeErrorChunk(NBD_REPLY_TYPE.ERROR_OFFSET, e2.subarray(20)), {
            errno,
            message: msg,
            offset: off,
          })
        },
      ),
    )
  })

  it('bounds chunk lengths by type before allocation', () => {
    const ok: [number, number][] = [
      [NBD_REPLY_TYPE.NONE, 0],
      [NBD_REPLY_TYPE.OFFSET_DATA, 9],
      [NBD_REPLY_TYPE.OFFSET_HOLE, 12],
      [NBD_REPLY_TYPE.BLOCK_STATUS, 12],
      [NBD_REPLY_TYPE.ERROR, 6],
      [NBD_REPLY_TYPE.ERROR_OFFSET, 14 + 4096],
      [0x8000 + 77, 100],
    ]
    for (const [t, n] of ok) checkChunkLength(t, n)
    const bad: [number, number][] = [
      [NBD_REPLY_TYPE.NONE, 1],
      [NBD_REPLY_TYPE.OFFSET_DATA, 8],
      [NBD_REPLY_TYPE.OFFSET_HOLE, 13],
      [NBD_REPLY_TYPE.BLOCK_STATUS, 16],
      [NBD_REPLY_TYPE.BLOCK_STATUS, 0xfffffffc],
      [NBD_REPLY_TYPE.ERROR, 6 + 4097],
      [NBD_REPLY_TYPE.ERROR_OFFSET, 13],
      [77, 0],
      [0x8000 + 77, 0xffffffff],
    ]
    for (const [t, n] of bad)
      assert.throws(() => {
        checkChunkLength(t, n)
      }, isProtocolError)
  })

  it('rejects zero-length holes and extents, errno 0 and overlong messages', () => {
    const hole = encodeOffsetHole(1n, 0, 1).subarray(20)
    hole.writeUInt32BE(0, 8)
    assert.throws(() => decodeOffsetHole(hole), isProtocolError)
    const bs = encodeBlockStatus(1n, 1, [{ length: 1, flags: 0 }]).subarray(20)
    bs.writeUInt32BE(0, 4)
    assert.throws(() => decodeBlockStatus(bs), isProtocolError)
    const e = encodeErrorChunk(1n, 5, 'x').subarray(20)
    e.writeUInt32BE(0, 0)
    assert.throws(() => decodeErrorChunk(NBD_REPLY_TYPE.ERROR, e), isProtocolError)
    const m = encodeErrorChunk(1n, 5, 'x').subarray(20)
    m.writeUInt16BE(2, 4)
    assert.throws(() => decodeErrorChunk(NBD_REPLY_TYPE.ERROR, m), isProtocolError)
  })

  it('rejects 64-bit values beyond 2^53', () => {
    const r = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 0 })
    r.writeUInt32BE(0xffffffff, 16)
    assert.throws(() => decodeRequest(r), isProtocolError)
  })
})

describe('nbd/wire incremental decoding', () => {
  const replies = Buffer.concat([
    encodeOptionReply(NBD_OPT.SET_META_CONTEXT, NBD_REP.META_CONTEXT, encodeMetaContext(1, 'a:b')),
    encodeOptionReply(NBD_OPT.SET_META_CONTEXT, NBD_REP.ACK),
    encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, encodeInfoExport(1 << 20, 1)),
    encodeOptionReply(NBD_OPT.GO, NBD_REP.ERR_POLICY, Buffer.from('no')),
  ])
  const expected = [
    { kind: 'meta-context', id: 1, name: 'a:b' },
    { kind: 'ack' },
    { kind: 'info', info: { type: 'export', size: 1 << 20, flags: 1 } },
    { kind: 'error', type: NBD_REP.ERR_POLICY, message: 'no' },
  ]

  /** Decode whole option replies out of a queue, leaving partial ones queued. */
  const drainReplies = (
    q: FrameQueue,
    out: OptionReply[],
    state: { h?: Buffer | undefined },
  ): void => {
    for (;;) {
      state.h ??= q.take(20)
      if (!state.h) return
      const h = decodeOptionReplyHeader(state.h)
      const p = q.take(h.length)
      if (!p) return
      out.push(decodeOptionReply(h, p))
      state.h = undefined
    }
  }

  it('decodes option replies split at every byte offset', () => {
    for (let cut = 0; cut <= replies.length; cut++) {
      const q = new FrameQueue()
      const out: OptionReply[] = []
      const st = {}
      q.push(replies.subarray(0, cut))
      drainReplies(q, out, st)
      q.push(replies.subarray(cut))
      drainReplies(q, out, st)
      assert.deepEqual(out, expected, `cut at ${cut}`)
    }
  })

  it('decodes option replies fed one byte at a time', () => {
    const q = new FrameQueue()
    const out: OptionReply[] = []
    const st = {}
    for (let i = 0; i < replies.length; i++) {
      q.push(replies.subarray(i, i + 1))
      drainReplies(q, out, st)
    }
    assert.deepEqual(out, expected)
    assert.equal(q.length, 0)
  })

  it('FrameQueue takes exact frames across arbitrary chunking', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 200 }),
        fc.array(fc.integer({ min: 0, max: 200 }), { maxLength: 10 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 20 }),
        (bytes, cuts, takes) => {
          const q = new FrameQueue()
          let prev = 0
          for (const c of [...cuts].sort((a, b) => a - b).filter((c) => c <= bytes.length)) {
            q.push(Buffer.from(bytes.subarray(prev, c)))
            prev = c
          }
          q.push(Buffer.from(bytes.subarray(prev)))
          const got: number[] = []
          for (const n of takes) {
            const b = q.take(n)
            if (b === undefined) {
              assert.ok(q.length < n)
              break
            }
            got.push(...b)
          }
          assert.deepEqual(got, [...bytes.subarray(0, got.length)])
          assert.equal(q.length, bytes.length - got.length)
        },
      ),
    )
  })

  it('FrameReader resolves reads as bytes arrive and fails them on end', async () => {
    const r = new FrameReader()
    const p = r.read(5)
    r.push(Buffer.from('ab'))
    r.push(Buffer.from('cdefg'))
    assert.equal((await p).toString(), 'abcde')
    assert.equal((await r.read(2)).toString(), 'fg')
    const q = r.read(1)
    r.end(new BackupError('NBD_CLOSED', 'gone'))
    await assert.rejects(q, (e) => isBackupError(e, 'NBD_CLOSED'))
    await assert.rejects(r.read(1), (e) => isBackupError(e, 'NBD_CLOSED'))
  })
})

describe('nbd/wire on garbage', () => {
  const onlyBackupErrors = (f: (b: Buffer) => unknown) => (bytes: Uint8Array) => {
    try {
      f(Buffer.from(bytes))
    } catch (e) {
      if (!(e instanceof BackupError)) throw e
    }
  }
  const decoders: [string, (b: Buffer) => unknown][] = [
    ['greeting', decodeGreeting],
    ['client flags', decodeClientFlags],
    ['option header', (b) => decodeOptionHeader(b)],
    ['info request', decodeInfoRequest],
    ['meta context request', decodeMetaContextRequest],
    ['option reply', decodeWholeOptionReply],
    [
      'option reply payload',
      (b) => decodeOptionReply({ option: 7, type: b[0] ?? 0, length: b.length - 1 }, b.subarray(1)),
    ],
    ['export name reply', decodeExportNameReply],
    ['request', (b) => decodeRequest(b)],
    ['reply header', (b) => decodeReplyHeader(b)],
    ['data offset', (b) => decodeDataOffset(b)],
    ['hole', decodeOffsetHole],
    ['block status', decodeBlockStatus],
    ['error chunk', (b) => decodeErrorChunk(0x8000 | (b[0] ?? 0), b.subarray(1))],
    [
      'chunk length',
      (b) => {
        checkChunkLength(b.length > 1 ? b.readUInt16BE(0) : 0, b.length)
      },
    ],
  ]
  for (const [name, f] of decoders) {
    it(`${name}: random bytes only ever throw BackupError`, () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), onlyBackupErrors(f)), {
        numRuns: 2000,
      })
    })
  }

  it('mutated valid messages only ever throw BackupError', () => {
    const valid = [
      encodeGreeting(3),
      encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, encodeInfoBlockSize(1, 4096, 1 << 25)),
      encodeOptionReply(NBD_OPT.LIST, NBD_REP.SERVER, Buffer.from('\0\0\0\x03abcdesc')),
      encodeBlockStatus(9n, 1, [{ length: 512, flags: 3 }]),
      encodeErrorChunk(9n, 5, 'bad', { offset: 4 }),
    ]
    fc.assert(
      fc.property(
        fc.constantFrom(...valid),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        (msg, edits) => {
          const b = Buffer.from(msg)
          for (const [at, v] of edits) b[at % b.length] = v
          for (const [, f] of decoders) onlyBackupErrors(f)(b)
          onlyBackupErrors((x) => decodeBlockStatus(x.subarray(20)))(b)
          onlyBackupErrors((x) => decodeErrorChunk(NBD_REPLY_TYPE.ERROR_OFFSET, x.subarray(20)))(b)
        },
      ),
      { numRuns: 2000 },
    )
  })
})
