import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { TokenBucket } from '../../src/io/throttle.ts'
import { isBackupError } from '../../src/errors.ts'

/** A fake clock: sleeping advances time instantly and records the waits. */
const fakeClock = () => {
  let t = 0
  const waits: number[] = []
  return {
    now: () => t,
    sleep: (ms: number) => {
      waits.push(ms)
      t += ms
      return Promise.resolve()
    },
    waits,
    get t() {
      return t
    },
  }
}

describe('io/throttle: TokenBucket', () => {
  it('does not wait when unlimited', async () => {
    const c = fakeClock()
    const b = new TokenBucket({ bytesPerSecond: 0, now: c.now, sleep: c.sleep })
    for (let i = 0; i < 100; i++) await b.take(1 << 30)
    assert.equal(c.t, 0)
    assert.equal(b.limited, false)
  })

  it('holds the long-run rate in bytes per second', async () => {
    const c = fakeClock()
    const rate = 10 * 1024 * 1024
    const b = new TokenBucket({
      bytesPerSecond: rate,
      burst: 1024 * 1024,
      now: c.now,
      sleep: c.sleep,
    })
    const total = 100 * 1024 * 1024
    for (let sent = 0; sent < total; sent += 256 * 1024) await b.take(256 * 1024)
    // 100 MiB at 10 MiB/s, less the initial 1 MiB burst: 9.9 s of simulated time.
    assert.ok(Math.abs(c.t - 9900) < 1, `took ${c.t} ms`)
  })

  it('lets a chunk larger than the burst through after its full cost', async () => {
    const c = fakeClock()
    const b = new TokenBucket({ bytesPerSecond: 1000, burst: 100, now: c.now, sleep: c.sleep })
    await b.take(1100)
    assert.equal(c.t, 1000)
  })

  it('rejects with ABORTED when the wait is aborted', async () => {
    const ac = new AbortController()
    const b = new TokenBucket({ bytesPerSecond: 1, burst: 1 })
    const p = b.take(10_000, ac.signal)
    ac.abort()
    await assert.rejects(p, (e: unknown) => isBackupError(e, 'ABORTED'))
  })

  it('throttles a stream pipeline without changing the bytes', async () => {
    const c = fakeClock()
    const b = new TokenBucket({ bytesPerSecond: 1024, burst: 1024, now: c.now, sleep: c.sleep })
    const chunks = Array.from({ length: 8 }, (_, i) => Buffer.alloc(512, i))
    const got: Buffer[] = []
    await pipeline(
      Readable.from(chunks),
      b.transform(),
      new Writable({
        write(chunk: Buffer, _e, cb) {
          got.push(chunk)
          cb()
        },
      }),
    )
    assert.deepEqual(Buffer.concat(got), Buffer.concat(chunks))
    assert.equal(c.t, 3000) // 4 KiB at 1 KiB/s with a 1 KiB burst
  })
})
