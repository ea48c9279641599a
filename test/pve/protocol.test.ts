import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { BackupError, ERROR_CODES } from '../../src/errors.ts'
import {
  decodeGreeting,
  decodeReply,
  decodeRequest,
  encodeGreeting,
  encodeReply,
  encodeRequest,
  LOG_LEVELS,
  PROTOCOL,
} from '../../src/pve/protocol.ts'
import type { PveRequest, ReplyLine } from '../../src/pve/protocol.ts'

// JSON values as Perl's encoder produces them: no -0, no undefined (fast-check's jsonValue
// yields -0, which JSON writes as 0). No `__proto__` key: the decoder drops it (tested below).
const noProto = (v: unknown): boolean => !JSON.stringify(v).includes('"__proto__"')
const json = fc
  .jsonValue()
  .map((v) => JSON.parse(JSON.stringify(v)) as unknown)
  .filter(noProto)
const text = fc.string({ unit: 'binary' }).filter((s) => s !== '__proto__')
const request: fc.Arbitrary<PveRequest> = fc.record(
  {
    protocol: fc.constant(PROTOCOL),
    method: fc.stringMatching(/^[a-z][a-z0-9_]{0,63}$/),
    storeid: fc.stringMatching(/^[a-z][a-z0-9._-]{0,63}$/),
    scfg: fc.dictionary(text, json),
    args: fc.array(json),
    session: json,
  },
  { requiredKeys: ['protocol', 'method', 'storeid', 'scfg', 'args'] },
) as fc.Arbitrary<PveRequest>

const oneLineText = text.map((s) => s.replace(/[\n\r]/g, ' '))
const reply: fc.Arbitrary<ReplyLine> = fc.oneof(
  fc.record({
    kind: fc.constant('log' as const),
    level: fc.constantFrom(...LOG_LEVELS),
    message: oneLineText,
  }),
  fc.record(
    { kind: fc.constant('result' as const), result: json, session: json },
    { requiredKeys: ['kind', 'result'] },
  ) as fc.Arbitrary<ReplyLine>,
  fc.record({
    kind: fc.constant('error' as const),
    code: fc.constantFrom(...ERROR_CODES),
    message: oneLineText,
  }),
)

// Plain objects, as JSON.parse makes them (fast-check's have a null prototype).
const plain = (v: unknown): unknown => JSON.parse(JSON.stringify(v))

const isOneLine = (s: string): boolean => s.endsWith('\n') && !s.slice(0, -1).includes('\n')

const refusedWith =
  (...codes: string[]) =>
  (e: unknown): boolean =>
    e instanceof BackupError && codes.includes(e.code)

describe('pve/protocol', () => {
  it('drops a __proto__ key instead of letting it reach a prototype', () => {
    const line =
      '{"protocol":1,"method":"status","storeid":"gb","scfg":{"__proto__":{"polluted":1}},"args":[{"__proto__":{"polluted":1}}]}\n'
    const req = decodeRequest(line)
    assert.equal(Object.getPrototypeOf(req.scfg), Object.prototype)
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined)
    assert.equal(Object.hasOwn(req.scfg, '__proto__'), false)
  })

  it('round-trips every request through one line', () => {
    fc.assert(
      fc.property(request, (req) => {
        const line = encodeRequest(req)
        assert.ok(isOneLine(line))
        assert.deepEqual(plain(decodeRequest(line)), plain(req))
      }),
    )
  })

  it('round-trips every reply line', () => {
    fc.assert(
      fc.property(reply, (r) => {
        const line = encodeReply(r)
        assert.ok(isOneLine(line))
        assert.deepEqual(plain(decodeReply(line)), plain(r))
      }),
    )
  })

  it('round-trips the greeting', () => {
    fc.assert(
      fc.property(
        text.filter((s) => s !== ''),
        (v) => {
          assert.deepEqual(decodeGreeting(encodeGreeting(v)), {
            guestbackup: v,
            protocol: PROTOCOL,
          })
        },
      ),
    )
  })

  it('makes every message one line', () => {
    fc.assert(
      fc.property(text, (message) => {
        const line = encodeReply({ kind: 'error', code: 'IO', message })
        assert.ok(isOneLine(line))
        const d = decodeReply(line)
        assert.equal(d.kind === 'error' && d.message, message.replace(/\r\n|[\n\r]/g, ' '))
      }),
    )
  })

  it('refuses any other protocol number with UNSUPPORTED', () => {
    fc.assert(
      fc.property(request, json, (req, p) => {
        fc.pre(p !== PROTOCOL)
        const line = JSON.stringify({ ...req, protocol: p })
        assert.throws(() => decodeRequest(line), refusedWith('UNSUPPORTED'))
      }),
    )
  })

  it('refuses a request with a key missing, added or of the wrong type with PVE_PROTOCOL', () => {
    const keys = ['method', 'storeid', 'scfg', 'args'] as const
    fc.assert(
      fc.property(request, fc.constantFrom(...keys), json, (req, key, v) => {
        const missing = Object.fromEntries(Object.entries(req).filter(([k]) => k !== key))
        assert.throws(() => decodeRequest(JSON.stringify(missing)), refusedWith('PVE_PROTOCOL'))
        const extra = { ...req, [`x${key}`]: v }
        assert.throws(() => decodeRequest(JSON.stringify(extra)), refusedWith('PVE_PROTOCOL'))
        const typed = { ...req, [key]: 7 }
        assert.throws(() => decodeRequest(JSON.stringify(typed)), refusedWith('PVE_PROTOCOL'))
      }),
    )
  })

  it('decodes any line to a request or refuses it with a specific code', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          text,
          json.map((v) => JSON.stringify(v)),
        ),
        (line) => {
          try {
            decodeRequest(line)
          } catch (e) {
            assert.ok(refusedWith('PVE_PROTOCOL', 'UNSUPPORTED')(e), String(e))
          }
        },
      ),
    )
  })

  it('refuses any reply line that is not a log, result or error with PVE_PROTOCOL', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          text,
          json.map((v) => JSON.stringify(v)),
        ),
        (line) => {
          try {
            decodeReply(line)
          } catch (e) {
            assert.ok(refusedWith('PVE_PROTOCOL')(e), String(e))
          }
        },
      ),
    )
    for (const bad of [
      '{"log":{"level":"debug","message":"x"}}',
      '{"log":{"level":"info","message":"a\\nb"}}',
      '{"error":{"code":"NOPE","message":"x"}}',
      '{"result":1,"extra":2}',
      '{"session":{}}',
      '{"result":1}\n{"result":2}',
    ]) {
      assert.throws(() => decodeReply(bad), refusedWith('PVE_PROTOCOL'), bad)
    }
    assert.throws(() => decodeGreeting('{"guestbackup":"1"}'), refusedWith('PVE_PROTOCOL'))
  })
})
