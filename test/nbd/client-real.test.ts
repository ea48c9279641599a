// Integration tests against real NBD servers: qemu-nbd 7.2 serving a qcow2 (persistent, on a
// unix socket; never a kernel /dev/nbdN) and nbdkit's memory plugin. libnbd's nbdinfo is the
// reference for metadata. A missing tool fails the suite; nothing here is skippable.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { createReadStream, watch } from 'node:fs'
import { connect } from 'node:net'
import { basename, dirname, join } from 'node:path'
import { isBackupError } from '../../src/errors.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import { run, spawnTool } from '../../src/io/spawn.ts'
import type { Tool } from '../../src/io/spawn.ts'
import { allocationFlags, dirtyExtents, NbdClient, walkExtents } from '../../src/nbd/index.ts'
import type { Extent } from '../../src/nbd/index.ts'

const MiB = 1 << 20
const tool = (cmd: string, args: readonly string[]) =>
  run(cmd, args, { errorCode: 'QEMU_TOOL_FAILED' })

/** Start a server as a managed child and resolve once its unix socket accepts connections. */
const startPeer = async (cmd: string, args: readonly string[], sock: string): Promise<Tool> => {
  const child = spawnTool(cmd, args, {
    stdin: 'ignore',
    stdout: 'ignore',
    errorCode: 'QEMU_TOOL_FAILED',
    okExitCodes: [0, 143],
  })
  await new Promise<void>((resolve, reject) => {
    let settled = false
    let retry: NodeJS.Timeout | undefined
    const finish = (err?: Error): void => {
      if (settled) return
      settled = true
      w.close()
      clearTimeout(timer)
      clearTimeout(retry)
      if (err) reject(err)
      else resolve()
    }
    // Wait for the socket file with inotify; it appears at bind(), a moment before listen(),
    // so a refused probe is retried shortly.
    let probing = false
    const check = (): void => {
      if (settled || probing) return
      probing = true
      const probe = connect(sock)
      probe.once('connect', () => {
        probe.destroy()
        finish()
      })
      probe.once('error', (e: NodeJS.ErrnoException) => {
        probe.destroy()
        probing = false
        if (e.code === 'ECONNREFUSED') retry = setTimeout(check, 20)
      })
    }
    const w = watch(dirname(sock), (_ev, name) => {
      if (name === basename(sock)) check()
    })
    const timer = setTimeout(() => {
      finish(new Error(`${cmd}: no socket after 10 s`))
    }, 10_000)
    child.done.then(
      () => {
        finish(new Error(`${cmd} exited early: ${child.stderr()}`))
      },
      (e: unknown) => {
        finish(e as Error)
      },
    )
    check()
  })
  return child
}

const stopPeer = async (t: Tool | undefined): Promise<void> => {
  if (t?.child.exitCode !== null) return
  t.child.kill('SIGTERM')
  await t.done.catch(() => undefined)
}

interface NbdinfoExtent {
  offset: number
  length: number
  type: number
}

/** Merge adjacent extents with equal flags, so both sides compare in one canonical form. */
const canonical = (xs: readonly { offset: number; length: number; flags: number }[]): Extent[] => {
  const out: Extent[] = []
  for (const x of xs) {
    const last = out.at(-1)
    if (last?.flags === x.flags && last.offset + last.length === x.offset) {
      out[out.length - 1] = { ...last, length: last.length + x.length }
    } else out.push({ offset: x.offset, length: x.length, flags: x.flags })
  }
  return out
}

const nbdinfoMap = async (uri: string, context = 'base:allocation'): Promise<Extent[]> => {
  const { stdout } = await tool('nbdinfo', [`--map=${context}`, '--json', uri])
  const xs = JSON.parse(stdout) as NbdinfoExtent[]
  return canonical(xs.map((x) => ({ offset: x.offset, length: x.length, flags: x.type })))
}

const collect = async (it: AsyncIterable<Extent>): Promise<Extent[]> => {
  const out: Extent[] = []
  for await (const e of it) out.push(e)
  return out
}

interface NbdinfoExport {
  contexts?: string[]
  is_read_only: boolean
  can_flush: boolean
  can_fua: boolean
  can_trim: boolean
  can_zero: boolean
  can_fast_zero: boolean
  can_multi_conn: boolean
  can_df: boolean
  can_cache: boolean
  block_size_minimum?: number
  block_size_preferred?: number
  block_size_maximum?: number
  'export-size': number
}

const nbdinfoExport = async (uri: string): Promise<NbdinfoExport> => {
  const { stdout } = await tool('nbdinfo', ['--json', uri])
  const info = JSON.parse(stdout) as { exports: NbdinfoExport[] }
  const e = info.exports[0]
  assert.ok(e, 'nbdinfo lists the export')
  return e
}

/** Compare what the client negotiated with what nbdinfo (libnbd) sees. */
const assertLikeNbdinfo = (c: NbdClient, e: NbdinfoExport): void => {
  assert.equal(c.size, e['export-size'])
  assert.deepEqual(c.flags, {
    readOnly: e.is_read_only,
    canFlush: e.can_flush,
    canFua: e.can_fua,
    canTrim: e.can_trim,
    canWriteZeroes: e.can_zero,
    canFastZero: e.can_fast_zero,
    canMultiConn: e.can_multi_conn,
    canDf: e.can_df,
    canCache: e.can_cache,
  })
  // Without NBD_INFO_BLOCK_SIZE, nbdinfo prints nothing and the client uses the spec defaults.
  assert.deepEqual(c.blockSize, {
    minimum: e.block_size_minimum ?? 1,
    preferred: e.block_size_preferred ?? 4096,
    maximum: Math.min(e.block_size_maximum ?? 32 * MiB, 64 * MiB),
  })
}

const sha256File = async (path: string): Promise<string> => {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/**
 * Read the whole export with `depth` requests of `size` bytes in flight and hash it in order;
 * with `reuse`, every read goes into a recycled buffer (`into`).
 */
const sha256Export = async (
  c: NbdClient,
  size = 4 * MiB,
  depth = 8,
  reuse = false,
): Promise<string> => {
  const h = createHash('sha256')
  const queue: Promise<Buffer>[] = []
  const pool: Buffer[] = []
  let next = 0
  const issue = (): void => {
    if (next >= c.size) return
    const into = reuse ? (pool.pop() ?? Buffer.allocUnsafe(size)) : undefined
    queue.push(c.read(next, Math.min(size, c.size - next), { into }))
    next += size
  }
  for (let i = 0; i < depth; i++) issue()
  for (let p = queue.shift(); p; p = queue.shift()) {
    const b = await p
    h.update(b)
    if (reuse) pool.push(Buffer.from(b.buffer, b.byteOffset, size))
    issue()
  }
  return h.digest('hex')
}

describe('nbd/client against qemu-nbd 7.2 (qcow2)', () => {
  let dir: TempDir
  let server: Tool | undefined
  let sock: string
  let uri: string
  let rawSha: string
  const ctxs = ['base:allocation', 'qemu:dirty-bitmap:bm0']

  before(async () => {
    dir = await makeTempDir('nbd-real-')
    const img = join(dir.path, 'disk.qcow2')
    await tool('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M'])
    const io = (...cmds: string[]) =>
      tool('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), img])
    await io('write -P 0xab 1M 64k', 'write -P 0xcd 5M 1M')
    // Writes after the bitmap exists are dirty in it; qemu-nbd exports it as a meta context.
    await tool('qemu-img', ['bitmap', '--add', img, 'bm0'])
    await io('write -P 0xef 8M 128k', 'write -z 10M 2M', 'write -P 0x11 63M 1M')
    await tool('qemu-img', ['bitmap', '--disable', img, 'bm0'])
    const raw = join(dir.path, 'disk.raw')
    await tool('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, raw])
    rawSha = await sha256File(raw)
    sock = join(dir.path, 'qemu-nbd.sock')
    uri = `nbd+unix:///disk0?socket=${sock}`
    server = await startPeer(
      'qemu-nbd',
      [
        '--socket',
        sock,
        '--format=qcow2',
        '-t',
        '-e',
        '4',
        '-x',
        'disk0',
        '-B',
        'bm0',
        '--discard=unmap',
        img,
      ],
      sock,
    )
  })

  after(async () => {
    await stopPeer(server)
    await dir.remove()
  })

  it('negotiates the same size, flags and block sizes that nbdinfo reports', async () => {
    await using c = await NbdClient.connect({ path: sock, exportName: 'disk0', metaContexts: ctxs })
    assertLikeNbdinfo(c, await nbdinfoExport(uri))
    assert.deepEqual([...c.metaContexts.keys()].sort(), ctxs)
    assert.equal(c.structuredReplies, true)
  })

  it('lists the meta contexts nbdinfo lists', async () => {
    const mine = await NbdClient.listMetaContexts({ path: sock, exportName: 'disk0' })
    const theirs = (await nbdinfoExport(uri)).contexts ?? []
    assert.deepEqual([...mine].sort(), [...theirs].sort())
    assert.deepEqual(
      await NbdClient.listMetaContexts({ path: sock, exportName: 'disk0', queries: ['qemu:'] }),
      ['qemu:dirty-bitmap:bm0'],
    )
  })

  it('reports base:allocation extents equal to nbdinfo --map', async () => {
    await using c = await NbdClient.connect({ path: sock, exportName: 'disk0', metaContexts: ctxs })
    const mine = await collect(walkExtents(c, 'base:allocation'))
    assert.deepEqual(mine, await nbdinfoMap(uri))
    const data = mine.filter((e) => (e.flags & allocationFlags.HOLE) === 0)
    assert.deepEqual(
      data.map((e) => [e.offset, e.length]),
      [
        [1 * MiB, 64 * 1024],
        [5 * MiB, MiB],
        [8 * MiB, 128 * 1024],
        [63 * MiB, MiB],
      ],
    )
    // Small chunks give the same merged answer.
    assert.deepEqual(await collect(walkExtents(c, 'base:allocation', { chunk: 3 * MiB })), mine)
  })

  it('reports dirty-bitmap extents equal to nbdinfo --map=qemu:dirty-bitmap:bm0', async () => {
    await using c = await NbdClient.connect({ path: sock, exportName: 'disk0', metaContexts: ctxs })
    const ctx = 'qemu:dirty-bitmap:bm0'
    assert.deepEqual(await collect(walkExtents(c, ctx)), await nbdinfoMap(uri, ctx))
    const dirty = await collect(dirtyExtents(c, ctx))
    assert.deepEqual(
      dirty.map((e) => [e.offset, e.length]),
      [
        [8 * MiB, 128 * 1024],
        [10 * MiB, 2 * MiB],
        [63 * MiB, MiB],
      ],
    )
    const one = await c.blockStatus(8 * MiB, 4 * MiB, { reqOne: true })
    assert.deepEqual(one.get(ctx), [{ offset: 8 * MiB, length: 128 * 1024, flags: 1 }])
    assert.equal(one.get('base:allocation')?.length, 1)
  })

  it('reads the whole image equal to qemu-img convert -O raw (sha256)', async () => {
    await using c = await NbdClient.connect({ path: sock, exportName: 'disk0' })
    assert.equal(await sha256Export(c), rawSha)
    assert.equal(await sha256Export(c, 192 * 1024, 16), rawSha)
    assert.equal(await sha256Export(c, 2 * MiB, 8, true), rawSha)
    const edge = await c.read(MiB - 4096, 8192)
    assert.deepEqual(edge, Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 0xab)]))
  })

  it('round-trips write, writeZeroes, trim and flush', async () => {
    await using c = await NbdClient.connect({ path: sock, exportName: 'disk0', metaContexts: ctxs })
    const data = Buffer.alloc(2 * MiB)
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) >> 3
    await c.write(20 * MiB, data, { fua: true })
    assert.deepEqual(await c.read(20 * MiB, data.length), data)
    await c.writeZeroes(20 * MiB + 4096, 8192)
    const back = await c.read(20 * MiB, 16384)
    assert.deepEqual(back.subarray(4096, 12288), Buffer.alloc(8192))
    assert.deepEqual(back.subarray(12288), data.subarray(12288, 16384))
    await c.writeZeroes(21 * MiB, MiB, { noHole: true })
    assert.deepEqual(await c.read(21 * MiB, MiB), Buffer.alloc(MiB))
    await c.trim(20 * MiB, MiB)
    await c.flush()
    const after = await collect(
      walkExtents(c, 'base:allocation', { offset: 16 * MiB, length: 8 * MiB }),
    )
    assert.deepEqual(after, await nbdinfoMap(uri).then((m) => clip(m, 16 * MiB, 8 * MiB)))
  })

  it('rejects an unknown export with NOT_FOUND naming it', async () => {
    await assert.rejects(NbdClient.connect({ path: sock, exportName: 'nope' }), (e) => {
      assert.ok(isBackupError(e, 'NOT_FOUND'))
      assert.match(e.message, /"nope"/)
      return true
    })
  })
})

/** Extents clipped to `[offset, offset + length)`. */
const clip = (xs: readonly Extent[], offset: number, length: number): Extent[] =>
  xs.flatMap((e) => {
    const s = Math.max(e.offset, offset)
    const t = Math.min(e.offset + e.length, offset + length)
    return t > s ? [{ offset: s, length: t - s, flags: e.flags }] : []
  })

describe('nbd/client against nbdkit memory', () => {
  let dir: TempDir
  let server: Tool | undefined
  let sock: string
  let uri: string

  before(async () => {
    dir = await makeTempDir('nbd-kit-')
    sock = join(dir.path, 'nbdkit.sock')
    uri = `nbd+unix:///?socket=${sock}`
    server = await startPeer(
      'nbdkit',
      ['-f', '--exit-with-parent', '-U', sock, 'memory', '64M'],
      sock,
    )
  })

  after(async () => {
    await stopPeer(server)
    await dir.remove()
  })

  it('negotiates what nbdinfo reports', async () => {
    await using c = await NbdClient.connect({ path: sock, metaContexts: ['base:allocation'] })
    assertLikeNbdinfo(c, await nbdinfoExport(uri))
    assert.deepEqual(await NbdClient.listMetaContexts({ path: sock }), ['base:allocation'])
  })

  it('round-trips parallel writes and reads', async () => {
    await using c = await NbdClient.connect({ path: sock, maxInFlight: 8 })
    const block = (i: number) => Buffer.alloc(64 * 1024, (i * 37) & 0xff)
    await Promise.all(Array.from({ length: 64 }, (_, i) => c.write(i * 128 * 1024, block(i))))
    const got = await Promise.all(
      Array.from({ length: 64 }, (_, i) => c.read(i * 128 * 1024, 64 * 1024)),
    )
    got.forEach((b, i) => {
      assert.ok(b.equals(block(i)), `block ${i}`)
    })
    await c.flush()
  })

  it('zeroes (also fast), trims and reports allocation like nbdinfo', async () => {
    await using c = await NbdClient.connect({ path: sock, metaContexts: ['base:allocation'] })
    await c.write(32 * MiB, Buffer.alloc(4 * MiB, 0x5a))
    await c.writeZeroes(33 * MiB, MiB)
    await c.writeZeroes(34 * MiB, 256 * 1024, { fastZero: true })
    await c.trim(35 * MiB, MiB)
    const buf = await c.read(32 * MiB, 4 * MiB)
    assert.ok(buf.subarray(0, MiB).equals(Buffer.alloc(MiB, 0x5a)))
    assert.ok(buf.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB)))
    assert.ok(buf.subarray(2 * MiB, 2 * MiB + 256 * 1024).equals(Buffer.alloc(256 * 1024)))
    assert.deepEqual(await collect(walkExtents(c, 'base:allocation')), await nbdinfoMap(uri))
    const sparse = await collect(
      walkExtents(c, 'base:allocation', { offset: 32 * MiB, length: 4 * MiB }),
    )
    assert.deepEqual(sparse[0], { offset: 32 * MiB, length: MiB, flags: 0 })
  })

  it('reads the export exactly as nbdcopy (libnbd) does (sha256)', async () => {
    await using c = await NbdClient.connect({ path: sock })
    await c.write(60 * MiB + 512, Buffer.alloc(3 * MiB, 0xc3))
    const out = join(dir.path, 'copy.raw')
    await tool('nbdcopy', [uri, out])
    assert.equal(await sha256Export(c, 4 * MiB, 16), await sha256File(out))
  })
})
