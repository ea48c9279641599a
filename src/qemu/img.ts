/**
 * qemu-img as a library: create, info, convert, compare, bitmap. Every call names the format
 * explicitly (`-f`), so an image is never probed, and absolute paths are used so that nothing is
 * parsed as a protocol (QEMU reads a `proto:` prefix of a file name as a protocol: see
 * "json:" and protocol file names in QEMU's docs/system/qemu-block-drivers.rst).
 */
import { isAbsolute, resolve } from 'node:path'
import * as z from 'zod'
import { BackupError } from '../errors.ts'
import { run, spawnTool } from '../io/spawn.ts'
import type { ImageFormat } from './formats.ts'

export type { ImageFormat } from './formats.ts'
export { IMAGE_FORMATS } from './formats.ts'

/** The subset of `qemu-img info --output=json` we rely on. */
const ImageInfoSchema = z.looseObject({
  filename: z.string(),
  format: z.string(),
  'virtual-size': z.number().int().nonnegative(),
  'actual-size': z.number().int().nonnegative().optional(),
  'cluster-size': z.number().int().positive().optional(),
  encrypted: z.boolean().optional(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  'dirty-flag': z.boolean().optional(),
  'format-specific': z
    .looseObject({
      type: z.string(),
      data: z
        .looseObject({
          'data-file': z.string().optional(),
          corrupt: z.boolean().optional(),
          /** `zlib` or `zstd`: how compressed clusters are (or would be) compressed. */
          'compression-type': z.string().optional(),
          bitmaps: z
            .array(
              z.looseObject({
                name: z.string(),
                granularity: z.number(),
                flags: z.array(z.string()),
              }),
            )
            .optional(),
        })
        .optional(),
    })
    .optional(),
})

/** Parsed `qemu-img info` of one image (never of its chain). */
export type ImageInfo = z.infer<typeof ImageInfoSchema>

/**
 * Resource limits for qemu-img on untrusted input: crafted images can make `qemu-img info`
 * use unbounded memory and time, so it runs with an address-space and CPU-time limit, as
 * OpenStack Nova does (its Liberty security release note, "apply limits to qemu-img").
 */
const PRLIMIT_ARGS = ['--as=1073741824', '--cpu=30', '--'] as const

const qemuImg = async (
  args: readonly string[],
  signal?: AbortSignal,
  limited = false,
): Promise<string> => {
  const [cmd, ...pre] = limited ? ['prlimit', ...PRLIMIT_ARGS, 'qemu-img'] : ['qemu-img']
  // Killed with guestbackup (even by SIGKILL): no orphan keeps writing (a merge) or holding
  // image locks a retry needs.
  const { stdout } = await run(cmd, [...pre, ...args], {
    label: 'qemu-img',
    signal,
    errorCode: 'QEMU_TOOL_FAILED',
    dieWithParent: true,
  })
  return stdout
}

const abs = (p: string): string => (isAbsolute(p) ? p : resolve(p))

/** Options of {@link createImage}. */
export interface CreateImageOptions {
  format: ImageFormat
  /** Virtual size in bytes. */
  size: number
  /** qcow2 backing file, stored verbatim in the header (use a relative name for movable chains). */
  backingFile?: string
  /** Format of the backing file; required with `backingFile` (never probed). */
  backingFormat?: ImageFormat
  /** qcow2 cluster size in bytes. Default 64 KiB. */
  clusterSize?: number | undefined
  /**
   * qcow2 compression type of the clusters written compressed (`compression_type`, QEMU ≥ 5.1).
   * Default: QEMU's, `zlib`.
   */
  compressionType?: 'zstd' | undefined
  signal?: AbortSignal | undefined
  /** Run in this directory, so a relative backing name resolves next to the image. */
  cwd?: string
}

/** Create an image. */
export const createImage = async (path: string, opts: CreateImageOptions): Promise<void> => {
  const args = ['create', '-q', '-f', opts.format]
  const o: string[] = []
  if (opts.format === 'qcow2') {
    if (opts.clusterSize !== undefined) o.push(`cluster_size=${opts.clusterSize}`)
    if (opts.compressionType !== undefined) o.push(`compression_type=${opts.compressionType}`)
  }
  if (o.length > 0) args.push('-o', o.join(','))
  if (opts.backingFile !== undefined) {
    if (opts.backingFormat === undefined) {
      throw new BackupError('INTERNAL', 'a backing file needs an explicit backing format')
    }
    args.push('-b', opts.backingFile, '-F', opts.backingFormat, '-u')
  }
  args.push(opts.cwd === undefined ? abs(path) : path, String(opts.size))
  await run('qemu-img', args, {
    signal: opts.signal,
    errorCode: 'QEMU_TOOL_FAILED',
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
  })
}

/**
 * `qemu-img info --output=json -f FORMAT PATH` of one image. Does not open backing files.
 * With `untrusted`, runs under prlimit.
 */
export const imageInfo = async (
  path: string,
  format: ImageFormat,
  opts: { signal?: AbortSignal | undefined; untrusted?: boolean; shareLock?: boolean } = {},
): Promise<ImageInfo> => {
  const args = ['info', '--output=json', '-f', format]
  if (opts.shareLock === true) args.push('-U')
  args.push(abs(path))
  const out = await qemuImg(args, opts.signal, opts.untrusted === true)
  let json: unknown
  try {
    json = JSON.parse(out)
  } catch (e) {
    throw new BackupError('QEMU_TOOL_FAILED', 'qemu-img info printed invalid JSON', { cause: e })
  }
  const parsed = ImageInfoSchema.safeParse(json)
  if (!parsed.success) {
    throw new BackupError('IMAGE_INVALID', `unexpected qemu-img info output for ${path}`, {
      cause: parsed.error,
    })
  }
  return parsed.data
}

/** Options of {@link convertImage}. */
export interface ConvertOptions {
  /** Source format; never probed. */
  sourceFormat: ImageFormat
  targetFormat: ImageFormat
  /** The target exists already (`-n`): write into it. */
  targetExists?: boolean
  /**
   * The existing target is all zeroes (`--target-is-zero`, with `targetExists`): zero regions
   * are skipped, so a fresh sparse file stays sparse.
   */
  targetIsZero?: boolean
  /**
   * Target cache mode (`-t`): qemu-img's default for convert is `unsafe` (page cache, no
   * flush); `none` writes with `O_DIRECT`, past the page cache (qemu-img(1), "cache").
   */
  targetCache?: 'none' | 'writeback' | 'unsafe'
  /** Allow out-of-order writes to the target (`-W`; not for compressed or backed targets). */
  outOfOrder?: boolean
  /** Rate limit in bytes per second (`-r`, qemu-img takes bytes with a suffix-less number). */
  rateLimit?: number | undefined
  /** Gets how far the copy got, a fraction from 0 to 1 (qemu-img `-p`). Default: none. */
  onProgress?: ((fraction: number) => void) | undefined
  signal?: AbortSignal | undefined
}

/**
 * `qemu-img convert`. `source` may be a path, an NBD URI (`nbd+unix:///x?socket=…`) or a
 * `json:{…}` spec built by guestbackup itself.
 */
export const convertImage = async (
  source: string,
  target: string,
  opts: ConvertOptions,
): Promise<void> => {
  const spec = source.startsWith('json:')
  const src = spec || source.startsWith('nbd') ? source : abs(source)
  // A json: spec names its driver itself; -f beside it would conflict.
  const args = [
    'convert',
    '-q',
    ...(spec ? [] : ['-f', opts.sourceFormat]),
    '-O',
    opts.targetFormat,
  ]
  if (opts.targetExists === true) args.push('-n')
  if (opts.targetIsZero === true) args.push('--target-is-zero')
  if (opts.targetCache !== undefined) args.push('-t', opts.targetCache)
  if (opts.outOfOrder === true) args.push('-W')
  if (opts.rateLimit !== undefined && opts.rateLimit > 0) args.push('-r', String(opts.rateLimit))
  args.push(src, abs(target))
  if (opts.onProgress === undefined) {
    await qemuImg(args, opts.signal)
    return
  }
  await qemuImgProgress(
    args.map((a) => (a === '-q' ? '-p' : a)),
    opts.signal,
    opts.onProgress,
  )
}

/**
 * qemu-img with `-p`, its progress read from stdout: `    (12.34/100%)\r` each time it moved
 * by 1 % (`qemu_progress_print` in QEMU's util/qemu-progress.c; convert calls
 * `qemu_progress_init(progress, 1.0)`), passed on as a fraction from 0 to 1.
 */
const qemuImgProgress = async (
  args: readonly string[],
  signal: AbortSignal | undefined,
  onFraction: (fraction: number) => void,
): Promise<void> => {
  const tool = spawnTool('qemu-img', args, {
    stdin: 'ignore',
    signal,
    errorCode: 'QEMU_TOOL_FAILED',
    dieWithParent: true,
  })
  let tail = ''
  tool.stdout?.setEncoding('utf8')
  tool.stdout?.on('data', (text: string) => {
    const parts = (tail + text).split('\r')
    tail = (parts.pop() ?? '').slice(-64)
    const last = parts.at(-1)
    const m = last === undefined ? null : /\((\d+(?:\.\d+)?)\/100%\)/.exec(last)
    if (m !== null) onFraction(Math.min(Number(m[1]) / 100, 1))
  })
  await tool.done
}

/** `qemu-img compare`: true if the guest-visible contents are identical. */
export const compareImages = async (
  a: string,
  aFormat: ImageFormat,
  b: string,
  bFormat: ImageFormat,
  signal?: AbortSignal,
): Promise<boolean> => {
  try {
    await run('qemu-img', ['compare', '-q', '-f', aFormat, '-F', bFormat, abs(a), abs(b)], {
      signal,
      errorCode: 'QEMU_TOOL_FAILED',
    })
    return true
  } catch (e) {
    if (e instanceof BackupError && e.details?.['exit'] === 1) return false
    throw e
  }
}

/**
 * `qemu-img commit -d SPEC`: write the clusters of the top image of `spec` (a `json:{…}` chain
 * built by guestbackup) into its immediate backing image. `-d` keeps the top image as it was, so
 * its guest view never changes while the backing image below it takes its data.
 */
export const commitImage = async (
  spec: string,
  signal?: AbortSignal,
  onProgress?: (fraction: number) => void,
): Promise<void> => {
  if (!spec.startsWith('json:')) {
    throw new BackupError('IMAGE_INVALID', 'commit takes an explicit json: chain spec only')
  }
  if (onProgress === undefined) await qemuImg(['commit', '-q', '-d', spec], signal)
  else await qemuImgProgress(['commit', '-p', '-d', spec], signal, onProgress)
}

/**
 * True if a running QEMU holds the image's write lock. QEMU's file driver takes OFD locks on
 * bytes 100+ of the file for the permissions it holds (`block/file-posix.c`,
 * `raw_apply_lock_bytes`); a writer holds the "write" byte, which only a writable open checks, so
 * the image is opened writable with the raw driver, which writes nothing, and closed at once.
 * Other failures (permissions, a read-only medium) tell nothing: false.
 */
export const imageInUse = async (path: string, signal?: AbortSignal): Promise<boolean> => {
  try {
    await run('qemu-io', ['-f', 'raw', '-c', 'quit', abs(path)], {
      signal,
      errorCode: 'QEMU_TOOL_FAILED',
      dieWithParent: true,
    })
    return false
  } catch (e) {
    if (signal?.aborted === true) throw e
    const stderr = e instanceof BackupError ? e.details?.['stderr'] : undefined
    return typeof stderr === 'string' && stderr.includes('Failed to get "write" lock')
  }
}
