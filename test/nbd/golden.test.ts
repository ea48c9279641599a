/**
 * Golden byte vectors for the NBD handshake, written out by hand from the message layouts of the
 * NBD protocol specification (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md),
 * not produced by any encoder of ours. All integers are big-endian ("network byte order",
 * proto.md §Conventions). Each vector is checked in the direction the client uses it (encode →
 * bytes for what it sends, bytes → value for what it reads), and then against the test fake's
 * server half so that both ends of the component tests speak the spec's bytes. The transmission
 * phase is in `golden-transmission.test.ts`.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { isBackupError } from '../../src/errors.ts'
import {
  NBD_FLAG,
  NBD_FLAG_C,
  NBD_FLAG_HS,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
} from '../../src/nbd/constants.ts'
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
import { hex } from '../helpers/hex.ts'
import {
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContext,
  encodeOptionReply,
} from '../helpers/nbd-server-wire.ts'

/** Decode a whole option reply (20-byte header, then payload) as the handshake does. */
const decodeWholeOptionReply = (b: Buffer): { option: number; reply: OptionReply } => {
  const h = decodeOptionReplyHeader(b.subarray(0, 20))
  assert.equal(h.length, b.length - 20)
  return { option: h.option, reply: decodeOptionReply(h, b.subarray(20)) }
}

// UTF-8 of the strings used below, spelled out once.
const VDA = '766461' // "vda"
const BASE_ALLOCATION = '626173653a616c6c6f636174696f6e' // "base:allocation", 15 bytes

// ------------------------------------------------------------ proto.md §"Newstyle negotiation"

const GREETING = hex(
  '4e42444d41474943', // 64 bits, NBDMAGIC (INIT_PASSWD)
  '49484156454f5054', // 64 bits, IHAVEOPT
  '0003', // 16 bits, handshake flags: FIXED_NEWSTYLE (bit 0) | NO_ZEROES (bit 1)
)

const OLDSTYLE_GREETING = hex(
  '4e42444d41474943', // 64 bits, NBDMAGIC
  '0000420281861253', // 64 bits, cliserv_magic (proto.md §"Oldstyle negotiation")
)

const CLIENT_FLAGS = hex(
  '00000003', // 32 bits, client flags: C_FIXED_NEWSTYLE (bit 0) | C_NO_ZEROES (bit 1)
)

// NBD_OPT_GO (7), proto.md §"Option types": name length, name, info count, info types.
const OPT_GO_INFO_EXPORT = hex(
  '49484156454f5054', // 64 bits, IHAVEOPT
  '00000007', // 32 bits, option NBD_OPT_GO
  '0000000b', // 32 bits, option data length 11
  '00000003', // 32 bits, export name length 3
  VDA, // export name "vda"
  '0001', // 16 bits, number of information requests
  '0000', // 16 bits, NBD_INFO_EXPORT
)

// What the client actually sends: NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE.
const OPT_GO_BLOCK_SIZE = hex(
  '49484156454f5054', // IHAVEOPT
  '00000007', // NBD_OPT_GO
  '0000000b', // data length 11
  '00000003', // name length 3
  VDA, // "vda"
  '0001', // one information request
  '0003', // NBD_INFO_BLOCK_SIZE
)

// NBD_OPT_SET_META_CONTEXT (10): name length, name, query count, (query length, query) × n.
const OPT_SET_META_CONTEXT = hex(
  '49484156454f5054', // IHAVEOPT
  '0000000a', // NBD_OPT_SET_META_CONTEXT
  '0000001e', // data length 30 = 4 + 3 + 4 + 4 + 15
  '00000003', // export name length 3
  VDA, // "vda"
  '00000001', // number of queries
  '0000000f', // query length 15
  BASE_ALLOCATION, // "base:allocation"
)

const OPT_STRUCTURED_REPLY = hex(
  '49484156454f5054', // IHAVEOPT
  '00000008', // NBD_OPT_STRUCTURED_REPLY
  '00000000', // no data
)

const OPT_EXPORT_NAME = hex(
  '49484156454f5054', // IHAVEOPT
  '00000001', // NBD_OPT_EXPORT_NAME
  '00000003', // data length 3: the bare name, no length prefix
  VDA, // "vda"
)

describe('nbd golden vectors: newstyle negotiation (proto.md §Handshake)', () => {
  it('decodes the newstyle greeting, whose magics are ASCII NBDMAGIC and IHAVEOPT', () => {
    assert.equal(GREETING.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT')
    assert.deepEqual(decodeGreeting(GREETING), {
      handshakeFlags: NBD_FLAG_HS.FIXED_NEWSTYLE | NBD_FLAG_HS.NO_ZEROES,
    })
    assert.deepEqual(encodeGreeting(NBD_FLAG_HS.FIXED_NEWSTYLE | NBD_FLAG_HS.NO_ZEROES), GREETING)
  })

  it('reports an oldstyle greeting as NBD_UNSUPPORTED', () => {
    const b = Buffer.concat([OLDSTYLE_GREETING, hex('0000')])
    assert.throws(
      () => decodeGreeting(b),
      (e) => isBackupError(e, 'NBD_UNSUPPORTED'),
    )
  })

  it('encodes the client flags', () => {
    const flags = NBD_FLAG_C.FIXED_NEWSTYLE | NBD_FLAG_C.NO_ZEROES
    assert.deepEqual(encodeClientFlags(flags), CLIENT_FLAGS)
    assert.equal(decodeClientFlags(CLIENT_FLAGS), flags)
  })

  it('encodes NBD_OPT_GO with an NBD_INFO_EXPORT and an NBD_INFO_BLOCK_SIZE request', () => {
    assert.deepEqual(
      encodeOption(NBD_OPT.GO, encodeInfoRequest('vda', [NBD_INFO.EXPORT])),
      OPT_GO_INFO_EXPORT,
    )
    assert.deepEqual(
      encodeOption(NBD_OPT.GO, encodeInfoRequest('vda', [NBD_INFO.BLOCK_SIZE])),
      OPT_GO_BLOCK_SIZE,
    )
    assert.deepEqual(decodeOptionHeader(OPT_GO_INFO_EXPORT), { option: NBD_OPT.GO, length: 11 })
    assert.deepEqual(decodeInfoRequest(OPT_GO_INFO_EXPORT.subarray(16)), {
      exportName: 'vda',
      infos: [NBD_INFO.EXPORT],
    })
  })

  it('encodes NBD_OPT_SET_META_CONTEXT for base:allocation', () => {
    const data = encodeMetaContextRequest('vda', ['base:allocation'])
    assert.deepEqual(encodeOption(NBD_OPT.SET_META_CONTEXT, data), OPT_SET_META_CONTEXT)
    assert.deepEqual(decodeMetaContextRequest(OPT_SET_META_CONTEXT.subarray(16)), {
      exportName: 'vda',
      queries: ['base:allocation'],
    })
  })

  it('encodes data-less and bare-name options', () => {
    assert.deepEqual(encodeOption(NBD_OPT.STRUCTURED_REPLY), OPT_STRUCTURED_REPLY)
    assert.deepEqual(encodeOption(NBD_OPT.EXPORT_NAME, Buffer.from('vda')), OPT_EXPORT_NAME)
  })
})

// ---------------------------------------------------------- proto.md §"Fixed newstyle negotiation"

const REP_INFO_EXPORT = hex(
  '0003e889045565a9', // 64 bits, option reply magic
  '00000007', // 32 bits, option NBD_OPT_GO
  '00000003', // 32 bits, reply type NBD_REP_INFO
  '0000000c', // 32 bits, reply length 12
  '0000', // 16 bits, NBD_INFO_EXPORT
  '0000000500000000', // 64 bits, export size 5 × 2^32 = 20 GiB
  '000d', // 16 bits, transmission flags HAS_FLAGS | SEND_FLUSH | SEND_FUA
)

const REP_INFO_BLOCK_SIZE = hex(
  '0003e889045565a9', // option reply magic
  '00000007', // NBD_OPT_GO
  '00000003', // NBD_REP_INFO
  '0000000e', // reply length 14
  '0003', // NBD_INFO_BLOCK_SIZE
  '00000001', // 32 bits, minimum block size 1
  '00001000', // 32 bits, preferred block size 4096
  '02000000', // 32 bits, maximum payload size 32 MiB
)

const REP_META_CONTEXT = hex(
  '0003e889045565a9', // option reply magic
  '0000000a', // NBD_OPT_SET_META_CONTEXT
  '00000004', // NBD_REP_META_CONTEXT
  '00000013', // reply length 19 = 4 + 15
  '00000001', // 32 bits, metadata context id 1
  BASE_ALLOCATION, // context name, the rest of the reply
)

const REP_ACK = hex(
  '0003e889045565a9', // option reply magic
  '00000007', // NBD_OPT_GO
  '00000001', // NBD_REP_ACK
  '00000000', // no data
)

const REP_ERR_UNKNOWN = hex(
  '0003e889045565a9', // option reply magic
  '00000007', // NBD_OPT_GO
  '80000006', // NBD_REP_ERR_UNKNOWN (2^31 + 6)
  '00000003', // reply length 3: an error message string
  VDA, // message "vda"
)

// Reply to NBD_OPT_EXPORT_NAME when both sides set NO_ZEROES: size and flags only.
const EXPORT_NAME_REPLY = hex(
  '0000000500000000', // 64 bits, export size 20 GiB
  '000d', // 16 bits, transmission flags
)

describe('nbd golden vectors: option replies (proto.md §"Option reply types")', () => {
  it('decodes NBD_REP_INFO with NBD_INFO_EXPORT, a size above 2^32', () => {
    const flags = NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA
    assert.deepEqual(decodeWholeOptionReply(REP_INFO_EXPORT), {
      option: NBD_OPT.GO,
      reply: { kind: 'info', info: { type: 'export', size: 5 * 2 ** 32, flags } },
    })
    const payload = encodeInfoExport(5 * 2 ** 32, flags)
    assert.deepEqual(encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, payload), REP_INFO_EXPORT)
  })

  it('decodes NBD_REP_INFO with NBD_INFO_BLOCK_SIZE', () => {
    assert.deepEqual(decodeWholeOptionReply(REP_INFO_BLOCK_SIZE).reply, {
      kind: 'info',
      info: { type: 'block-size', minimum: 1, preferred: 4096, maximum: 32 << 20 },
    })
    const payload = encodeInfoBlockSize(1, 4096, 32 << 20)
    assert.deepEqual(encodeOptionReply(NBD_OPT.GO, NBD_REP.INFO, payload), REP_INFO_BLOCK_SIZE)
  })

  it('decodes NBD_REP_META_CONTEXT', () => {
    assert.deepEqual(decodeWholeOptionReply(REP_META_CONTEXT), {
      option: NBD_OPT.SET_META_CONTEXT,
      reply: { kind: 'meta-context', id: 1, name: 'base:allocation' },
    })
    const payload = encodeMetaContext(1, 'base:allocation')
    assert.deepEqual(
      encodeOptionReply(NBD_OPT.SET_META_CONTEXT, NBD_REP.META_CONTEXT, payload),
      REP_META_CONTEXT,
    )
  })

  it('decodes NBD_REP_ACK and an error reply with its message', () => {
    assert.deepEqual(decodeWholeOptionReply(REP_ACK).reply, { kind: 'ack' })
    assert.deepEqual(decodeWholeOptionReply(REP_ERR_UNKNOWN).reply, {
      kind: 'error',
      type: NBD_REP.ERR_UNKNOWN,
      message: 'vda',
    })
    assert.deepEqual(encodeOptionReply(NBD_OPT.GO, NBD_REP.ACK), REP_ACK)
  })

  it('decodes the NBD_OPT_EXPORT_NAME reply', () => {
    assert.deepEqual(decodeExportNameReply(EXPORT_NAME_REPLY), { size: 5 * 2 ** 32, flags: 13 })
    assert.deepEqual(encodeExportNameReply(5 * 2 ** 32, 13, false), EXPORT_NAME_REPLY)
    const withZeroes = encodeExportNameReply(5 * 2 ** 32, 13, true)
    assert.deepEqual(withZeroes, Buffer.concat([EXPORT_NAME_REPLY, Buffer.alloc(124)]))
  })
})
