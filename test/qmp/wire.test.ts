import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { BackupError, isBackupError } from '../../src/errors.ts'
import { encodeCommand, parseMessage, QmpLineSplitter } from '../../src/qmp/wire.ts'
import { GREETING_7_2 } from '../helpers/fake-qmp-server.ts'

const isProtocolError = (e: unknown): boolean => isBackupError(e, 'QMP_PROTOCOL')

/** Feed `bytes` to a fresh splitter, cut at the given offsets. */
const splitAt = (bytes: Buffer, cuts: readonly number[], maxLine?: number): string[] => {
  const splitter = new QmpLineSplitter(maxLine)
  const out: string[] = []
  let prev = 0
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    out.push(...splitter.push(bytes.subarray(prev, cut)))
    prev = cut
  }
  out.push(...splitter.push(bytes.subarray(prev)))
  return out
}

describe('qmp/wire parseMessage', () => {
  it('parses the QEMU 7.2 greeting', () => {
    assert.deepEqual(parseMessage(GREETING_7_2), {
      kind: 'greeting',
      version: { major: 7, minor: 2, micro: 22 },
      package: 'Debian 1:7.2+dfsg-7+deb12u18+b3',
      capabilities: ['oob'],
    })
  })

  it('parses success and error responses with their id', () => {
    assert.deepEqual(parseMessage('{"return": {}, "id": 3}'), { kind: 'return', id: 3, value: {} })
    assert.deepEqual(parseMessage('{"return": "text\\r\\n"}'), {
      kind: 'return',
      id: undefined,
      value: 'text\r\n',
    })
    assert.deepEqual(
      parseMessage(
        '{"id": "x", "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}',
      ),
      {
        kind: 'error',
        id: 'x',
        errorClass: 'CommandNotFound',
        desc: 'The command nope has not been found',
      },
    )
  })

  it('parses events, defaulting data and a missing timestamp', () => {
    assert.deepEqual(
      parseMessage(
        '{"timestamp": {"seconds": 1795668947, "microseconds": 918635}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}',
      ),
      {
        kind: 'event',
        event: 'SHUTDOWN',
        data: { guest: false, reason: 'host-qmp-quit' },
        timestamp: { seconds: 1795668947, microseconds: 918635 },
      },
    )
    assert.deepEqual(parseMessage('{"event": "STOP"}'), {
      kind: 'event',
      event: 'STOP',
      data: {},
      timestamp: { seconds: -1, microseconds: -1 },
    })
  })

  it('rejects malformed messages with QMP_PROTOCOL', () => {
    for (const line of [
      'not json',
      '[1,2]',
      'null',
      '"str"',
      '{}',
      '{"unknown": 1}',
      '{"QMP": {}}',
      '{"QMP": {"version": {"qemu": {"major": 7, "minor": -1, "micro": 0}}, "capabilities": []}}',
      '{"error": "x"}',
      '{"error": {"class": 1, "desc": "d"}}',
      '{"return": {}, "id": {"nested": 1}}',
      '{"event": 5}',
      '{"event": "X", "data": [1]}',
      '{"event": "X", "timestamp": "now"}',
    ]) {
      assert.throws(() => parseMessage(line), isProtocolError, line)
    }
  })

  it('only ever throws BackupError QMP_PROTOCOL on arbitrary text and JSON', () => {
    const check = (line: string): void => {
      try {
        const msg = parseMessage(line)
        assert.ok(['greeting', 'return', 'error', 'event'].includes(msg.kind))
      } catch (e) {
        assert.ok(e instanceof BackupError && e.code === 'QMP_PROTOCOL', String(e))
      }
    }
    fc.assert(fc.property(fc.string({ unit: 'binary' }), check))
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        check(JSON.stringify(v))
      }),
    )
    const member = fc.constantFrom('QMP', 'return', 'error', 'event', 'id', 'data', 'timestamp')
    fc.assert(
      fc.property(fc.dictionary(member, fc.jsonValue()), (o) => {
        check(JSON.stringify(o))
      }),
    )
  })
})

describe('qmp/wire QmpLineSplitter', () => {
  const messages = fc.array(
    fc.record({ return: fc.jsonValue(), id: fc.nat(), note: fc.string({ unit: 'binary' }) }),
    { maxLength: 8 },
  )

  it('yields the same lines however the bytes are split', () => {
    fc.assert(
      fc.property(messages, fc.array(fc.nat(), { maxLength: 10 }), (msgs, rawCuts) => {
        const lines = msgs.map((m) => JSON.stringify(m))
        const bytes = Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'utf8')
        const cuts = rawCuts.map((c) => c % (bytes.length + 1))
        assert.deepEqual(splitAt(bytes, cuts), lines)
        assert.deepEqual(
          lines.map((l) => parseMessage(l)),
          // JSON has no -0: compare with what survives a JSON round trip.
          msgs.map((m) => ({
            kind: 'return',
            id: m.id,
            value: JSON.parse(JSON.stringify(m.return)) as unknown,
          })),
        )
      }),
    )
  })

  it('handles one byte at a time, multi-byte characters, LF-only and blank lines', () => {
    const text = '{"return": "ä€😀"}\r\n\r\n  \n{"event": "STOP"}\n'
    const bytes = Buffer.from(text, 'utf8')
    const cuts = Array.from({ length: bytes.length }, (_, i) => i)
    assert.deepEqual(splitAt(bytes, cuts), ['{"return": "ä€😀"}', '{"event": "STOP"}'])
  })

  it('keeps an unfinished line buffered', () => {
    const splitter = new QmpLineSplitter()
    assert.deepEqual(splitter.push(Buffer.from('{"return"')), [])
    assert.equal(splitter.buffered, 9)
    assert.deepEqual(splitter.push(Buffer.from(': 1}\r\n{')), ['{"return": 1}'])
    assert.equal(splitter.buffered, 1)
  })

  it('bounds the line length, also across chunks', () => {
    assert.deepEqual(splitAt(Buffer.from('0123456789\n'), [3], 10), ['0123456789'])
    assert.throws(() => splitAt(Buffer.from('0123456789A\n'), [], 10), isProtocolError)
    assert.throws(() => splitAt(Buffer.from('0123456789A'), [4, 8], 10), isProtocolError)
  })

  it('rejects invalid UTF-8', () => {
    assert.throws(
      () => new QmpLineSplitter().push(Buffer.from([0x7b, 0xff, 0x7d, 0x0a])),
      isProtocolError,
    )
  })

  it('only ever throws BackupError QMP_PROTOCOL on random bytes', () => {
    // Random bytes alone rarely form lines, so mix in line ends and JSON fragments.
    const chunk = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.constantFrom('\n', '\r\n', '{', '}', '"', '{"return": ', '{"event": "X"', ', "id": 1}'),
      fc.jsonValue().map((v) => `${JSON.stringify(v)}\n`),
      fc.string({ unit: 'binary' }),
    )
    fc.assert(
      fc.property(fc.array(chunk, { maxLength: 12 }), (chunks) => {
        const splitter = new QmpLineSplitter(100)
        try {
          for (const c of chunks) {
            const bytes = typeof c === 'string' ? Buffer.from(c, 'utf8') : c
            for (const line of splitter.push(bytes)) parseMessage(line)
          }
        } catch (e) {
          assert.ok(e instanceof BackupError && e.code === 'QMP_PROTOCOL', String(e))
        }
      }),
    )
  })
})

describe('qmp/wire encodeCommand', () => {
  it('encodes one JSON line with execute, arguments and id', () => {
    const bytes = encodeCommand({
      execute: 'blockdev-del',
      arguments: { 'node-name': 'a\nb' },
      id: 7,
    })
    const text = bytes.toString('utf8')
    assert.equal(text.indexOf('\n'), text.length - 1)
    assert.deepEqual(JSON.parse(text), {
      execute: 'blockdev-del',
      arguments: { 'node-name': 'a\nb' },
      id: 7,
    })
    assert.deepEqual(JSON.parse(encodeCommand({ execute: 'stop', id: 1 }).toString()), {
      execute: 'stop',
      id: 1,
    })
  })

  it('round-trips arbitrary arguments through the splitter', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue()), fc.nat(), (args, id) => {
        const [line, ...rest] = new QmpLineSplitter().push(
          encodeCommand({ execute: 'x', arguments: args, id }),
        )
        assert.equal(rest.length, 0)
        assert.deepEqual(
          JSON.parse(line!),
          JSON.parse(JSON.stringify({ execute: 'x', arguments: args, id })),
        )
      }),
    )
  })

  it('rejects what it cannot encode with QMP_PROTOCOL', () => {
    assert.throws(() => encodeCommand({ execute: '', id: 1 }), isProtocolError)
    assert.throws(() => encodeCommand({ execute: 'x', arguments: [1], id: 1 }), isProtocolError)
    assert.throws(
      () => encodeCommand({ execute: 'x', arguments: { n: 1n }, id: 1 }),
      isProtocolError,
    )
    const cyclic: Record<string, unknown> = {}
    cyclic['self'] = cyclic
    assert.throws(() => encodeCommand({ execute: 'x', arguments: cyclic, id: 1 }), isProtocolError)
  })
})
