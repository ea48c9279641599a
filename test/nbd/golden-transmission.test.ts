/**
 * Golden byte vectors for the NBD transmission phase, written out by hand from the message
 * layouts of the NBD protocol specification
 * (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), not produced by any
 * encoder of ours. All integers are big-endian. The client encodes requests and decodes replies;
 * each vector is checked that way, and then against the test fake's server half. The handshake is
 * in `golden.test.ts`.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { NBD_CMD, NBD_CMD_FLAG, NBD_REPLY_FLAG, NBD_REPLY_TYPE } from '../../src/nbd/constants.ts'
import {
  decodeBlockStatus,
  decodeDataOffset,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeReplyHeader,
  replyHeaderLength,
  writeRequest,
} from '../../src/nbd/wire-transmission.ts'
import type { NbdRequest } from '../../src/nbd/wire-transmission.ts'
import { hex } from '../helpers/hex.ts'
import {
  decodeRequest,
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetData,
  encodeOffsetHole,
  encodeSimpleReply,
} from '../helpers/nbd-server-wire.ts'

/** Encode a request the way the connection does: in place, into a 28-byte header. */
const requestBytes = (r: NbdRequest): Buffer => {
  const b = Buffer.alloc(28)
  writeRequest(b, 0, r)
  return b
}

const IO_ERROR = '492f4f206572726f72' // "I/O error" in UTF-8, 9 bytes
const COOKIE = 0x0123456789abcdefn

// ------------------------------------------------------------------ proto.md §"Request message"

const READ_REQUEST = hex(
  '25609513', // 32 bits, NBD_REQUEST_MAGIC
  '0000', // 16 bits, command flags: none
  '0000', // 16 bits, type NBD_CMD_READ
  '0123456789abcdef', // 64 bits, cookie
  '0000000100000000', // 64 bits, offset 4 GiB
  '00010000', // 32 bits, length 64 KiB
)

const BLOCK_STATUS_REQUEST = hex(
  '25609513', // NBD_REQUEST_MAGIC
  '0008', // command flags: NBD_CMD_FLAG_REQ_ONE (bit 3)
  '0007', // type NBD_CMD_BLOCK_STATUS
  '0000000000000002', // cookie 2
  '0000000000000000', // offset 0
  '80000000', // length 2 GiB
)

const DISC_REQUEST = hex(
  '25609513', // NBD_REQUEST_MAGIC
  '0000', // no flags
  '0002', // type NBD_CMD_DISC
  '0000000000000000', // cookie 0
  '0000000000000000', // offset 0
  '00000000', // length 0
)

describe('nbd golden vectors: requests (proto.md §"Request message")', () => {
  const cases: [string, Buffer, NbdRequest][] = [
    [
      'NBD_CMD_READ',
      READ_REQUEST,
      { flags: 0, type: NBD_CMD.READ, cookie: COOKIE, offset: 2 ** 32, length: 65536 },
    ],
    [
      'NBD_CMD_BLOCK_STATUS with REQ_ONE',
      BLOCK_STATUS_REQUEST,
      {
        flags: NBD_CMD_FLAG.REQ_ONE,
        type: NBD_CMD.BLOCK_STATUS,
        cookie: 2n,
        offset: 0,
        length: 2 ** 31,
      },
    ],
    [
      'NBD_CMD_DISC',
      DISC_REQUEST,
      { flags: 0, type: NBD_CMD.DISC, cookie: 0n, offset: 0, length: 0 },
    ],
  ]
  for (const [name, bytes, req] of cases) {
    it(`encodes ${name}`, () => {
      assert.deepEqual(requestBytes(req), bytes)
      assert.deepEqual(decodeRequest(bytes), req)
    })
  }

  it('writes a request at an offset into a larger buffer', () => {
    const b = Buffer.alloc(3 + 28, 0xee)
    writeRequest(b, 3, { flags: 0, type: NBD_CMD.DISC, cookie: 0n, offset: 0, length: 0 })
    assert.deepEqual(b.subarray(3), DISC_REQUEST)
    assert.deepEqual(b.subarray(0, 3), hex('eeeeee'))
  })
})

// ------------------------------------------- proto.md §"Simple reply message" and §"Structured
// reply chunk message"; chunk payloads in §"Structured reply types".

const SIMPLE_REPLY_OK = hex(
  '67446698', // 32 bits, NBD_SIMPLE_REPLY_MAGIC
  '00000000', // 32 bits, error 0
  '0123456789abcdef', // 64 bits, cookie
)

const SIMPLE_REPLY_EIO = hex(
  '67446698', // NBD_SIMPLE_REPLY_MAGIC
  '00000005', // error NBD_EIO
  '0123456789abcdef', // cookie
)

const CHUNK_OFFSET_DATA = hex(
  '668e33ef', // 32 bits, NBD_STRUCTURED_REPLY_MAGIC
  '0000', // 16 bits, flags: not DONE
  '0001', // 16 bits, type NBD_REPLY_TYPE_OFFSET_DATA
  '0123456789abcdef', // 64 bits, cookie
  '0000000c', // 32 bits, payload length 12 = 8 + 4
  '0000000100000000', // payload: 64 bits, offset 4 GiB
  'deadbeef', // payload: 4 bytes of data
)

const CHUNK_OFFSET_HOLE = hex(
  '668e33ef', // NBD_STRUCTURED_REPLY_MAGIC
  '0000', // flags: not DONE
  '0002', // type NBD_REPLY_TYPE_OFFSET_HOLE
  '0123456789abcdef', // cookie
  '0000000c', // payload length 12
  '0000000000010000', // payload: 64 bits, offset 64 KiB
  '00001000', // payload: 32 bits, hole size 4096
)

const CHUNK_BLOCK_STATUS = hex(
  '668e33ef', // NBD_STRUCTURED_REPLY_MAGIC
  '0001', // flags: NBD_REPLY_FLAG_DONE
  '0005', // type NBD_REPLY_TYPE_BLOCK_STATUS
  '0123456789abcdef', // cookie
  '00000014', // payload length 20 = 4 + 2 × 8
  '00000001', // payload: 32 bits, metadata context id 1
  '00010000', // descriptor 1: 32 bits, extent length 64 KiB
  '00000000', // descriptor 1: 32 bits, status flags: allocated data
  '00020000', // descriptor 2: extent length 128 KiB
  '00000003', // descriptor 2: NBD_STATE_HOLE | NBD_STATE_ZERO
)

const CHUNK_ERROR = hex(
  '668e33ef', // NBD_STRUCTURED_REPLY_MAGIC
  '0001', // flags: NBD_REPLY_FLAG_DONE
  '8001', // type NBD_REPLY_TYPE_ERROR (2^15 + 1)
  '0123456789abcdef', // cookie
  '0000000f', // payload length 15 = 6 + 9
  '00000005', // payload: 32 bits, error NBD_EIO
  '0009', // payload: 16 bits, message length 9
  IO_ERROR, // payload: message "I/O error"
)

const CHUNK_ERROR_OFFSET = hex(
  '668e33ef', // NBD_STRUCTURED_REPLY_MAGIC
  '0001', // flags: NBD_REPLY_FLAG_DONE
  '8002', // type NBD_REPLY_TYPE_ERROR_OFFSET (2^15 + 2)
  '0123456789abcdef', // cookie
  '00000017', // payload length 23 = 6 + 9 + 8
  '00000005', // payload: error NBD_EIO
  '0009', // payload: message length 9
  IO_ERROR, // payload: message "I/O error"
  '0000000000001000', // payload: 64 bits, offset 4096
)

const CHUNK_NONE = hex(
  '668e33ef', // NBD_STRUCTURED_REPLY_MAGIC
  '0001', // flags: NBD_REPLY_FLAG_DONE (MUST be set on NONE)
  '0000', // type NBD_REPLY_TYPE_NONE
  '0123456789abcdef', // cookie
  '00000000', // payload length 0
)

/** Decode a chunk's header and hand back its payload, as the receiver does. */
const splitChunk = (b: Buffer, type: number, flags: number): Buffer => {
  assert.equal(replyHeaderLength(b), 20)
  assert.deepEqual(decodeReplyHeader(b), {
    kind: 'structured',
    flags,
    type,
    cookie: COOKIE,
    length: b.length - 20,
  })
  return b.subarray(20)
}

describe('nbd golden vectors: replies (proto.md §Transmission)', () => {
  it('decodes simple replies', () => {
    assert.equal(replyHeaderLength(SIMPLE_REPLY_OK), 16)
    assert.deepEqual(decodeReplyHeader(SIMPLE_REPLY_OK), {
      kind: 'simple',
      error: 0,
      cookie: COOKIE,
    })
    assert.deepEqual(decodeReplyHeader(SIMPLE_REPLY_EIO), {
      kind: 'simple',
      error: 5,
      cookie: COOKIE,
    })
    assert.deepEqual(encodeSimpleReply(COOKIE, 0), SIMPLE_REPLY_OK)
    assert.deepEqual(encodeSimpleReply(COOKIE, 5), SIMPLE_REPLY_EIO)
  })

  it('decodes an NBD_REPLY_TYPE_OFFSET_DATA chunk', () => {
    const payload = splitChunk(CHUNK_OFFSET_DATA, NBD_REPLY_TYPE.OFFSET_DATA, 0)
    assert.equal(decodeDataOffset(payload), 2 ** 32)
    assert.deepEqual(payload.subarray(8), hex('deadbeef'))
    assert.deepEqual(encodeOffsetData(COOKIE, 2 ** 32, hex('deadbeef')), CHUNK_OFFSET_DATA)
  })

  it('decodes an NBD_REPLY_TYPE_OFFSET_HOLE chunk', () => {
    const payload = splitChunk(CHUNK_OFFSET_HOLE, NBD_REPLY_TYPE.OFFSET_HOLE, 0)
    assert.deepEqual(decodeOffsetHole(payload), { offset: 65536, length: 4096 })
    assert.deepEqual(encodeOffsetHole(COOKIE, 65536, 4096), CHUNK_OFFSET_HOLE)
  })

  it('decodes an NBD_REPLY_TYPE_BLOCK_STATUS chunk', () => {
    const done = NBD_REPLY_FLAG.DONE
    const payload = splitChunk(CHUNK_BLOCK_STATUS, NBD_REPLY_TYPE.BLOCK_STATUS, done)
    const descriptors = [
      { length: 65536, flags: 0 },
      { length: 131072, flags: 3 },
    ]
    assert.deepEqual(decodeBlockStatus(payload), { contextId: 1, descriptors })
    assert.deepEqual(encodeBlockStatus(COOKIE, 1, descriptors, done), CHUNK_BLOCK_STATUS)
  })

  it('decodes NBD_REPLY_TYPE_ERROR and ERROR_OFFSET chunks with their message', () => {
    const done = NBD_REPLY_FLAG.DONE
    const error = splitChunk(CHUNK_ERROR, NBD_REPLY_TYPE.ERROR, done)
    assert.deepEqual(decodeErrorChunk(NBD_REPLY_TYPE.ERROR, error), {
      errno: 5,
      message: 'I/O error',
      offset: undefined,
    })
    const atOffset = splitChunk(CHUNK_ERROR_OFFSET, NBD_REPLY_TYPE.ERROR_OFFSET, done)
    assert.deepEqual(decodeErrorChunk(NBD_REPLY_TYPE.ERROR_OFFSET, atOffset), {
      errno: 5,
      message: 'I/O error',
      offset: 4096,
    })
    assert.deepEqual(encodeErrorChunk(COOKIE, 5, 'I/O error'), CHUNK_ERROR)
    assert.deepEqual(encodeErrorChunk(COOKIE, 5, 'I/O error', { offset: 4096 }), CHUNK_ERROR_OFFSET)
  })

  it('decodes an NBD_REPLY_TYPE_NONE chunk', () => {
    splitChunk(CHUNK_NONE, NBD_REPLY_TYPE.NONE, NBD_REPLY_FLAG.DONE)
    assert.deepEqual(encodeNoneChunk(COOKIE), CHUNK_NONE)
    assert.deepEqual(
      encodeChunk(NBD_REPLY_FLAG.DONE, NBD_REPLY_TYPE.NONE, COOKIE, Buffer.alloc(0)),
      CHUNK_NONE,
    )
  })
})
