/**
 * Container archives against the tools doing the same work on the same tree (bench/lib/ct-tree.ts,
 * built once per benchmark run, untimed): `guestbackup backup` of a container in a tar store
 * against GNU `tar -cpf`, its restore against `tar -xpf`, and the same for a squashfs store
 * against `mksquashfs` and `unsquashfs`. `BENCH_CT_SCALE` (0 < s ≤ 1, default 1) shrinks the
 * tree for a quick check run.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { COMMON_TAR_FLAGS, RESTORE_EXTRACT_ARGS, RESTORE_TAR_FLAGS } from '../src/archive/tar.ts'
import { makeContainerTree } from './lib/ct-tree.ts'
import type { TreeStats } from './lib/ct-tree.ts'
import { run, runMeasured } from './lib/procs.ts'
import { fmtBytes } from './lib/stats.ts'
import type { PreparedScenario, Scenario, ScenarioContext, Variant } from './lib/types.ts'

/** `zstd`: a tar store with `lxc-compress zstd`. */
type Mode = 'tar' | 'squashfs' | 'zstd'

/** zstd threads of both sides: guestbackup's default (`--zstd 0`, half of the cores). */
const ZSTD_THREADS = Math.max(1, Math.floor(availableParallelism() / 2))

const cliOf = (ctx: ScenarioContext): string => join(ctx.repo, 'bin', 'guestbackup')

/** The tree's scale from `BENCH_CT_SCALE`. */
const scale = (): number => {
  const v = process.env['BENCH_CT_SCALE']
  const s = v === undefined || v === '' ? 1 : Number(v)
  if (!(s > 0 && s <= 1)) throw new Error(`BENCH_CT_SCALE=${String(v)}: want 0 < s <= 1`)
  return s
}

/** The tree, shared by the four scenarios: beside their dirs, removed with the scratch dir. */
let tree: Promise<{ root: string; stats: TreeStats }> | undefined
const sharedTree = (ctx: ScenarioContext): Promise<{ root: string; stats: TreeStats }> => {
  tree ??= (async () => {
    const root = join(dirname(ctx.dir), 'ct-tree')
    await mkdir(root)
    ctx.log('container tree: generating')
    const stats = await makeContainerTree(root, 42, scale())
    ctx.log(`container tree: ${stats.files} files, ${fmtBytes(stats.dataBytes)} of data`)
    return { root, stats }
  })()
  return tree
}

const treeText = (s: TreeStats): string =>
  `a generated container tree (${s.files} files, ${s.dirs} directories, ${s.hardlinks} hard ` +
  `links, ${s.symlinks} symlinks, ${s.sparse} sparse files; ${fmtBytes(s.dataBytes)} of data)`

/** Every file below `dir` (recursive), relative names. */
const filesBelow = async (dir: string): Promise<string[]> =>
  (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))

/** The container archive of the single backup in `store` (`archive.tar[.zst]`, `archive.sqfs`). */
const archiveOf = async (store: string, mode: Mode): Promise<string> => {
  const re = { tar: /\/archive\.tar$/, zstd: /\/archive\.tar\.zst$/, squashfs: /\/archive\.sqfs$/ }[
    mode
  ]
  const found = (await filesBelow(store)).filter((f) => re.test(f))
  if (found.length !== 1 || found[0] === undefined) {
    throw new Error(`INVALID SCENARIO: expected one ${mode} archive in ${store}: ${String(found)}`)
  }
  return found[0]
}

/** `diff -r` of two trees (content, names, symlink targets); throws if they differ. */
const assertSameTree = async (a: string, b: string): Promise<void> => {
  await run('diff', ['-r', '--no-dereference', '-q', a, b]).catch((e: unknown) => {
    throw new Error(`${b} differs from ${a}`, { cause: e })
  })
}

/**
 * Read every file of the tree (untimed, in `prepare`): the harness's `warmFiles` reads file by
 * file with an 8 MiB buffer each, too slow for tens of thousands of small files.
 */
const warmTree = async (root: string): Promise<void> => {
  await run('sh', ['-c', 'find "$1" -type f -exec cat {} + >/dev/null', 'sh', root])
}

/**
 * `guestbackup init` (untimed) of a store in `mode`, without read-back: tar uncompressed
 * (`lxc-compress none`) unless `zstd`.
 */
const initStore = async (ctx: ScenarioContext, store: string, mode: Mode): Promise<void> => {
  await rm(store, { recursive: true, force: true })
  const args = ['init', store, '--lxc-backup-mode', mode === 'squashfs' ? mode : 'tar']
  args.push('--lxc-compress', mode === 'zstd' ? 'zstd' : 'none', '--verify-after-backup', 'never')
  await run(cliOf(ctx), args)
}

/** The arguments of a container backup of `root` into `store`. */
const backupArgs = (store: string, conf: string, root: string, mode?: Mode): string[] => [
  'backup',
  '--store',
  store,
  '--vmid',
  '200',
  '--config',
  conf,
  '--rootfs',
  root,
  ...(mode === 'zstd' ? ['--zstd', String(ZSTD_THREADS)] : []),
]

/** A listed backup's volume id (the store holds one). */
const onlyVolid = async (ctx: ScenarioContext, store: string): Promise<string> => {
  const out = (await run(cliOf(ctx), ['list', '--store', store, '--json'])).stdout
  const rows = JSON.parse(out) as { volid: string }[]
  if (rows.length !== 1 || rows[0] === undefined) throw new Error(`expected one backup: ${out}`)
  return rows[0].volid
}

/** The reference command of a backup: writes `out` from `root`, then fsyncs it (`sync FILE`). */
const referenceBackup = (mode: Mode, root: string, out: string): [string, string[]] => {
  const flags = COMMON_TAR_FLAGS.map((f) => `'${f}'`).join(' ')
  const tool = {
    tar: `tar -cpf "$1" --totals ${flags} --directory="$2" .`,
    // vzdump's pipe (PVE/VZDump/LXC.pm): tar to stdout, then `zstd --threads=N`.
    zstd: `tar -cpf - --totals ${flags} --directory="$2" . | zstd -q -3 -T${ZSTD_THREADS} -o "$1"`,
    squashfs: 'mksquashfs "$2" "$1" -noappend -quiet -no-progress -comp zstd -Xcompression-level 3',
  }[mode]
  return ['sh', ['-c', `${tool} >/dev/null && sync "$1"`, 'sh', out, root]]
}

/** `s` with `name` as its function name, which `BENCH_ONLY` matches (bench/run.ts). */
const named = (name: string, s: Scenario): Scenario =>
  Object.defineProperty(s, 'name', { value: name })

const backupScenario =
  (mode: Mode): Scenario =>
  async (ctx): Promise<PreparedScenario> => {
    const { root, stats } = await sharedTree(ctx)
    const cli = cliOf(ctx)
    const store = join(ctx.dir, 'store')
    const conf = join(ctx.dir, 'ct.conf')
    await writeFile(conf, 'arch: amd64\nhostname: bench\n')
    const out = join(ctx.dir, { tar: 'ref.tar', zstd: 'ref.tar.zst', squashfs: 'ref.sqfs' }[mode])
    const [refCmd, refArgs] = referenceBackup(mode, root, out)
    const variants: Variant[] = [
      {
        label: `**guestbackup backup**, ${mode} store (whole CLI call)`,
        role: 'ours',
        prepare: async () => {
          await initStore(ctx, store, mode)
          await warmTree(root)
        },
        run: () =>
          runMeasured(cli, backupArgs(store, conf, root, mode), join(ctx.dir, 'rss-ours'), {
            node: true,
          }),
        verify: async () => {
          await archiveOf(store, mode)
          await onlyVolid(ctx, store)
        },
        cleanup: () => rm(store, { recursive: true, force: true }),
      },
      {
        label: {
          tar: 'GNU `tar -cpf` + `sync FILE`',
          zstd: `\`tar -cpf - | zstd -3 -T${ZSTD_THREADS}\` + \`sync FILE\``,
          squashfs: '`mksquashfs` + `sync FILE`',
        }[mode],
        role: 'reference',
        prepare: async () => {
          await rm(out, { force: true })
          await warmTree(root)
        },
        run: () => runMeasured(refCmd, refArgs, join(ctx.dir, 'rss-ref')),
        verify: async () => {
          if (mode === 'squashfs') await run('unsquashfs', ['-s', out])
          else await run('tar', [...(mode === 'zstd' ? ['-I', 'zstd'] : []), '-tf', out])
        },
        cleanup: () => rm(out, { force: true }),
      },
    ]
    const ref = {
      tar: `GNU \`tar -cpf\` with the same flags (Proxmox's COMMON_TAR_FLAGS)`,
      zstd:
        `GNU \`tar -cpf -\` with the same flags piped into \`zstd -3 -T${ZSTD_THREADS}\` as vzdump ` +
        `does (ours: \`--zstd ${ZSTD_THREADS}\`, seekable 16 MiB frames and the members file)`,
      squashfs:
        '`mksquashfs -comp zstd -Xcompression-level 3` (its default `-mem`, a quarter of RAM; ' +
        'ours passes `-mem 128M`)',
    }[mode]
    return {
      title: `Container backup, ${mode === 'zstd' ? 'tar.zst' : mode}`,
      description:
        `container backup of ${treeText(stats)} into a ${mode} store (\`--verify-after-backup ` +
        `never\`), against ${ref}; same durability: ours fsyncs the archive and its manifest ` +
        'files before their renames, the reference is followed by `sync FILE` (an fsync of the ' +
        'archive) in the timed command; the harness `sync`s after every timed run',
      dataBytes: stats.dataBytes,
      warmFiles: [], // warmTree in each prepare
      variants,
    }
  }

const restoreScenario =
  (mode: Mode): Scenario =>
  async (ctx): Promise<PreparedScenario> => {
    const { root, stats } = await sharedTree(ctx)
    const cli = cliOf(ctx)
    const store = join(ctx.dir, 'store')
    const conf = join(ctx.dir, 'ct.conf')
    await writeFile(conf, 'arch: amd64\nhostname: bench\n')
    await initStore(ctx, store, mode)
    ctx.log(`${mode} restore: backup of the tree (untimed)`)
    await run(cli, backupArgs(store, conf, root))
    const volid = await onlyVolid(ctx, store)
    const archive = await archiveOf(store, mode)
    const target = join(ctx.dir, 'target')
    const refTarget = join(ctx.dir, 'ref-target')
    const fresh = async (dir: string): Promise<void> => {
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir)
    }
    const refArgs =
      mode === 'tar'
        ? ['-xpf', archive, ...RESTORE_TAR_FLAGS, '-C', refTarget, ...RESTORE_EXTRACT_ARGS]
        : ['-quiet', '-no-progress', '-dest', refTarget, archive]
    const variants: Variant[] = [
      {
        label: `**guestbackup restore**, ${mode} store (whole CLI call)`,
        role: 'ours',
        prepare: () => rm(target, { recursive: true, force: true }),
        run: () =>
          runMeasured(
            cli,
            ['restore', '--store', store, volid, '--target', target],
            join(ctx.dir, 'rss-ours'),
            { node: true },
          ),
        verify: () => assertSameTree(root, join(target, 'rootfs')),
        cleanup: () => rm(target, { recursive: true, force: true }),
      },
      {
        label:
          mode === 'tar'
            ? 'GNU `tar -xpf` of the stored archive'
            : '`unsquashfs` of the stored image',
        role: 'reference',
        prepare: () => fresh(refTarget),
        run: () =>
          runMeasured(mode === 'tar' ? 'tar' : 'unsquashfs', refArgs, join(ctx.dir, 'rss-ref')),
        verify: () => assertSameTree(root, refTarget),
        cleanup: () => rm(refTarget, { recursive: true, force: true }),
      },
    ]
    const ref =
      mode === 'tar'
        ? "GNU `tar -xpf` of the stored archive with the restore's flags (RESTORE_TAR_FLAGS, " +
          '`--anchored --exclude ./dev/*`)'
        : '`unsquashfs -dest T` of the stored image (all xattrs; ours keeps `user.*` and ' +
          'file capabilities, checks the listing first and reads the capabilities through a ' +
          'squashfuse mount)'
    return {
      title: `Container restore, ${mode}`,
      description:
        `restore of a container backup of ${treeText(stats)} from a ${mode} store, against ` +
        `${ref}; same durability: neither side fsyncs the restored files (ours fsyncs only ` +
        'the small guest.conf), the harness `sync`s after every timed run',
      dataBytes: stats.dataBytes,
      warmFiles: [archive],
      variants,
    }
  }

/** Container backup into a tar store, against GNU `tar -cpf` of the same tree. */
export const ctTarBackup: Scenario = named('ctTarBackup', backupScenario('tar'))
/** Container backup into a tar store with `lxc-compress zstd`, against `tar | zstd`. */
export const ctZstdBackup: Scenario = named('ctZstdBackup', backupScenario('zstd'))
/** Container restore from a tar store, against GNU `tar -xpf` of the stored archive. */
export const ctTarRestore: Scenario = named('ctTarRestore', restoreScenario('tar'))
/** Container backup into a squashfs store, against `mksquashfs` of the same tree. */
export const ctSquashfsBackup: Scenario = named('ctSquashfsBackup', backupScenario('squashfs'))
/** Container restore from a squashfs store, against `unsquashfs` of the stored image. */
export const ctSquashfsRestore: Scenario = named('ctSquashfsRestore', restoreScenario('squashfs'))
