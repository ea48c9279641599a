/**
 * The tools measured: guestbackup's CLI and the reference copies (nbdcopy between two
 * qemu-nbd, qemu-img convert). Each factory returns a {@link Variant} working in its own
 * subdirectory of the scenario dir.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, runMeasured, serve } from './procs.ts'
import type { Measured, Server } from './procs.ts'
import type { ScenarioContext, Variant } from './types.ts'

/** The source image of a scenario. */
export interface Source {
  /** Absolute path of the qcow2. */
  path: string
  virtualSize: number
}

/**
 * qemu-img compare; throws when the images differ. `forceShare` (`-U`) reads an image that a
 * running QEMU holds locked.
 */
export const assertSameContent = async (
  a: string,
  b: string,
  opts: { forceShare?: boolean } = {},
): Promise<void> => {
  const share = opts.forceShare === true ? ['-U'] : []
  try {
    await run('qemu-img', ['compare', '-q', ...share, '-f', 'qcow2', '-F', 'qcow2', a, b])
  } catch (e) {
    throw new Error(`output ${b} differs from source ${a}`, { cause: e })
  }
}

const findFiles = async (dir: string, suffix: string): Promise<string[]> => {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries
    .filter((e) => e.isFile() && e.name.endsWith(suffix))
    .map((e) => join(e.parentPath, e.name))
}

const subdir = async (ctx: ScenarioContext, name: string): Promise<string> => {
  const d = join(ctx.dir, name)
  await mkdir(d, { recursive: true })
  return d
}

const createQcow2 = (path: string, size: number): Promise<unknown> =>
  run('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)])

/**
 * `bin/guestbackup backup` of the source as disk scsi0 of VM 100 into a fresh store (created
 * untimed with `guestbackup init` before every run). The whole CLI call is timed.
 */
/**
 * What our backup does before it reports success, the same for every row that runs it: every
 * target connection sends NBD_CMD_FLUSH (qemu-nbd, cache=none: O_DIRECT data, fdatasync), the
 * image, manifest and directories are fsynced, then the harness's `sync`.
 */
/**
 * The reference's target server: the same qemu-nbd flags as our backup's target (cache=none,
 * O_DIRECT, which costs less CPU than writeback here: bench/copy-sweep.ts --cache), so the
 * rows differ only in the client.
 */
const TARGET = { format: 'qcow2', cache: 'none', cacheFallback: 'writeback' } as const

export const OURS_DURABILITY =
  'NBD flush of every target connection (qemu-nbd cache=none: O_DIRECT writes, fdatasync), ' +
  'fsync of the image, the manifest and the directories; then `sync`'

export const guestbackupBackup = async (ctx: ScenarioContext, src: Source): Promise<Variant> => {
  const dir = await subdir(ctx, 'ours')
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const store = join(dir, 'store')
  const conf = join(dir, 'vm.conf')
  await writeFile(
    conf,
    `name: bench\nmemory: 512\nscsi0: local:100/vm-100-disk-0.qcow2,size=${src.virtualSize}\n`,
  )
  return {
    label: '**guestbackup backup** (whole CLI call, digests, no read-back)',
    role: 'ours',
    durability: OURS_DURABILITY,
    prepare: async () => {
      await rm(store, { recursive: true, force: true })
      // The copy as nbdcopy does it; the read-back a store does by default for the first
      // backup of a chain is measured in the digests scenario (bench/integrity.ts). nbdcopy
      // writes plain clusters, so does this store; compression has its own row (compress.ts).
      await run(cli, ['init', store, '--verify-after-backup', 'never', '--vm-compress', 'none'])
    },
    run: () =>
      runMeasured(
        cli,
        [
          'backup',
          '--store',
          store,
          '--vmid',
          '100',
          '--config',
          conf,
          '--disk',
          `scsi0=${src.path}`,
        ],
        join(dir, 'rss'),
        { node: true },
      ),
    verify: async () => {
      const out = await findFiles(store, '.qcow2')
      if (out.length !== 1 || out[0] === undefined) {
        throw new Error(`expected one qcow2 in ${store}, found ${out.length}`)
      }
      await assertSameContent(src.path, out[0])
    },
    cleanup: () => rm(store, { recursive: true, force: true }),
  }
}

/**
 * `nbdcopy --destination-is-zero` from a read-only qemu-nbd of the source into a fresh qcow2
 * served by a writable qemu-nbd. Both servers run already (untimed); timed: nbdcopy + sync (the
 * tool alone, its best case). Servers are started with guestbackup's own launcher, so
 * their flags are those of a backup.
 */
export const nbdcopyServersRunning = async (
  ctx: ScenarioContext,
  src: Source,
): Promise<Variant> => {
  const dir = await subdir(ctx, 'nbdcopy')
  const out = join(dir, 'out.qcow2')
  let source: Server | undefined
  let target: Server | undefined
  const stopTarget = async (): Promise<void> => {
    await target?.stop()
    target = undefined
  }
  return {
    label: 'nbdcopy qemu-nbd → qemu-nbd (servers already running)',
    role: 'reference',
    durability:
      'nbdcopy `--flush` (NBD_CMD_FLUSH: the target qemu-nbd, cache=none as ours, fdatasyncs); ' +
      'the target is stopped untimed; then `sync`',
    prepare: async () => {
      source ??= await serve({
        image: src.path,
        format: 'qcow2',
        readOnly: true,
        signal: ctx.signal,
      })
      await rm(out, { force: true })
      await createQcow2(out, src.virtualSize)
      target = await serve({ ...TARGET, image: out, signal: ctx.signal })
    },
    run: async (): Promise<Measured> => {
      if (source === undefined || target === undefined) throw new Error('servers not started')
      return runMeasured(
        'nbdcopy',
        ['--destination-is-zero', '--flush', source.uri, target.uri],
        join(dir, 'rss'),
      )
    },
    verify: async () => {
      await stopTarget()
      await assertSameContent(src.path, out)
    },
    cleanup: async () => {
      await stopTarget()
      // The read-only source server holds the image's write-exclusion lock: the other rows,
      // ours among them, refuse a disk a running QEMU holds, so it is stopped between runs.
      await source?.stop()
      source = undefined
      await rm(out, { force: true })
    },
    dispose: async () => {
      await stopTarget()
      await source?.stop()
      source = undefined
    },
  }
}

/**
 * Everything a script would do for the same copy, all timed: start a read-only qemu-nbd on the
 * source, create the target qcow2, start a writable qemu-nbd on it, `nbdcopy
 * --destination-is-zero`, stop both servers (the target flushes and closes), sync. This is the
 * work our CLI does minus Node start-up and store bookkeeping.
 */
export const nbdcopyEndToEnd = async (ctx: ScenarioContext, src: Source): Promise<Variant> => {
  const dir = await subdir(ctx, 'nbdcopy-e2e')
  const out = join(dir, 'out.qcow2')
  return {
    label: 'nbdcopy end to end (start 2 × qemu-nbd, copy, stop)',
    role: 'reference',
    durability:
      'the target qemu-nbd (cache=none as ours) flushes (fdatasync) and closes the image on ' +
      'SIGTERM, inside the timed run; then `sync`',
    prepare: () => rm(out, { force: true }),
    run: async (): Promise<Measured> => {
      const source = await serve({
        image: src.path,
        format: 'qcow2',
        readOnly: true,
        signal: ctx.signal,
      })
      try {
        await createQcow2(out, src.virtualSize)
        const target = await serve({ ...TARGET, image: out, signal: ctx.signal })
        try {
          return await runMeasured(
            'nbdcopy',
            ['--destination-is-zero', source.uri, target.uri],
            join(dir, 'rss'),
          )
        } finally {
          await target.stop()
        }
      } finally {
        await source.stop()
      }
    },
    verify: () => assertSameContent(src.path, out),
    cleanup: () => rm(out, { force: true }),
  }
}

/** `qemu-img convert -f qcow2 -O qcow2 SRC DST` (defaults) into a new file. */
export const qemuImgConvert = async (ctx: ScenarioContext, src: Source): Promise<Variant> => {
  const dir = await subdir(ctx, 'convert')
  const out = join(dir, 'out.qcow2')
  return {
    label: '`qemu-img convert -f qcow2 -O qcow2`',
    role: 'reference',
    durability: 'qemu-img closes the image (flushing its caches to the page cache); then `sync`',
    prepare: () => rm(out, { force: true }),
    run: () =>
      runMeasured(
        'qemu-img',
        ['convert', '-f', 'qcow2', '-O', 'qcow2', src.path, out],
        join(dir, 'rss'),
      ),
    verify: () => assertSameContent(src.path, out),
    cleanup: () => rm(out, { force: true }),
  }
}

/** `bin/guestbackup --version`: the fixed cost of starting the CLI (Node + tsx + imports). */
export const guestbackupStart = async (ctx: ScenarioContext): Promise<Variant> => {
  const dir = await subdir(ctx, 'start')
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  return {
    label: '`guestbackup --version` (CLI start-up only)',
    role: 'info',
    run: () => runMeasured(cli, ['--version'], join(dir, 'rss'), { node: true }),
  }
}
