/**
 * How the copy engine's request size, depth and connection count trade wall time against the
 * CPU of the client plus both servers: the same copy a full backup does (qemu-nbd -r of the
 * benchmark source → a fresh qcow2 served by qemu-nbd as our target is), measured for each
 * configuration in interleaved rounds, beside nbdcopy between the same two servers.
 *
 *   node --import tsx bench/copy-sweep.ts [--runs 3] [--scratch /var/tmp/copy-sweep]
 *        [--configs 256Kx16x4,1Mx16x4,…] [--digests] [--cache none|writeback]
 *
 * A config is `<largest NBD read>[/<job size>]x<jobs in flight>x<connections per server>`
 * (the job size, which is also the largest write, defaults to the read size); with
 * `--digests` every request is one 4 MiB digest block (read as NBD requests of the first size)
 * hashed on the worker pool, as a backup does. CPU = this process (its worker threads included)
 * plus both servers' utime + stime over the run (bench/lib/usage.ts); servers are started before
 * the clock.
 */
import { existsSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { copyBlocks } from '../src/copy/copy.ts'
import { BASE_ALLOCATION, nbdSource, nbdTarget } from '../src/copy/nbd.ts'
import { BlockDigests } from '../src/digest/blocks.ts'
import { DiskHasher } from '../src/digest/hasher.ts'
import { NbdClient } from '../src/nbd/index.ts'
import { createImage } from '../src/qemu/img.ts'
import type { QemuNbdCache } from '../src/qemu/nbd-server.ts'
import { run, serve, stopAll } from './lib/procs.ts'
import { ownCpu } from './lib/usage.ts'
import type { Server } from './lib/procs.ts'
import { dataBytes, LAB_LAYOUT, makeRandomQcow2, warmRead } from './lib/source.ts'
import { summarize } from './lib/stats.ts'

interface Config {
  name: string
  /** Largest NBD read. */
  request: number
  /** Largest piece of a copy job (a write, without digests). */
  chunk: number
  inFlight: number
  connections: number
}

interface Sample {
  seconds: number
  cpu: number
}

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    scratch: { type: 'string', default: '/var/tmp/copy-sweep' },
    configs: {
      type: 'string',
      default: '256K/1Mx16x4,1Mx16x4,2Mx16x4,1Mx8x4,1Mx32x4,1Mx16x2,1Mx16x1,4Mx8x4',
    },
    digests: { type: 'boolean', default: false },
    cache: { type: 'string', default: 'none' },
  },
})

const size = (s: string): number => {
  const m = /^(\d+)([KM])$/.exec(s)
  if (m === null) throw new Error(`bad size ${s}`)
  return Number(m[1]) * (m[2] === 'K' ? 1024 : 1024 * 1024)
}

const configs: Config[] = values.configs.split(',').map((c) => {
  const [rc, d, n] = c.split('x')
  const [r, ch] = (rc ?? '256K').split('/')
  const request = size(r ?? '256K')
  const chunk = ch === undefined ? request : size(ch)
  return { name: c, request, chunk, inFlight: Number(d), connections: Number(n) }
})

/** CPU seconds of both servers so far. */
const serversCpu = (a: Server, b: Server): number => ownCpu(a.pid) + ownCpu(b.pid)

/** A fresh qcow2 at `out`, served as the copy's target. */
const freshTarget = async (out: string, discard: boolean): Promise<Server> => {
  await rm(out, { force: true })
  await createImage(out, { format: 'qcow2', size: LAB_LAYOUT.virtualSize })
  const cache = values.cache as QemuNbdCache
  return serve({ image: out, format: 'qcow2', cache, ...(discard ? { discard: true } : {}) })
}

const connectAll = async (
  n: number,
  server: Server,
  metaContexts: string[],
): Promise<NbdClient[]> => {
  const path = server.uri.replace(/^.*socket=/, '')
  const out: NbdClient[] = []
  for (let i = 0; i < n; i++) out.push(await NbdClient.connect({ path, metaContexts }))
  return out
}

const copyOnce = async (src: Server, out: string, c: Config): Promise<Sample> => {
  const dst = await freshTarget(out, true)
  const signal = new AbortController().signal
  try {
    const readers = await connectAll(c.connections, src, [BASE_ALLOCATION])
    const writers = await connectAll(c.connections, dst, [])
    const first = readers[0]
    if (first === undefined) throw new Error('no connection')
    const servers0 = serversCpu(src, dst)
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const hasher = values.digests
      ? new DiskHasher(BlockDigests.empty(LAB_LAYOUT.virtualSize))
      : undefined
    const stats = await copyBlocks(
      nbdSource(first, { readers, maxRequest: c.request }),
      nbdTarget(writers),
      { targetIsZero: true, chunk: c.chunk, inFlight: c.inFlight, hasher, signal },
    )
    const seconds = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    const servers = serversCpu(src, dst) - servers0
    for (const x of [...readers, ...writers]) await x.close()
    if (stats.dataBytes !== dataBytes(LAB_LAYOUT)) throw new Error(`copied ${stats.dataBytes}`)
    return { seconds, cpu: (cpu.user + cpu.system) / 1e6 + servers }
  } finally {
    await dst.stop()
  }
}

const nbdcopyOnce = async (src: Server, out: string): Promise<Sample> => {
  const dst = await freshTarget(out, false)
  try {
    const servers0 = serversCpu(src, dst)
    const t0 = performance.now()
    const { stderr } = await run('/usr/bin/time', [
      '-f',
      '%U %S',
      'nbdcopy',
      '--destination-is-zero',
      '--flush',
      src.uri,
      dst.uri,
    ])
    const seconds = (performance.now() - t0) / 1000
    const [u, s] = (stderr.trim().split('\n').pop() ?? '').split(' ').map(Number)
    const servers = serversCpu(src, dst) - servers0
    return { seconds, cpu: (u ?? NaN) + (s ?? NaN) + servers }
  } finally {
    await dst.stop()
  }
}

const main = async (): Promise<void> => {
  await mkdir(values.scratch, { recursive: true })
  const srcPath = join(values.scratch, 'src.qcow2')
  const out = join(values.scratch, 'out.qcow2')
  if (!existsSync(srcPath)) {
    process.stderr.write(`creating ${srcPath} …\n`)
    await makeRandomQcow2(srcPath, LAB_LAYOUT)
  }
  const src = await serve({ image: srcPath, format: 'qcow2', readOnly: true })
  const variants: [string, () => Promise<Sample>][] = [
    ['nbdcopy --flush (256 KiB × 64 × 4 conns)', () => nbdcopyOnce(src, out)],
    ...configs.map((c): [string, () => Promise<Sample>] => [
      `copyBlocks ${c.name}`,
      () => copyOnce(src, out, c),
    ]),
  ]
  const samples = new Map<string, Sample[]>(variants.map(([n]) => [n, []]))
  try {
    for (let r = 0; r < Number(values.runs); r++) {
      for (const [name, f] of variants) {
        await warmRead(srcPath)
        const s = await f()
        samples.get(name)?.push(s)
        process.stderr.write(`${name}: ${s.seconds.toFixed(2)} s, ${s.cpu.toFixed(2)} CPU-s\n`)
      }
    }
  } finally {
    await src.stop()
    await stopAll()
    await rm(out, { force: true })
  }
  const cache = values.cache
  console.log(
    `| copy (1 GiB data, target cache=${cache}${values.digests ? ', digests' : ''}) | median s (min–max) | CPU s client + servers (min–max) |`,
  )
  console.log('|---|---|---|')
  for (const [name, xs] of samples) {
    const t = summarize(xs.map((x) => x.seconds))
    const c = summarize(xs.map((x) => x.cpu))
    const f = (s: typeof t): string =>
      `${s.median.toFixed(2)} (${s.min.toFixed(2)}–${s.max.toFixed(2)})`
    console.log(`| ${name} | ${f(t)} | ${f(c)} |`)
  }
}

await main()
