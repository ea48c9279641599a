/**
 * What proving backups costs: the full backup of the lab disk with digests against the same
 * backup without them (the baseline switch `GUESTBACKUP_BENCH_WITHOUT_DIGESTS=1` writes
 * unverifiable version 1 manifests; it exists for this comparison only), the default read-back
 * of a chain's first backup, and `verify` against `sha256sum` over the same stored image.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, runMeasured } from './lib/procs.ts'
import { LAB_LAYOUT, dataBytes } from './lib/source.ts'
import { fmtBytes } from './lib/stats.ts'
import type { Role, Scenario, ScenarioContext, Variant } from './lib/types.ts'

const prepareDir = async (ctx: ScenarioContext, name: string): Promise<string> => {
  const d = join(ctx.dir, name)
  await mkdir(d, { recursive: true })
  await writeFile(join(d, 'vm.conf'), 'name: bench\nmemory: 512\n')
  return d
}

const storedImage = async (store: string): Promise<string> => {
  const entries = await readdir(store, { recursive: true, withFileTypes: true })
  const images = entries.filter((e) => e.isFile() && e.name.endsWith('.qcow2'))
  const [image] = images
  if (images.length !== 1 || image === undefined) throw new Error(`expected one image in ${store}`)
  return join(image.parentPath, image.name)
}

/** A full backup of `src` into a fresh store made with `initArgs`, with `env`. */
const backupVariant = async (
  ctx: ScenarioContext,
  name: string,
  label: string,
  role: Role,
  src: string,
  initArgs: readonly string[],
  env: Record<string, string> = {},
): Promise<Variant> => {
  const dir = await prepareDir(ctx, name)
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const store = join(dir, 'store')
  const args = ['backup', '--store', store, '--vmid', '100', '--config', join(dir, 'vm.conf')]
  return {
    label,
    role,
    prepare: async () => {
      await rm(store, { recursive: true, force: true })
      await run(cli, ['init', store, '--vm-compress', 'none', ...initArgs])
    },
    run: () =>
      runMeasured(cli, [...args, '--disk', `scsi0=${src}`], join(dir, 'rss'), { node: true, env }),
    verify: async () => {
      await storedImage(store)
    },
    cleanup: () => rm(store, { recursive: true, force: true }),
  }
}

/** Full backup with and without digests, and with the default read-back. */
export const digestCost: Scenario = async (ctx) => {
  const src = await ctx.labSource()
  const never = ['--verify-after-backup', 'never']
  return {
    title: 'Digests on the backup path',
    description:
      `the full backup of the lab disk (${fmtBytes(LAB_LAYOUT.virtualSize)}, ` +
      `${fmtBytes(dataBytes(LAB_LAYOUT))} data) with block digests hashed in the copy, against ` +
      'the same backup without digests; the read-back of verify-after-backup=first is shown apart',
    dataBytes: dataBytes(LAB_LAYOUT),
    warmFiles: [src],
    variants: [
      await backupVariant(ctx, 'd-on', '**guestbackup backup** with digests', 'ours', src, never),
      await backupVariant(
        ctx,
        'd-off',
        'the same backup without digests',
        'reference',
        src,
        never,
        {
          GUESTBACKUP_BENCH_WITHOUT_DIGESTS: '1',
        },
      ),
      await backupVariant(
        ctx,
        'd-readback',
        'with digests and the read-back (store default)',
        'info',
        src,
        [],
      ),
    ],
  }
}

/** `verify` of one backup against `sha256sum` of its stored image. */
export const verifySpeed: Scenario = async (ctx) => {
  const src = await ctx.labSource()
  const dir = await prepareDir(ctx, 'verify')
  const cli = join(ctx.repo, 'bin', 'guestbackup')
  const store = join(dir, 'store')
  await rm(store, { recursive: true, force: true })
  await run(cli, ['init', store, '--verify-after-backup', 'never', '--vm-compress', 'none'])
  const conf = join(dir, 'vm.conf')
  await run(cli, [
    'backup',
    '--store',
    store,
    '--vmid',
    '100',
    '--config',
    conf,
    '--disk',
    `scsi0=${src}`,
  ])
  const image = await storedImage(store)
  return {
    title: 'Verify',
    description:
      'verify of the full backup above (its data read through qemu-nbd and hashed in 4 MiB ' +
      'blocks, holes known from the allocation map) against sha256sum of the stored image file',
    dataBytes: dataBytes(LAB_LAYOUT),
    warmFiles: [image],
    variants: [
      {
        label: '**guestbackup verify** (whole CLI call)',
        role: 'ours',
        run: () => runMeasured(cli, ['verify', '--store', store], join(dir, 'rss'), { node: true }),
      },
      {
        label: '`sha256sum` of the stored image',
        role: 'reference',
        run: () => runMeasured('sha256sum', [image], join(dir, 'rss-sha')),
      },
    ],
    teardown: () => rm(dir, { recursive: true, force: true }),
  }
}
