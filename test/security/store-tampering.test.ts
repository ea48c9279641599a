import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  link,
  lutimes,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rename,
  rm,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, join, relative } from 'node:path'
import { craftTar } from '../archive/craft-tar.ts'
import { backupArgs } from '../helpers/cli.ts'
import { writeRandom } from '../helpers/random-data.ts'
import {
  ageTree,
  cliTimed,
  copyTree,
  diffSnapshots,
  filesContaining,
  makeCanary,
  snapshotTree,
  tool,
} from '../helpers/tamper.ts'
import type { Canary, TimedOptions, TimedResult } from '../helpers/tamper.ts'

// Threat model: an attacker who can write inside the store (not outside it) plants symlinks,
// FIFOs, device nodes, hard links and edited manifests; guestbackup runs as root. Whatever it
// is then asked to do, nothing outside the store may be read into its output or a restore,
// written, created or removed, and every command ends within 5 s with at most one error line.
// Each case gets a fresh copy of a template store and a canary directory beside it (outside the
// store) whose full state is compared before and after every command.

const MiB = 1024 * 1024
/** Every command must end within this time (the child is killed with SIGKILL after it). */
const LIMIT_MS = 5000
/**
 * Peak RSS allowed to a CLI run. A run needs 70-110 MiB (compiled or through tsx); reading
 * /dev/zero, or a device node planted as guest.conf, up to V8's string limit takes ~600 MiB and
 * fails in 2-4 s, so the time limit alone would not catch it.
 */
const RSS_LIMIT_KIB = 384 * 1024
const STACK_RE = /^\s+at .+[(:]/m
const ONE_ERROR_LINE_RE = /^guestbackup: [^\n]*\n?$/
/** A well-formed volume id: what `list` may print as a parent. */
const VOLID_RE =
  /^[a-z][a-z0-9._-]*:backup\/[1-9]\d{0,8}\/(qemu|lxc)-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/
/** 64 KiB of the canary image's fill byte: restored data that came from outside the store. */
const CANARY_FILL = 0xee
const CANARY_PATTERN = Buffer.alloc(64 * 1024, CANARY_FILL)
/** A time long past, for planted entries that must look abandoned. */
const OLD_TIME = new Date('2020-01-01T00:00:00Z')

/** The fields of a `list --json` row these tests look at. */
interface Row {
  volid: string
  parent: string | null
}

/** One case's world: a store copy, a canary beside it, room for targets and inputs. */
interface Ctx {
  /** Work directory of the case: `store/`, `canary/`, targets and inputs live here. */
  w: string
  store: string
  canary: Canary
}

/** What a command must (also) do, on top of the rules every command obeys. */
interface Expect extends TimedOptions {
  /** It must fail: `true` with exit code 1 or 2, or with exactly this exit code. */
  refuse?: true | 1 | 2
  /** More strings that must never be printed. */
  secrets?: readonly string[]
}

/**
 * At most two CLI processes of this file run at once (the machine has two cores): the 5 s limit
 * must measure the command, not the other cases' load. Waiting for a slot is not timed.
 */
const slots = { free: 2, waiting: [] as (() => void)[] }
const withSlot = async <T>(fn: () => Promise<T>): Promise<T> => {
  if (slots.free > 0) slots.free--
  else await new Promise<void>((resolve) => slots.waiting.push(resolve))
  try {
    return await fn()
  } finally {
    const next = slots.waiting.shift()
    if (next === undefined) slots.free++
    else next()
  }
}

const clip = (s: string): string => JSON.stringify(s.length > 600 ? `${s.slice(0, 600)}…` : s)

/**
 * Run a command and list every rule it broke: not finished within 5 s, killed or interrupted,
 * anything in the canary changed, a secret printed, a stack trace, a slurped file (peak RSS),
 * and on failure an exit code other than 1 or 2 or more than one `guestbackup: ` line.
 */
const probe = async (
  ctx: Ctx,
  args: readonly string[],
  expect: Expect = {},
): Promise<{ r: TimedResult; problems: string[] }> => {
  const canaryBefore = await snapshotTree(ctx.canary.dir)
  const r = await withSlot(() => cliTimed(args, { timeoutMs: LIMIT_MS, ...expect }))
  // GB_TAMPER_TRACE=1 shows each command's time and peak RSS: the margins of both limits.
  if (process.env['GB_TAMPER_TRACE'] !== undefined) {
    process.stderr.write(`${r.ms} ms ${Math.round(r.peakRssKiB / 1024)} MiB ${show(ctx, args)}\n`)
  }
  const problems: string[] = []
  if (r.timedOut) problems.push(`still running after ${LIMIT_MS} ms (killed)`)
  else if (r.code === null) problems.push(`ended by ${String(r.signal)}`)
  for (const d of diffSnapshots(canaryBefore, await snapshotTree(ctx.canary.dir))) {
    problems.push(`canary outside the store ${d}`)
  }
  for (const secret of [ctx.canary.marker, ...(expect.secrets ?? [])]) {
    if (r.stdout.includes(secret)) problems.push(`stdout shows the secret ${secret}`)
    if (r.stderr.includes(secret)) problems.push(`stderr shows the secret ${secret}`)
  }
  if (STACK_RE.test(r.stderr)) problems.push('stack trace on stderr')
  if (r.peakRssKiB > RSS_LIMIT_KIB) {
    problems.push(`peak RSS ${Math.round(r.peakRssKiB / 1024)} MiB: read a non-file into memory`)
  }
  if (!r.timedOut && r.code !== 0) {
    if (r.code !== 1 && r.code !== 2) problems.push(`exit code ${String(r.code)}, not 1 or 2`)
    if (!ONE_ERROR_LINE_RE.test(r.stderr)) {
      problems.push(`stderr is not exactly one 'guestbackup: ' line: ${clip(r.stderr)}`)
    }
  }
  if (expect.refuse !== undefined && r.code === 0) problems.push('succeeded; must be refused')
  if (
    typeof expect.refuse === 'number' &&
    !r.timedOut &&
    r.code !== 0 &&
    r.code !== expect.refuse
  ) {
    problems.push(`exit code ${String(r.code)}, want ${expect.refuse}`)
  }
  return { r, problems }
}

/** {@link probe} one command and fail the test on any broken rule. */
const guarded = async (
  ctx: Ctx,
  args: readonly string[],
  expect: Expect = {},
): Promise<TimedResult> => {
  const { r, problems } = await probe(ctx, args, expect)
  if (problems.length > 0) {
    const out = `\n  stdout: ${clip(r.stdout)}\n  stderr: ${clip(r.stderr)}`
    assert.fail(`${show(ctx, args)}:\n  - ${problems.join('\n  - ')}${out}`)
  }
  return r
}

/** The command line as a message shows it, the case's work directory written as `W`. */
const show = (ctx: Ctx, args: readonly string[]): string =>
  `guestbackup ${args.join(' ')}`.replaceAll(ctx.w, 'W')

/**
 * Several commands of one case: each is probed even when an earlier one broke a rule, so a
 * failure report names every offending command; `done` fails the test with all of them.
 */
const session = (ctx: Ctx) => {
  const all: string[] = []
  return {
    run: async (args: readonly string[], expect: Expect = {}): Promise<TimedResult> => {
      const { r, problems } = await probe(ctx, args, expect)
      for (const p of problems) all.push(`${show(ctx, args)}: ${p}`)
      return r
    },
    done: (): void => {
      if (all.length > 0) assert.fail(`broken rules:\n  - ${all.join('\n  - ')}`)
    },
  }
}

/** `<store>/<vmid>/<type>-<time>` of a volume name. */
const dirOf = (ctx: Ctx, volname: string): string =>
  join(ctx.store, volname.slice('backup/'.length))
/** `<store>/<vmid>/<type>-<time>.<ext>`: the attribute files beside a backup. */
const attrOf = (ctx: Ctx, volname: string, ext: 'notes' | 'protected'): string =>
  `${dirOf(ctx, volname)}.${ext}`
const guestDir = (ctx: Ctx, vmid: number): string => join(ctx.store, String(vmid))

/** No file under `dir` (a restore target, a store) holds `needle`. */
const assertNothingHolds = async (dir: string, needle: string | Buffer, what: string) => {
  assert.deepEqual(await filesContaining(dir, needle), [], `${what} holds data from outside`)
}

interface ManifestLike {
  parent?: unknown
  disks?: Record<string, { file: string; parent?: unknown }>
  container?: { file: string }
}

const editManifest = async (dir: string, edit: (m: ManifestLike) => void): Promise<void> => {
  const path = join(dir, 'manifest.json')
  const m = JSON.parse(await readFile(path, 'utf8')) as ManifestLike
  edit(m)
  await writeFile(path, `${JSON.stringify(m, null, 2)}\n`, { mode: 0o600 })
}

/** Same format as the store's backup directory names. */
const rfc3339 = (epochSeconds: number): string =>
  new Date(epochSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')

// Cases run side by side (nested suites inherit the concurrency, so up to four), their CLI
// commands two at a time (withSlot): most of a case is CLI start-up.
describe('security: a tampered store never reaches outside it', { concurrency: 2 }, () => {
  let base: string
  let src: string
  /** Full-mode store: VM 100 with V1 (older) and V2, both with a firewall config; CT 200: C1. */
  let tplFull: string
  /** Incremental store: VM 100 with I1 (full) and I2 (incremental on I1). */
  let tplInc: string
  let V1 = ''
  let V2 = ''
  let C1 = ''
  let I1 = ''
  let I2 = ''
  let manifestCopy = ''
  let caseNo = 0
  const vmConf = (): string => join(src, 'vm.conf')
  const fwConf = (): string => join(src, 'fw.conf')
  const ctConf = (): string => join(src, 'ct.conf')
  const rootfs = (): string => join(src, 'rootfs')

  const listRows = async (store: string): Promise<Row[]> => {
    const r = await withSlot(() =>
      cliTimed(['list', '--store', store, '--json'], { timeoutMs: 30_000 }),
    )
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as Row[]
  }
  const setupOk = async (args: readonly string[]): Promise<TimedResult> => {
    const r = await cliTimed(args, { timeoutMs: 60_000 })
    assert.equal(r.code, 0, `guestbackup ${args.join(' ')}: ${r.stderr}`)
    return r
  }
  const volnameOf = (r: TimedResult): string => {
    const { volid } = JSON.parse(r.stdout) as { volid: string }
    return volid.slice(volid.indexOf(':') + 1)
  }

  /** A fresh case: a copy of a template store and a canary, both in a new work directory. */
  const fresh = async (tpl: string): Promise<Ctx> => {
    const w = join(base, `case-${String(++caseNo).padStart(3, '0')}`)
    await mkdir(w)
    const store = join(w, 'store')
    await copyTree(tpl, store)
    const canary = await makeCanary(join(w, 'canary'), manifestCopy)
    return { w, store, canary }
  }
  /** A private copy of a template disk (backups write bitmaps into it; cases run in parallel). */
  const diskCopy = async (ctx: Ctx, name: 'disk-full.qcow2' | 'disk-inc.qcow2') => {
    const disk = join(ctx.w, 'disk.qcow2')
    await copyTree(join(src, name), disk)
    return disk
  }
  /** A qcow2 of the template disks' size, filled with {@link CANARY_FILL}, inside the canary. */
  const canaryImage = async (ctx: Ctx): Promise<string> => {
    const img = join(ctx.canary.dir, 'img.qcow2')
    await tool('qemu-img', ['create', '-q', '-f', 'qcow2', img, '4M'])
    await tool('qemu-io', ['-f', 'qcow2', '-c', `write -P ${CANARY_FILL} 0 2M`, img])
    return img
  }
  /** A valid tar inside the canary whose only file holds the marker. */
  const canaryTar = async (ctx: Ctx): Promise<string> => {
    const from = join(ctx.w, 'tar-src')
    await mkdir(from)
    await writeFile(join(from, 'tarred.txt'), `${ctx.canary.marker}\n`)
    const tar = join(ctx.canary.dir, 'x.tar')
    await tool('tar', ['-C', from, '-cf', tar, '.'])
    return tar
  }
  const restoreArgs = (ctx: Ctx, volname: string, target = join(ctx.w, 'target')): string[] => [
    'restore',
    '--store',
    ctx.store,
    volname,
    '--target',
    target,
  ]

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'gb-tamper-'))
    src = join(base, 'src')
    await mkdir(join(src, 'rootfs', 'etc'), { recursive: true })
    await writeFile(join(src, 'rootfs', 'etc', 'hostname'), 'tamper\n')
    await writeFile(join(src, 'rootfs', 'hello.txt'), 'hello\n')
    await writeFile(vmConf(), 'name: tamper\nscsi0: local:100/vm-100-disk-0.qcow2\n')
    await writeFile(fwConf(), '[OPTIONS]\nenable: 1\n')
    await writeFile(ctConf(), 'arch: amd64\nhostname: tamper\n')
    for (const name of ['disk-full.qcow2', 'disk-inc.qcow2']) {
      const disk = join(src, name)
      await tool('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '4M'])
      await tool('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', disk])
    }

    tplFull = join(base, 'tpl-full')
    await setupOk(['init', tplFull, '--lxc-compress', 'none'])
    const vm = (): string[] => [
      ...backupArgs(tplFull, 100, vmConf(), '--firewall-config', fwConf()),
      ...['--disk', `scsi0=${join(src, 'disk-full.qcow2')}`, '--json'],
    ]
    V1 = volnameOf(await setupOk(vm()))
    await tool('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x12 1M 64k',
      join(src, 'disk-full.qcow2'),
    ])
    V2 = volnameOf(await setupOk(vm()))
    C1 = volnameOf(
      await setupOk([...backupArgs(tplFull, 200, ctConf(), '--rootfs', rootfs(), '--json')]),
    )

    tplInc = join(base, 'tpl-inc')
    await setupOk(['init', tplInc, '--vm-backup-mode', 'incremental'])
    const inc = (): string[] =>
      backupArgs(tplInc, 100, vmConf(), '--disk', `scsi0=${join(src, 'disk-inc.qcow2')}`, '--json')
    I1 = volnameOf(await setupOk(inc()))
    await tool('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x13 2M 64k',
      join(src, 'disk-inc.qcow2'),
    ])
    I2 = volnameOf(await setupOk(inc()))
    const incRows = await listRows(tplInc)
    assert.ok(
      incRows.find((r) => r.volid.endsWith(I2))?.parent?.endsWith(I1),
      'the second backup of the incremental template builds on the first',
    )
    manifestCopy = await readFile(
      join(tplFull, V1.slice('backup/'.length), 'manifest.json'),
      'utf8',
    )
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })

  describe('1. a symlinked .notes file', () => {
    it('notes and list do not print the target', async () => {
      const c = await fresh(tplFull)
      await symlink(c.canary.secret, attrOf(c, V1, 'notes'))
      const s = session(c)
      await s.run(['notes', '--store', c.store, V1])
      await s.run(['list', '--store', c.store])
      await s.run(['list', '--store', c.store, '--json'])
      s.done()
    })

    it('notes --set does not write through it', async () => {
      const c = await fresh(tplFull)
      await symlink(c.canary.secret, attrOf(c, V1, 'notes'))
      await guarded(c, ['notes', '--store', c.store, V1, '--set', 'X'])
    })

    it('notes --set does not create the target of a dangling one', async () => {
      const c = await fresh(tplFull)
      await symlink(join(c.canary.dir, 'not-yet.txt'), attrOf(c, V1, 'notes'))
      await guarded(c, ['notes', '--store', c.store, V1, '--set', 'X'])
    })
  })

  describe('2. symlinked guest.conf and firewall.conf', () => {
    it('show-config and restore of a VM backup do not read the targets', async () => {
      const c = await fresh(tplFull)
      for (const f of ['guest.conf', 'firewall.conf']) {
        await rm(join(dirOf(c, V2), f))
        await symlink(c.canary.secret, join(dirOf(c, V2), f))
      }
      const target = join(c.w, 'target')
      const s = session(c)
      await s.run(['show-config', '--store', c.store, V2])
      await s.run(['show-config', '--store', c.store, V2, '--firewall'])
      await s.run(restoreArgs(c, V2, target))
      s.done()
      await assertNothingHolds(target, c.canary.marker, 'the restore target')
    })

    it('restore of a container backup does not read a symlinked guest.conf', async () => {
      const c = await fresh(tplFull)
      await rm(join(dirOf(c, C1), 'guest.conf'))
      await symlink(c.canary.secret, join(dirOf(c, C1), 'guest.conf'))
      const target = join(c.w, 'target')
      await guarded(c, restoreArgs(c, C1, target))
      await assertNothingHolds(target, c.canary.marker, 'the restore target')
    })
  })

  describe('3. a backup directory that is a symlink to a copy outside', () => {
    /** Move V1's directory into the canary (its guest.conf now holds the marker), link to it. */
    const linkBackupOut = async (): Promise<Ctx> => {
      const c = await fresh(tplFull)
      const outside = join(c.canary.dir, 'outside-backup')
      await copyTree(dirOf(c, V1), outside)
      await writeFile(join(outside, 'guest.conf'), `name: outside\n# ${c.canary.marker}\n`)
      await rm(dirOf(c, V1), { recursive: true })
      await symlink(outside, dirOf(c, V1))
      await ageTree(c.canary.dir)
      return c
    }

    it('remove does not delete or change the outside copy', async () => {
      const c = await linkBackupOut()
      await guarded(c, ['remove', '--store', c.store, V1])
    })

    it('prune --keep keep-last=1 does not delete or change the outside copy', async () => {
      const c = await linkBackupOut()
      await guarded(c, ['prune', '--store', c.store, '--vmid', '100', '--keep', 'keep-last=1'])
    })

    it('list, protect and notes do not touch it', async () => {
      const c = await linkBackupOut()
      const s = session(c)
      await s.run(['list', '--store', c.store, '--json'])
      await s.run(['protect', '--store', c.store, V1])
      await s.run(['notes', '--store', c.store, V1, '--set', 'X'])
      await s.run(['notes', '--store', c.store, V1])
      s.done()
    })

    it('show-config and restore do not read it', async () => {
      const c = await linkBackupOut()
      const target = join(c.w, 'target')
      const s = session(c)
      await s.run(['show-config', '--store', c.store, V1])
      await s.run(restoreArgs(c, V1, target))
      s.done()
      await assertNothingHolds(target, c.canary.marker, 'the restore target')
    })
  })

  describe('4. a guest directory that is a symlink into the canary', () => {
    /** Move `STORE/<vmid>` into the canary and leave a symlink to it in its place. */
    const linkGuestOut = async (vmid: number): Promise<Ctx> => {
      const c = await fresh(tplFull)
      const inside = join(c.canary.dir, `guest-${vmid}`)
      await rename(guestDir(c, vmid), inside)
      await symlink(inside, guestDir(c, vmid))
      await ageTree(c.canary.dir)
      return c
    }

    it('a VM backup writes nothing there', async () => {
      const c = await linkGuestOut(100)
      const disk = await diskCopy(c, 'disk-full.qcow2')
      await guarded(c, backupArgs(c.store, 100, vmConf(), '--disk', `scsi0=${disk}`))
    })

    it('a container backup writes nothing there', async () => {
      const c = await linkGuestOut(200)
      await guarded(c, backupArgs(c.store, 200, ctConf(), '--rootfs', rootfs()))
    })

    it('prune --keep keep-last=1 deletes nothing there', async () => {
      const c = await linkGuestOut(100)
      await guarded(c, ['prune', '--store', c.store, '--keep', 'keep-last=1'])
    })

    it('remove deletes nothing there', async () => {
      const c = await linkGuestOut(100)
      await guarded(c, ['remove', '--store', c.store, V1])
    })

    it('list, notes --set and protect change nothing there', async () => {
      const c = await linkGuestOut(100)
      const s = session(c)
      await s.run(['list', '--store', c.store])
      await s.run(['list', '--store', c.store, '--json'])
      await s.run(['notes', '--store', c.store, V1, '--set', 'X'])
      await s.run(['protect', '--store', c.store, V1])
      s.done()
    })
  })

  describe('5. planted temp names in an incremental chain', () => {
    /**
     * Symlinks with the names a rewrite of the child's manifest, a rebase or an attribute write
     * might use for a temp file, each to its own canary file (or to a missing one in the canary,
     * which must not be created): in the child I2, in the parent I1 and in the guest dir.
     */
    const plantTemps = async (c: Ctx): Promise<void> => {
      const child = dirOf(c, I2)
      const parent = dirOf(c, I1)
      const guest = guestDir(c, 100)
      const k = c.canary.dir
      const plants: [string, string][] = [
        [join(child, 'manifest.json.tmp'), join(k, 'plain.txt')],
        [join(child, 'drive-scsi0.qcow2.tmp'), join(k, 'sub', 'nested.txt')],
        [join(child, 'guest.conf.tmp'), join(k, 'missing-1')],
        [join(parent, 'manifest.json.tmp'), join(k, 'missing-2')],
        [join(guest, 'manifest.json.tmp'), c.canary.secret],
        [join(guest, 'drive-scsi0.qcow2.tmp'), join(k, 'missing-3')],
        [join(guest, `${basename(I2)}.notes.tmp`), join(k, 'missing-4')],
        [join(guest, 'force-full.tmp'), join(k, 'missing-5')],
      ]
      for (const [at, to] of plants) await symlink(to, at)
    }

    it('remove of the parent writes through none of them', async () => {
      const c = await fresh(tplInc)
      await plantTemps(c)
      const s = session(c)
      await s.run(['remove', '--store', c.store, I1])
      await s.run(['list', '--store', c.store, '--json'])
      s.done()
    })

    it('prune merging the parent writes through none of them', async () => {
      const c = await fresh(tplInc)
      await plantTemps(c)
      const s = session(c)
      await s.run(['prune', '--store', c.store, '--keep', 'keep-last=1'])
      await s.run(['list', '--store', c.store, '--json'])
      s.done()
    })

    it("remove of the parent replaces, not rewrites, a child's symlinked manifest.json", async () => {
      const c = await fresh(tplInc)
      const outside = join(c.canary.dir, 'child-manifest.json')
      await rename(join(dirOf(c, I2), 'manifest.json'), outside)
      await symlink(outside, join(dirOf(c, I2), 'manifest.json'))
      await ageTree(c.canary.dir)
      await guarded(c, ['remove', '--store', c.store, I1])
    })
  })

  describe('6. FIFOs where files are read', () => {
    it('a FIFO as guestbackup-store.json: list fails within 5 s with one line', async () => {
      const c = await fresh(tplFull)
      const storeFile = join(c.store, 'guestbackup-store.json')
      await rm(storeFile)
      await tool('mkfifo', [storeFile])
      const s = session(c)
      await s.run(['list', '--store', c.store], { refuse: true })
      await s.run(['init', c.store, '--prune-backups', 'keep-last=3'])
      s.done()
    })

    for (const flag of ['--config', '--firewall-config'] as const) {
      it(`backup ${flag} FIFO fails within 5 s with one line`, async () => {
        const c = await fresh(tplFull)
        const fifo = join(c.w, 'config.fifo')
        await tool('mkfifo', [fifo])
        const disk = await diskCopy(c, 'disk-full.qcow2')
        const args =
          flag === '--config'
            ? backupArgs(c.store, 101, fifo, '--disk', `scsi0=${disk}`)
            : backupArgs(
                c.store,
                101,
                vmConf(),
                '--firewall-config',
                fifo,
                '--disk',
                `scsi0=${disk}`,
              )
        await guarded(c, args, { refuse: true })
      })
    }
  })

  describe('7. tampered manifests', () => {
    for (const absolute of [false, true]) {
      it(`restore refuses container.file pointing at a tar outside (${absolute ? 'absolute' : '../'})`, async () => {
        const c = await fresh(tplFull)
        const tar = await canaryTar(c)
        await ageTree(c.canary.dir)
        await editManifest(dirOf(c, C1), (m) => {
          // From STORE/200/lxc-…/ this is ../../../canary/x.tar: the canary beside the store.
          m.container = { ...m.container, file: absolute ? tar : relative(dirOf(c, C1), tar) }
        })
        const target = join(c.w, 'target')
        await guarded(c, restoreArgs(c, C1, target), { refuse: true })
        await assertNothingHolds(target, c.canary.marker, 'the restore target')
      })
    }

    for (const absolute of [false, true]) {
      it(`restore refuses disks.*.file pointing at a qcow2 outside (${absolute ? 'absolute' : '../'})`, async () => {
        const c = await fresh(tplFull)
        const img = await canaryImage(c)
        await ageTree(c.canary.dir)
        await editManifest(dirOf(c, V1), (m) => {
          const d = m.disks?.['drive-scsi0']
          assert.ok(d)
          d.file = absolute ? img : relative(dirOf(c, V1), img)
        })
        const target = join(c.w, 'target')
        await guarded(c, restoreArgs(c, V1, target), { refuse: true })
        await assertNothingHolds(target, CANARY_PATTERN, 'the restore target')
      })
    }

    const weirdParents = [
      '../../etc',
      'backup/100/qemu-2020-01-01T00:00:00Z/../../x',
      'backup/100/qemu-2020-01-01T00:00:00Z\nINJECTED  lxc  9 GiB  protected',
    ]
    for (const weird of weirdParents) {
      it(`list does not print the parent ${JSON.stringify(weird)} verbatim`, async () => {
        const c = await fresh(tplFull)
        await editManifest(dirOf(c, V1), (m) => {
          m.parent = weird
          const d = m.disks?.['drive-scsi0']
          assert.ok(d)
          d.parent = weird
        })
        const s = session(c)
        const text = await s.run(['list', '--store', c.store])
        const json = await s.run(['list', '--store', c.store, '--json'])
        s.done()
        // Either the backup is refused (left out, or the command fails) or its parent is.
        const shown: string[] = []
        if (text.stdout.includes(weird)) shown.push(`list printed ${JSON.stringify(weird)}`)
        if (json.code === 0) {
          for (const row of JSON.parse(json.stdout) as Row[]) {
            if (row.parent !== null && !VOLID_RE.test(row.parent)) {
              shown.push(`list --json gave ${row.volid} the parent ${JSON.stringify(row.parent)}`)
            }
          }
        }
        assert.deepEqual(shown, [])
      })
    }
  })

  describe('8. inputs that are not files', () => {
    /** A backup command with one bad input, and what to undo afterwards. */
    interface BadInput {
      args: string[]
      cleanup?: () => Promise<void>
    }
    const inputs: [string, (c: Ctx, disk: string) => Promise<BadInput>][] = [
      [
        '--config /dev/zero',
        async (c, disk) => ({
          args: backupArgs(c.store, 101, '/dev/zero', '--disk', `scsi0=${disk}`),
        }),
      ],
      [
        '--firewall-config /dev/zero',
        async (c, disk) => ({
          args: backupArgs(
            c.store,
            101,
            vmConf(),
            '--firewall-config',
            '/dev/zero',
            '--disk',
            `scsi0=${disk}`,
          ),
        }),
      ],
      [
        '--config a directory',
        async (c, disk) => {
          await mkdir(join(c.w, 'conf.d'))
          return { args: backupArgs(c.store, 101, join(c.w, 'conf.d'), '--disk', `scsi0=${disk}`) }
        },
      ],
      [
        '--config a unix socket',
        async (c, disk) => {
          const path = join(c.w, 'conf.sock')
          const server = createServer()
          await new Promise<void>((resolve) => server.listen(path, resolve))
          return {
            args: backupArgs(c.store, 101, path, '--disk', `scsi0=${disk}`),
            cleanup: () =>
              new Promise<void>((resolve) => {
                server.close(() => {
                  resolve()
                })
              }),
          }
        },
      ],
    ]
    for (const [what, prepare] of inputs) {
      it(`backup ${what} is refused within 5 s, in one line, without reading it all`, async () => {
        const c = await fresh(tplFull)
        const bad = await prepare(c, await diskCopy(c, 'disk-full.qcow2'))
        try {
          await guarded(c, bad.args, { refuse: true })
        } finally {
          await bad.cleanup?.()
        }
      })
    }

    it('backup --config /proc/self/environ is refused and stores no environment', async () => {
      const c = await fresh(tplFull)
      const disk = await diskCopy(c, 'disk-full.qcow2')
      const envMarker = `GB_TAMPER_ENV_${c.canary.marker}`
      await guarded(c, backupArgs(c.store, 101, '/proc/self/environ', '--disk', `scsi0=${disk}`), {
        refuse: true,
        env: { GB_TAMPER_ENV: envMarker },
        secrets: [envMarker],
      })
      await assertNothingHolds(c.store, envMarker, 'the store')
    })
  })

  describe('9. backing up the host root as a container', () => {
    // Never let a regression really archive `/`: a 64 MiB file size limit stops tar early (and
    // the process group is killed after 5 s), so a failing run costs seconds, not the disk.
    const wrapper = ['prlimit', `--fsize=${64 * MiB}`, '--']
    const variants: [string, (c: Ctx) => Promise<string>][] = [
      ['/', async () => '/'],
      ['//', async () => '//'],
      ['/usr/..', async () => '/usr/..'],
      [
        'a symlink to /',
        async (c) => {
          const p = join(c.w, 'root-link')
          await symlink('/', p)
          return p
        },
      ],
    ]
    for (const [what, path] of variants) {
      it(`backup --rootfs ${what} is refused (exit 2, one line naming it)`, async () => {
        const c = await fresh(tplFull)
        const rootArg = await path(c)
        const r = await guarded(c, backupArgs(c.store, 300, ctConf(), '--rootfs', rootArg), {
          refuse: 2,
          wrapper,
        })
        // `/` as a word of its own, or the argument as given (`//`, the link's path).
        const standaloneSlash = /(^|[\s'"`(])\/($|[\s'"`:,.)])/m
        assert.ok(
          standaloneSlash.test(r.stderr) || (rootArg !== '/' && r.stderr.includes(rootArg)),
          `the error names the root directory: ${r.stderr}`,
        )
      })
    }
  })

  describe('10. restore into the store', () => {
    const targets: [string, (c: Ctx) => Promise<string>][] = [
      ['STORE/100/restore-here', async (c) => join(guestDir(c, 100), 'restore-here')],
      ['STORE itself', async (c) => c.store],
      [
        'a new backup-like directory',
        async (c) => join(guestDir(c, 100), 'qemu-2099-01-01T00:00:00Z'),
      ],
      ['a path through ..', async (c) => `${c.store}/../${basename(c.store)}/100/via-dotdot`],
      [
        'a path through a symlink outside',
        async (c) => {
          await symlink(guestDir(c, 100), join(c.w, 'into-store'))
          return join(c.w, 'into-store', 'via-link')
        },
      ],
    ]
    for (const [what, target] of targets) {
      it(`restore --target ${what} is refused (exit 2) and the store is unchanged`, async () => {
        const c = await fresh(tplFull)
        const t = await target(c)
        const listBefore = await listRows(c.store)
        const namesBefore = Object.keys(await snapshotTree(c.store))
        await guarded(c, restoreArgs(c, V1, t), { refuse: 2 })
        assert.deepEqual(await listRows(c.store), listBefore)
        assert.deepEqual(Object.keys(await snapshotTree(c.store)), namesBefore)
      })
    }
  })

  describe('11. more of what an attacker in the store can plant', () => {
    it('a drive image that is a symlink to a qcow2 outside is not restored', async () => {
      const c = await fresh(tplFull)
      const img = await canaryImage(c)
      await ageTree(c.canary.dir)
      await rm(join(dirOf(c, V1), 'drive-scsi0.qcow2'))
      await symlink(img, join(dirOf(c, V1), 'drive-scsi0.qcow2'))
      const target = join(c.w, 'target')
      await guarded(c, restoreArgs(c, V1, target))
      await assertNothingHolds(target, CANARY_PATTERN, 'the restore target')
    })

    it('a drive image whose backing file lies outside is not restored', async () => {
      const c = await fresh(tplFull)
      const img = await canaryImage(c)
      await ageTree(c.canary.dir)
      const drive = join(dirOf(c, V1), 'drive-scsi0.qcow2')
      await rm(drive)
      await tool('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', img, '-F', 'qcow2', drive, '4M'])
      const target = join(c.w, 'target')
      await guarded(c, restoreArgs(c, V1, target))
      await assertNothingHolds(target, CANARY_PATTERN, 'the restore target')
    })

    // guestbackup's own restore reads the chain with qemu-img straight from its spec (no FUSE
    // export between): the same rules refuse, for the same reason, before qemu-img opens it.
    for (const [what, make, why] of [
      [
        'a backing file outside',
        (img: string, drive: string) => ['-b', img, '-F', 'qcow2', drive, '4M'],
        /names a backing file outside the store layout/,
      ],
      [
        'an external data file outside',
        (img: string, drive: string) => ['-o', `data_file=${img},data_file_raw=on`, drive, '4M'],
        /has an external data file/,
      ],
    ] as const) {
      it(`restore (direct from the chain) refuses a drive image with ${what}, naming why`, async () => {
        const c = await fresh(tplFull)
        const raw = join(c.canary.dir, 'data.raw')
        await writeFile(raw, Buffer.alloc(4 * MiB, CANARY_FILL))
        const img = what.includes('data') ? raw : await canaryImage(c)
        await ageTree(c.canary.dir)
        const drive = join(dirOf(c, V1), 'drive-scsi0.qcow2')
        await rm(drive)
        await tool('qemu-img', ['create', '-q', '-f', 'qcow2', ...make(img, drive)])
        const target = join(c.w, 'target')
        const r = await guarded(c, restoreArgs(c, V1, target), { refuse: 1 })
        assert.match(r.stderr, why)
        await assertNothingHolds(target, CANARY_PATTERN, 'the restore target')
      })
    }

    it('an archive.tar that is a symlink to a tar outside is not restored', async () => {
      const c = await fresh(tplFull)
      const tar = await canaryTar(c)
      await ageTree(c.canary.dir)
      await rm(join(dirOf(c, C1), 'archive.tar'))
      await symlink(tar, join(dirOf(c, C1), 'archive.tar'))
      const target = join(c.w, 'target')
      await guarded(c, restoreArgs(c, C1, target))
      await assertNothingHolds(target, c.canary.marker, 'the restore target')
    })

    it('a hostile archive.tar (symlink or hard link out, then write) changes nothing outside', async () => {
      const c = await fresh(tplFull)
      await writeFile(
        join(dirOf(c, C1), 'archive.tar'),
        craftTar([
          { name: './', type: '5' },
          { name: './out', type: '2', linkname: c.canary.dir },
          { name: './out/pwned.txt', data: 'pwned' },
          { name: './up', type: '2', linkname: '../..' },
          { name: './up/pwned2.txt', data: 'pwned' },
          { name: './hl', type: '1', linkname: c.canary.secret },
        ]),
      )
      const target = join(c.w, 'target')
      await guarded(c, restoreArgs(c, C1, target))
      await assertNothingHolds(target, c.canary.marker, 'the restore target')
      assert.deepEqual(
        (await readdir(c.w)).filter((n) => n.startsWith('pwned')),
        [],
        'nothing was written beside the target',
      )
    })

    it('a symlinked .protected (to a file, dangling) is neither followed nor created', async () => {
      const c = await fresh(tplFull)
      await symlink(c.canary.secret, attrOf(c, V1, 'protected'))
      await symlink(join(c.canary.dir, 'not-yet-protected'), attrOf(c, V2, 'protected'))
      const s = session(c)
      await s.run(['list', '--store', c.store, '--json'])
      await s.run(['protect', '--store', c.store, V1])
      await s.run(['remove', '--store', c.store, V1])
      await s.run(['protect', '--store', c.store, V1, '--off'])
      await s.run(['protect', '--store', c.store, V2])
      s.done()
    })

    for (const kind of ['stale directory', 'dangling'] as const) {
      it(`a .lock symlink (${kind}) in the guest dir: remove and backup end within 5 s`, async () => {
        const c = await fresh(tplFull)
        // A real lock is a directory. 'stale': the link and its target (a canary directory) are
        // years old, whether the lock code stats or lstats it; 'dangling': points nowhere.
        const lock = join(guestDir(c, 100), '.lock')
        const to = kind === 'dangling' ? join(c.canary.dir, 'no-lock') : join(c.canary.dir, 'sub')
        await symlink(to, lock)
        if (kind === 'stale directory') await lutimes(lock, OLD_TIME, OLD_TIME)
        const disk = await diskCopy(c, 'disk-full.qcow2')
        const s = session(c)
        await s.run(['remove', '--store', c.store, V1])
        await s.run(backupArgs(c.store, 100, vmConf(), '--disk', `scsi0=${disk}`))
        s.done()
      })
    }

    for (const [what, major, minor] of [
      ['/dev/null', 1, 3],
      ['/dev/zero', 1, 5],
    ] as const) {
      it(`a ${what} device node as guest.conf is not read (show-config, restore)`, async () => {
        const c = await fresh(tplFull)
        const conf = join(dirOf(c, V2), 'guest.conf')
        await rm(conf)
        await tool('mknod', [conf, 'c', String(major), String(minor)])
        const s = session(c)
        await s.run(['show-config', '--store', c.store, V2])
        await s.run(restoreArgs(c, V2))
        s.done()
      })
    }

    it('FIFOs as guest.conf, .notes and manifest.json do not hang any command', async () => {
      const c = await fresh(tplFull)
      await rm(join(dirOf(c, V2), 'guest.conf'))
      await tool('mkfifo', [join(dirOf(c, V2), 'guest.conf')])
      const s = session(c)
      await s.run(['show-config', '--store', c.store, V2])
      await s.run(restoreArgs(c, V2))
      await tool('mkfifo', [attrOf(c, V1, 'notes')])
      await s.run(['notes', '--store', c.store, V1])
      await s.run(['list', '--store', c.store])
      const c2 = await fresh(tplFull)
      await rm(join(dirOf(c2, V1), 'manifest.json'))
      await tool('mkfifo', [join(dirOf(c2, V1), 'manifest.json')])
      const s2 = session(c2)
      await s2.run(['list', '--store', c2.store, '--json'])
      await s2.run(['prune', '--store', c2.store, '--keep', 'keep-last=1'])
      s.done()
      s2.done()
    })

    it('a symlinked .failed dir does not receive the log of a failed backup', async () => {
      const c = await fresh(tplFull)
      const disk = join(c.w, 'big.qcow2')
      await tool('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '4M'])
      await writeRandom(disk, 'qcow2', 0, 3 * MiB)
      // The attacker cannot know the second the backup starts, so plants the next ones.
      const now = Math.floor(Date.now() / 1000)
      for (let t = now - 2; t < now + 20; t++) {
        await symlink(
          join(c.canary.dir, 'sub'),
          join(guestDir(c, 100), `qemu-${rfc3339(t)}.failed`),
        )
      }
      // A 1 MiB file size limit makes the disk image write fail (EFBIG), after backupInit.
      await guarded(c, backupArgs(c.store, 100, vmConf(), '--disk', `scsi0=${disk}`), {
        refuse: true,
        wrapper: ['prlimit', `--fsize=${MiB}`, '--'],
      })
    })

    it('a force-full symlink does not copy its target into the store', async () => {
      const c = await fresh(tplInc)
      await symlink(c.canary.secret, join(guestDir(c, 100), 'force-full'))
      const disk = await diskCopy(c, 'disk-inc.qcow2')
      await guarded(c, backupArgs(c.store, 100, vmConf(), '--disk', `scsi0=${disk}`))
      // The task log is kept in the store, where the attacker reads it back.
      await assertNothingHolds(c.store, c.canary.marker, 'the store')
    })

    for (const kind of ['file', 'dangling'] as const) {
      it(`init does not write through a guestbackup-store.json.tmp symlink (${kind})`, async () => {
        const c = await fresh(tplFull)
        const to = kind === 'file' ? join(c.canary.dir, 'plain.txt') : join(c.canary.dir, 'no-file')
        await symlink(to, join(c.store, 'guestbackup-store.json.tmp'))
        await guarded(c, ['init', c.store, '--prune-backups', 'keep-last=5'])
      })
    }

    // Hard links: a path check cannot tell a hard link from the file itself, so reading through
    // one (show-config printing a hard-linked guest.conf) is not tested; with
    // fs.protected_hardlinks=1 an unprivileged attacker can only link files it may read and write
    // anyway. What is reasonable, and tested: nothing writes through one (a rewrite replaces the
    // file, temp file + rename) and removing a backup only unlinks.
    it('notes --set and remove do not write through hard links', async () => {
      const c = await fresh(tplFull)
      await link(join(c.canary.dir, 'plain.txt'), attrOf(c, V1, 'notes'))
      await unlink(join(dirOf(c, V2), 'guest.conf'))
      await link(join(c.canary.dir, 'sub', 'nested.txt'), join(dirOf(c, V2), 'guest.conf'))
      const s = session(c)
      await s.run(['notes', '--store', c.store, V1, '--set', 'X'])
      await s.run(['remove', '--store', c.store, V2])
      await s.run(['remove', '--store', c.store, V1])
      s.done()
    })
  })
})
