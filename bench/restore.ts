/**
 * Restore and merge against the QEMU tools doing the same copy: `guestbackup restore` of a full
 * backup and of a chain of four against `qemu-img convert … -O raw` of the same stored images,
 * and `guestbackup remove` of a middle backup against `qemu-img commit` of the same two images.
 * The stores are made untimed by our CLI: offline backups of a stopped qcow2 disk (a copy of the
 * lab source), the incrementals through the disk's persistent dirty bitmap.
 */
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, runMeasured } from './lib/procs.ts'
import { LAB_LAYOUT, dataBytes } from './lib/source.ts'
import { fmtBytes } from './lib/stats.ts'
import { listBackups } from './lib/live.ts'
import type { ListedBackup } from './lib/live.ts'
import type { Scenario, ScenarioContext, Variant } from './lib/types.ts'

const MiB = 1024 ** 2
/** Each incremental of the chain: this many writes of {@link INC_WRITE} at spread offsets. */
const INC_WRITES = 8
const INC_WRITE = 16 * MiB

const cliOf = (ctx: ScenarioContext): string => join(ctx.repo, 'bin', 'guestbackup')

/** `<store>/<vmid>/<name>/drive-scsi0.qcow2` of a listed backup. */
const imageOf = (store: string, b: ListedBackup): string => {
  const m = /^[^:]+:backup\/(\d+\/[^/]+)$/.exec(b.volid)
  if (m?.[1] === undefined) throw new Error(`unexpected volume id ${b.volid}`)
  return join(store, m[1], 'drive-scsi0.qcow2')
}

/** The explicit `json:` spec of a chain (top first), as a reference tool is given it. */
const chainJson = (images: readonly string[]): string => {
  let spec: unknown = null
  for (const filename of [...images].reverse()) {
    spec = { driver: 'qcow2', file: { driver: 'file', filename }, backing: spec }
  }
  return `json:${JSON.stringify(spec)}`
}

/** `qemu-img compare` of a raw output with a qcow2 (or `json:` chain) source; throws if not equal. */
const assertRawIs = async (raw: string, source: string): Promise<void> => {
  const fmt = source.startsWith('json:') ? [] : ['-F', 'qcow2']
  await run('qemu-img', ['compare', '-q', '-f', 'raw', ...fmt, raw, source]).catch((e: unknown) => {
    throw new Error(`restored ${raw} differs from ${source.slice(0, 200)}`, { cause: e })
  })
}

/**
 * A store of VM 100 made from a copy of the lab disk: a full backup, then `incrementals`
 * incremental ones, each after {@link INC_WRITES} × {@link INC_WRITE} writes (qemu-io, pattern
 * per round) at offsets spread over the disk. Returns the backups oldest first and, per
 * backup, the disk's content at its instant (a qcow2 copy) for the checks.
 */
const makeStore = async (
  ctx: ScenarioContext,
  name: string,
  incrementals: number,
): Promise<{ store: string; backups: ListedBackup[]; disk: string }> => {
  const cli = cliOf(ctx)
  const dir = join(ctx.dir, name)
  await mkdir(dir, { recursive: true })
  const store = join(dir, 'store')
  const disk = join(dir, 'disk.qcow2')
  const conf = join(dir, 'vm.conf')
  await writeFile(conf, 'name: bench\nmemory: 512\n')
  await copyFile(await ctx.labSource(), disk)
  await run(cli, [
    'init',
    store,
    '--vm-backup-mode',
    'incremental',
    '--verify-after-backup',
    'never',
    // Against qemu-img's work on the same plain qcow2 images (compressed ones: compress.ts).
    '--vm-compress',
    'none',
  ])
  const backup = (): Promise<unknown> =>
    run(cli, [
      'backup',
      '--store',
      store,
      '--vmid',
      '100',
      '--config',
      conf,
      '--disk',
      `scsi0=${disk}`,
    ])
  ctx.log(`${name}: full backup of the lab disk`)
  await backup()
  const size = LAB_LAYOUT.virtualSize
  for (let i = 1; i <= incrementals; i++) {
    const writes: string[] = []
    for (let k = 0; k < INC_WRITES; k++) {
      // Spread over the disk, shifted per round: partly over data, partly over holes.
      const off = Math.floor(((k + i / (incrementals + 1)) * size) / INC_WRITES / MiB) * MiB
      writes.push('-c', `write -P ${0x30 + i} ${off} ${INC_WRITE}`)
    }
    await run('qemu-io', ['-f', 'qcow2', ...writes, disk])
    ctx.log(`${name}: incremental ${i} of ${incrementals}`)
    await backup()
  }
  const backups = (await listBackups(cli, store)).reverse()
  for (const [i, b] of backups.entries()) {
    const want = i === 0 ? null : backups[i - 1]?.volid
    if (b.parent !== want) {
      throw new Error(
        `INVALID SCENARIO: backup ${b.volid} has parent ${String(b.parent)}, not ${String(want)}`,
      )
    }
  }
  return { store, backups, disk }
}

/** `guestbackup restore` of `volid` into a fresh directory, against `qemu-img convert`. */
const restoreVariants = (
  ctx: ScenarioContext,
  name: string,
  store: string,
  volid: string,
  source: string,
): Variant[] => {
  const cli = cliOf(ctx)
  const dir = join(ctx.dir, name)
  const target = join(dir, 'target')
  const out = join(dir, 'out.raw')
  return [
    {
      label: '**guestbackup restore** (whole CLI call)',
      role: 'ours',
      prepare: () => rm(target, { recursive: true, force: true }),
      run: () =>
        runMeasured(
          cli,
          ['restore', '--store', store, volid, '--target', target],
          join(dir, 'rss-ours'),
          {
            node: true,
          },
        ),
      verify: () => assertRawIs(join(target, 'drive-scsi0.raw'), source),
      cleanup: () => rm(target, { recursive: true, force: true }),
    },
    {
      label: '`qemu-img convert -O raw` of the stored image(s)',
      role: 'reference',
      prepare: () => rm(out, { force: true }),
      run: () =>
        runMeasured(
          'qemu-img',
          [
            'convert',
            ...(source.startsWith('json:') ? [] : ['-f', 'qcow2']),
            '-O',
            'raw',
            source,
            out,
          ],
          join(dir, 'rss-ref'),
        ),
      verify: () => assertRawIs(out, source),
      cleanup: () => rm(out, { force: true }),
    },
  ]
}

const DURABILITY =
  'same durability: neither side fsyncs the disk data (ours writes it with O_DIRECT, ' +
  "`-t none`, and qemu-img flushes at close; the reference uses convert's default " +
  '`cache=unsafe`, page cache and no flush); the harness `sync`s after every timed run'

/** Restore of a full backup of the lab disk, against `qemu-img convert -f qcow2 -O raw`. */
export const restoreFull: Scenario = async (ctx) => {
  const { store, backups } = await makeStore(ctx, 'restore-full', 0)
  const [full] = backups
  if (full === undefined) throw new Error('no backup')
  const image = imageOf(store, full)
  return {
    title: 'Restore, full backup',
    description:
      `restore of a full backup of the lab disk (${fmtBytes(LAB_LAYOUT.virtualSize)}, ` +
      `${fmtBytes(dataBytes(LAB_LAYOUT))} data) into a new sparse raw file, against ` +
      `\`qemu-img convert -f qcow2 -O raw\` of the stored image; warm cache; ${DURABILITY}`,
    dataBytes: dataBytes(LAB_LAYOUT),
    warmFiles: [image],
    variants: restoreVariants(ctx, 'restore-full', store, full.volid, image),
  }
}

/** Restore of the newest of a chain of four, against `qemu-img convert` of the explicit chain. */
export const restoreChain: Scenario = async (ctx) => {
  const { store, backups } = await makeStore(ctx, 'restore-chain', 3)
  const top = backups.at(-1)
  if (top === undefined || backups.length !== 4) throw new Error('expected a chain of four')
  const images = [...backups].reverse().map((b) => imageOf(store, b))
  return {
    title: 'Restore, chain of 4',
    description:
      `restore of the newest of a full backup of the lab disk and 3 incrementals (each ` +
      `${INC_WRITES} × ${fmtBytes(INC_WRITE)} written), against \`qemu-img convert -O raw\` of ` +
      `the top image with its backing chain given explicitly (json: spec); warm cache; ${DURABILITY}`,
    dataBytes: dataBytes(LAB_LAYOUT),
    warmFiles: images,
    variants: restoreVariants(ctx, 'restore-chain', store, top.volid, chainJson(images)),
  }
}

/** Allocated bytes of a file (`du -B1`). */
const allocated = async (path: string): Promise<number> =>
  Number((await run('du', ['-B1', path])).stdout.split('\t')[0])

/**
 * `guestbackup remove` of the second backup of a chain of four (a middle one: the third builds
 * on it), against `qemu-img commit -d` of the third image into the second on a copy of the same
 * store. Every round starts from a fresh copy (untimed).
 */
export const mergeMiddle: Scenario = async (ctx) => {
  const { store, backups } = await makeStore(ctx, 'merge', 3)
  const [, middle, child] = backups
  if (middle === undefined || child === undefined) throw new Error('expected a chain of four')
  const cli = cliOf(ctx)
  const dir = join(ctx.dir, 'merge')
  const [pImage, cImage] = [imageOf(store, middle), imageOf(store, child)]
  const [pBytes, cBytes] = [await allocated(pImage), await allocated(cImage)]
  const copyOf = (name: string): { store: string; p: string; c: string } => {
    const s = join(dir, name)
    const at = (img: string): string => join(s, img.slice(store.length + 1))
    return { store: s, p: at(pImage), c: at(cImage) }
  }
  const ours = copyOf('ours')
  const ref = copyOf('ref')
  const fresh = async (to: string): Promise<void> => {
    await rm(to, { recursive: true, force: true })
    await run('cp', ['-a', store, to])
  }
  const guestView = chainJson([cImage, pImage, imageOf(store, backups[0] ?? middle)])
  const variants: Variant[] = [
    {
      label: '**guestbackup remove** of the middle backup (whole CLI call)',
      role: 'ours',
      dataBytes: cBytes,
      prepare: () => fresh(ours.store),
      run: () =>
        runMeasured(cli, ['remove', '--store', ours.store, middle.volid], join(dir, 'rss-ours'), {
          node: true,
        }),
      verify: async () => {
        const rows = await listBackups(cli, ours.store)
        const merged = rows.find((r) => r.volid === child.volid)
        if (rows.length !== 3 || merged?.parent !== backups[0]?.volid) {
          throw new Error(`after remove: ${JSON.stringify(rows)}`)
        }
        await run('qemu-img', ['compare', '-q', '-f', 'qcow2', ours.c, guestView])
      },
      cleanup: () => rm(ours.store, { recursive: true, force: true }),
    },
    {
      label: '`qemu-img commit -d` of the dependant into the middle image',
      role: 'reference',
      dataBytes: cBytes,
      prepare: () => fresh(ref.store),
      run: () =>
        runMeasured('qemu-img', ['commit', '-q', '-f', 'qcow2', '-d', ref.c], join(dir, 'rss-ref')),
      verify: async () => {
        await run('qemu-img', ['compare', '-q', '-f', 'qcow2', ref.p, guestView])
      },
      cleanup: () => rm(ref.store, { recursive: true, force: true }),
    },
  ]
  const details = (): string[] => [
    `- The removed backup's image holds ${fmtBytes(pBytes)}, its dependant's ${fmtBytes(cBytes)} ` +
      "(allocated). Both rows write the dependant's clusters into the removed image " +
      `(${fmtBytes(cBytes)} at most); ours then fsyncs it, renames it over the dependant's image ` +
      'and rewrites the manifests (src/provider/directory/merge.ts).',
    '- After the last round, `list` must show three backups with the dependant on the full ' +
      "one, and the dependant's image must show the guest view it had before the merge.",
  ]
  return {
    title: 'Remove a middle backup (merge)',
    description:
      'remove of the second of a chain of four (full + 3 incrementals of ' +
      `${INC_WRITES} × ${fmtBytes(INC_WRITE)} each), which merges the third into it, against ` +
      '`qemu-img commit -d` of the third image into the second on a fresh copy of the same ' +
      'store; same durability: both flush the written image (qemu-img commit closes it with ' +
      'cache=writeback, a flush; ours fsyncs it before the rename), the harness `sync`s after ' +
      'every timed run',
    dataBytes: cBytes,
    warmFiles: [pImage, cImage],
    variants,
    details,
  }
}
