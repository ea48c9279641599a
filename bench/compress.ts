/**
 * What `vm-compress zstd` costs and saves: the full backup of a 2 GiB qcow2 holding a realistic
 * mix (text, real ELF binaries, allocated zeroes, random data, holes) into a `vm-compress zstd`
 * store against the same backup into a `vm-compress none` store, with the bytes each stores.
 * `qemu-img convert -c` of the same source into a zstd qcow2 is shown for reference.
 */
import { randomFill } from 'node:crypto'
import { open, readdir, readFile, rm, stat } from 'node:fs/promises'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { VariantResult } from './lib/harness.ts'
import { run, runMeasured } from './lib/procs.ts'
import { fmtBytes, summarize } from './lib/stats.ts'
import type { Role, Scenario, ScenarioContext, Variant } from './lib/types.ts'
import { assertSameContent } from './lib/variants.ts'

const randomFillAsync = promisify(randomFill)

const MiB = 1024 ** 2

/** Per 32 MiB of the disk: these pieces in turn, the rest a hole. */
const MIX = { text: 6 * MiB, binaries: 6 * MiB, zeroes: 2 * MiB, random: 2 * MiB } as const
const STRIDE = 32 * MiB
const SIZE = 2 * 1024 ** 3
const STRIDES = SIZE / STRIDE
const PER_STRIDE = MIX.text + MIX.binaries + MIX.zeroes + MIX.random
/** Guest data bytes (holes not counted; the allocated zeroes are). */
const DATA_BYTES = STRIDES * PER_STRIDE

/** xorshift32: the same text in every benchmark run. */
const prng = (seed: number): (() => number) => {
  let x = seed >>> 0 || 1
  return () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x
  }
}

/**
 * Text like logs and documents: lines of words drawn from the GPL's vocabulary (repeated), with
 * perturbed words (a changed letter), numbers and timestamps, filled into `buf`.
 */
const textFiller = async (): Promise<(buf: Buffer) => void> => {
  const gpl = await readFile('/usr/share/common-licenses/GPL-3', 'latin1').catch(() => '')
  const vocab = [...new Set(gpl.split(/[^A-Za-z]+/).filter((w) => w.length > 1))]
  if (vocab.length < 100) vocab.push(...'lorem ipsum dolor sit amet consectetur'.split(' '))
  const next = prng(0x9e3779b9)
  return (buf) => {
    let o = 0
    while (o < buf.length) {
      const words: string[] = [`2026-12-02T10:${String(next() % 60).padStart(2, '0')}Z`]
      const n = 4 + (next() % 12)
      for (let i = 0; i < n; i++) {
        let w = vocab[next() % vocab.length] ?? 'x'
        if (next() % 16 === 0) w = w.slice(0, -1) + String.fromCharCode(97 + (next() % 26))
        if (next() % 8 === 0) w = String(next() % 100_000)
        words.push(w)
      }
      o += buf.write(`${words.join(' ')}\n`, o, 'latin1')
    }
  }
}

/** Regular files of /usr/bin and /usr/lib (real ELF binaries and libraries), in order. */
const binaryFiles = async (): Promise<string[]> => {
  const out: string[] = []
  for (const dir of ['/usr/bin', '/usr/lib/x86_64-linux-gnu', '/usr/lib']) {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
    for (const e of entries) if (e.isFile()) out.push(join(dir, e.name))
  }
  return out.sort()
}

/**
 * Fill `buf` with the next files of `files` (cycled), each starting on a 4 KiB boundary like in
 * a file system, the slack zero.
 */
const binaryFiller = (files: readonly string[]): ((buf: Buffer) => Promise<void>) => {
  let next = 0
  return async (buf) => {
    buf.fill(0)
    let o = 0
    while (o < buf.length && files.length > 0) {
      const f = files[next++ % files.length] ?? ''
      await using fh = await open(f, 'r').catch(() => undefined)
      if (fh === undefined) continue
      const { bytesRead } = await fh.read(buf, o, buf.length - o, 0)
      o += Math.ceil(bytesRead / 4096) * 4096
    }
  }
}

const writeAt = async (fh: Awaited<ReturnType<typeof open>>, buf: Buffer, pos: number) => {
  let done = 0
  while (done < buf.length) {
    done += (await fh.write(buf, done, buf.length - done, pos + done)).bytesWritten
  }
}

/**
 * The 2 GiB source: per 32 MiB, {@link MIX} in turn, then a hole. Written into a sparse raw
 * file, converted to qcow2 (the zeroes become holes there), then the zero pieces are written
 * into the qcow2 as allocated zero data (a guest's zeroed blocks), which the copy must detect.
 */
export const makeMixedQcow2 = async (qcow2: string, signal: AbortSignal): Promise<void> => {
  const raw = `${qcow2}.raw`
  const text = await textFiller()
  const binaries = binaryFiller(await binaryFiles())
  const buf = Buffer.allocUnsafe(Math.max(MIX.text, MIX.binaries, MIX.random))
  {
    await using fh = await open(raw, 'w')
    await fh.truncate(SIZE)
    for (let s = 0; s < STRIDES; s++) {
      signal.throwIfAborted()
      let pos = s * STRIDE
      text(buf.subarray(0, MIX.text))
      await writeAt(fh, buf.subarray(0, MIX.text), pos)
      pos += MIX.text
      await binaries(buf.subarray(0, MIX.binaries))
      await writeAt(fh, buf.subarray(0, MIX.binaries), pos)
      pos += MIX.binaries + MIX.zeroes
      await randomFillAsync(buf.subarray(0, MIX.random))
      await writeAt(fh, buf.subarray(0, MIX.random), pos)
    }
  }
  try {
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
  } finally {
    await rm(raw, { force: true })
  }
  const zeroes = Array.from({ length: STRIDES }, (_, s) => {
    const pos = s * STRIDE + MIX.text + MIX.binaries
    return ['-c', `write -P 0 ${pos} ${MIX.zeroes}`]
  })
  await run('qemu-io', ['-f', 'qcow2', ...zeroes.flat(), qcow2])
}

/** The one qcow2 under `dir`. */
const imageIn = async (dir: string): Promise<string> => {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  const images = entries.filter((e) => e.isFile() && e.name.endsWith('.qcow2'))
  const [image] = images
  if (images.length !== 1 || image === undefined) throw new Error(`expected one image in ${dir}`)
  return join(image.parentPath, image.name)
}

/** Bytes the file allocates. */
const allocated = async (path: string): Promise<number> => (await stat(path)).blocks * 512

/** The compression type `qemu-img info` reports for `image`. */
const compressionType = async (image: string): Promise<string | undefined> => {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', image])
  const info = JSON.parse(stdout) as { 'format-specific'?: { data?: Record<string, unknown> } }
  const t = info['format-specific']?.data?.['compression-type']
  return typeof t === 'string' ? t : undefined
}

/** A variant whose output image is checked and whose stored bytes are recorded every run. */
interface Stored {
  variant: Variant
  stored: number[]
}

/** A full backup of `src` into a fresh store made by `init` with `compress`. */
const backupInto = async (
  ctx: ScenarioContext,
  src: string,
  compress: 'zstd' | 'none',
  label: string,
  role: Role,
): Promise<Stored> => {
  const dir = join(ctx.dir, `store-${compress}`)
  await mkdir(dir, { recursive: true })
  const conf = join(dir, 'vm.conf')
  await writeFile(conf, 'name: bench\nmemory: 512\n')
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const store = join(dir, 'store')
  const stored: number[] = []
  const args = ['backup', '--store', store, '--vmid', '100', '--config', conf]
  const variant: Variant = {
    label,
    role,
    prepare: async () => {
      await rm(store, { recursive: true, force: true })
      const init = ['init', store, '--vm-compress', compress, '--verify-after-backup', 'never']
      await run(cli, init)
    },
    run: () =>
      runMeasured(cli, [...args, '--disk', `scsi0=${src}`], join(dir, 'rss'), { node: true }),
    verify: async () => {
      const image = await imageIn(store)
      await assertSameContent(src, image)
      const type = await compressionType(image)
      if ((compress === 'zstd') !== (type === 'zstd')) {
        throw new Error(`${image} has compression type ${String(type)} in a ${compress} store`)
      }
    },
    cleanup: async () => {
      stored.push(await allocated(await imageIn(store)))
      await rm(store, { recursive: true, force: true })
    },
  }
  return { variant, stored }
}

/** `qemu-img convert -c` of `src` into a zstd qcow2: QEMU's own compressed copy. */
const convertCompressed = (ctx: ScenarioContext, src: string): Stored => {
  const out = join(ctx.dir, 'convert-c.qcow2')
  const stored: number[] = []
  const args = ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', 'compression_type=zstd']
  const variant: Variant = {
    label: '`qemu-img convert -c -O qcow2 -o compression_type=zstd` (no digests, no fsync)',
    role: 'info',
    prepare: () => rm(out, { force: true }),
    run: () => runMeasured('qemu-img', [...args, src, out], join(ctx.dir, 'rss-convert')),
    verify: () => assertSameContent(src, out),
    cleanup: async () => {
      stored.push(await allocated(out))
      await rm(out, { force: true })
    },
  }
  return { variant, stored }
}

/** Full backup into a `vm-compress zstd` store against one into a `vm-compress none` store. */
export const compressedBackup: Scenario = async (ctx) => {
  const src = join(ctx.dir, 'mixed.qcow2')
  ctx.log('  writing the mixed 2 GiB source (text, binaries, zeroes, random)')
  await makeMixedQcow2(src, ctx.signal)
  const zstd = await backupInto(
    ctx,
    src,
    'zstd',
    '**guestbackup backup, `vm-compress zstd`**',
    'ours',
  )
  const none = await backupInto(
    ctx,
    src,
    'none',
    'the same backup, `vm-compress none`',
    'reference',
  )
  const convert = convertCompressed(ctx, src)
  const rows = [zstd, none, convert]
  const mb = (n: number): string => `${(n / MiB).toFixed(1)} MiB`
  const details = (results: readonly VariantResult[]): string[] => {
    const noneStored = summarize(none.stored).median
    return [
      '| variant | median s | stored (median) | stored ÷ uncompressed backup |',
      '| --- | ---: | ---: | ---: |',
      ...rows.map((r, i) => {
        const s = summarize(r.stored).median
        const secs = results[i]?.seconds ?? []
        const t = secs.length > 0 ? summarize(secs).median.toFixed(2) : '–'
        return `| ${r.variant.label} | ${t} | ${mb(s)} | ${((100 * s) / noneStored).toFixed(1)} % |`
      }),
      '',
      `- Source: ${fmtBytes(SIZE)} qcow2; per ${fmtBytes(STRIDE)}: ${fmtBytes(MIX.text)} text ` +
        `(log-like lines of the GPL's words, some perturbed, numbers), ${fmtBytes(MIX.binaries)} ` +
        `of files from /usr/bin and /usr/lib (ELF binaries and libraries, 4 KiB-aligned), ` +
        `${fmtBytes(MIX.zeroes)} of allocated zeroes, ${fmtBytes(MIX.random)} random, the rest ` +
        `a hole: ${fmtBytes(DATA_BYTES)} of data.`,
      '- Stored = allocated bytes of the image file. Both backups take digests, skip the ' +
        'read-back (`--verify-after-backup never`) and have the same durability: the CLI ' +
        'flushes the image over NBD (qemu-nbd) before the commit, which fsyncs the backup dir ' +
        'and the manifest; `qemu-img convert` does not flush. The harness runs `sync` after ' +
        'every timed run, which is inside the time of all three.',
    ]
  }
  return {
    title: 'Compressed VM backup',
    description:
      `full backup of a ${fmtBytes(SIZE)} qcow2 holding a mix of text, real binaries, ` +
      'allocated zeroes and random data into a `vm-compress zstd` store against a ' +
      '`vm-compress none` store (stored bytes in the section below); warm cache',
    dataBytes: DATA_BYTES,
    warmFiles: [src],
    variants: rows.map((r) => r.variant),
    details,
    teardown: () => rm(src, { force: true }),
  }
}
