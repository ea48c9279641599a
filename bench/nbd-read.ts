/**
 * Read throughput of the NBD client against `nbdcopy … null:` on the benchmark source (2 GiB
 * qcow2, 1 GiB random data), warm page cache, runs interleaved.
 *
 *   node --import tsx bench/nbd-read.ts [--runs 3] [--scratch /var/tmp/nbd-read-bench]
 *                                       [--configs 8x4,16x2,8x2r,16x2r,8x4r]
 *
 * A config is requests × MiB; a trailing `r` reuses one buffer per request slot (`into`).
 *
 * The client reads the data extents of `base:allocation` in one process (timed from connect to
 * close; Node start-up is not included), keeping N requests of M MiB in flight. nbdcopy's time is
 * its whole process. CPU is user + sys of the reading process (for the client: the delta over
 * the run).
 */
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { allocationFlags, NbdClient, walkExtents } from '../src/nbd/index.ts'
import { run, serve, stopAll } from './lib/procs.ts'
import { dataBytes, LAB_LAYOUT, makeRandomQcow2, warmRead } from './lib/source.ts'

interface Sample {
  seconds: number
  cpu: number
}

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    scratch: { type: 'string', default: '/var/tmp/nbd-read-bench' },
    configs: { type: 'string', default: '8x4,16x2,8x2r,16x2r,8x4r' },
  },
})
const runs = Number(values.runs)
const configs = values.configs.split(',').map((c) => {
  const [n, m] = c.replace(/r$/, '').split('x').map(Number)
  return { depth: n ?? 8, size: (m ?? 4) * 1024 * 1024, reuse: c.endsWith('r') }
})

/** Read every data extent with `depth` requests of `size` bytes in flight. */
const clientRead = async (
  path: string,
  depth: number,
  size: number,
  reuse: boolean,
): Promise<Sample> => {
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const c = await NbdClient.connect({ path, metaContexts: ['base:allocation'], maxInFlight: depth })
  const pieces: [number, number][] = []
  for await (const e of walkExtents(c, 'base:allocation')) {
    if ((e.flags & allocationFlags.ZERO) !== 0) continue
    for (let o = e.offset; o < e.offset + e.length; o += size) {
      pieces.push([o, Math.min(size, e.offset + e.length - o)])
    }
  }
  let bytes = 0
  const worker = async (): Promise<void> => {
    const into = reuse ? Buffer.allocUnsafe(size) : undefined
    for (let p = pieces.shift(); p; p = pieces.shift()) {
      const b = await c.read(p[0], p[1], { into })
      bytes += b.length
    }
  }
  await Promise.all(Array.from({ length: depth }, worker))
  await c.close()
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  if (bytes !== dataBytes(LAB_LAYOUT)) throw new Error(`read ${bytes} bytes`)
  return { seconds, cpu: (cpu.user + cpu.system) / 1e6 }
}

/** Run nbdcopy under GNU time; returns wall and CPU seconds of the whole process. */
const nbdcopy = async (args: readonly string[]): Promise<Sample> => {
  const { stderr } = await run('/usr/bin/time', ['-f', '%e %U %S', 'nbdcopy', ...args])
  const [e, u, s] = (stderr.trim().split('\n').pop() ?? '').split(' ').map(Number)
  return { seconds: e ?? NaN, cpu: (u ?? NaN) + (s ?? NaN) }
}

const main = async (): Promise<void> => {
  await mkdir(values.scratch, { recursive: true })
  const src = join(values.scratch, 'src.qcow2')
  if (!existsSync(src)) {
    process.stderr.write(`creating ${src} …\n`)
    await makeRandomQcow2(src, LAB_LAYOUT)
  }
  const server = await serve({ image: src, format: 'qcow2', readOnly: true, shared: 8 })
  const sock = server.uri.replace(/^.*socket=/, '')
  const variants: [string, () => Promise<Sample>][] = [
    ['nbdcopy → null: (defaults: multi-conn)', () => nbdcopy([server.uri, 'null:'])],
    [
      'nbdcopy → null: (1 conn, 16 × 4 MiB)',
      () =>
        nbdcopy([
          '--connections=1',
          '--requests=16',
          '--request-size=4194304',
          server.uri,
          'null:',
        ]),
    ],
    ...configs.map(({ depth, size, reuse }): [string, () => Promise<Sample>] => [
      `NbdClient (1 conn, ${depth} × ${size >> 20} MiB${reuse ? ', reused buffers' : ''})`,
      () => clientRead(sock, depth, size, reuse),
    ]),
  ]
  const samples = new Map<string, Sample[]>(variants.map(([n]) => [n, []]))
  try {
    for (let r = 0; r < runs; r++) {
      for (const [name, f] of variants) {
        await warmRead(src)
        const s = await f()
        samples.get(name)?.push(s)
        process.stderr.write(`${name}: ${s.seconds.toFixed(2)} s, cpu ${s.cpu.toFixed(2)} s\n`)
      }
    }
  } finally {
    await server.stop()
    await stopAll()
  }
  const mb = dataBytes(LAB_LAYOUT) / 1e6
  console.log('| reader (qemu-nbd -r, 1 GiB data, warm) | median s (min–max) | MB/s | CPU s |')
  console.log('|---|---|---|---|')
  for (const [name, xs] of samples) {
    const t = xs.map((x) => x.seconds).sort((a, b) => a - b)
    const c = xs.map((x) => x.cpu).sort((a, b) => a - b)
    const med = t[Math.floor(t.length / 2)] ?? NaN
    const range = `${(t[0] ?? NaN).toFixed(2)}–${(t.at(-1) ?? NaN).toFixed(2)}`
    const cpu = (c[Math.floor(c.length / 2)] ?? NaN).toFixed(2)
    console.log(`| ${name} | ${med.toFixed(2)} (${range}) | ${(mb / med).toFixed(0)} | ${cpu} |`)
  }
}

await main()
