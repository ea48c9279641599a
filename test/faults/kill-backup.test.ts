/**
 * Fault suite: `backup` SIGKILLed at random moments. A stopped VM (qcow2 with persistent
 * bitmaps, store in incremental mode: full and incremental backups) and a container (tar, and a
 * few rounds in squashfs mode), in two lanes side by side. Each run reads slowly (`--bwlimit`), so
 * the kill lands anywhere from start-up through the copy to the commit. After each kill: no
 * child of the killed run survives; the next command (backup, prune, verify, or list followed by
 * verify, picked at random) succeeds and logs the cleanup of what the killed run left; then the
 * store holds exactly its listed backups, all verifying, chains whole, and a random one restores
 * identical to the source at its backup.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createCipheriv } from 'node:crypto'
import { mkdir, mkdtemp, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs } from '../helpers/cli.ts'
import { exec, execOk } from '../helpers/process-group.ts'
import { treeManifest } from '../helpers/tree.ts'
import type { Manifest } from '../helpers/tree.ts'
import {
  ageLocks,
  assertCleanupLogged,
  assertStoreClean,
  count,
  counts,
  faultSchedule,
  gbOk,
  leftovers,
  listRows,
  runAndKill,
} from './schedule.ts'
import type { Schedule } from './schedule.ts'

const MiB = 1024 * 1024
const SCHEDULE = faultSchedule('test/faults/kill-backup.test.ts')
const VM_ROUNDS = 15
const CT_ROUNDS = 9
const SQFS_ROUNDS = 4
/** Source reads per second of a killed run: 32 MiB last about 1-2 s. */
const RATE = '16M'
/** One stream per lane, forked in a fixed order: the lanes run side by side. */
const LANES = { vm: SCHEDULE.fork(), tar: SCHEDULE.fork(), sqfs: SCHEDULE.fork() }

/** `n` bytes of the schedule's pseudo-random data (AES-CTR keyed from it: fast, replayable). */
const bytesOf = (s: Schedule, n: number): Buffer => {
  const key = Buffer.alloc(32)
  for (let i = 0; i < 32; i++) key[i] = s.int(0, 255)
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n))
}

/** The next command after a kill, and what it needs. */
type Next = 'backup' | 'prune' | 'verify' | 'list'

interface Lane {
  store: string
  /** Arguments of one backup run (without -v and --bwlimit). */
  backup: string[]
  /** Restore `volid` into `target` and compare it with its reference; throws on a difference. */
  restoreMatches: (volid: string, target: string, ref: string) => Promise<void>
}

/**
 * The next run after a kill: it must succeed and log the cleanup of every leftover; after it
 * the store must be clean. `list` takes no lock and cleans nothing, so it is followed by
 * `verify`, which does. Returns the command (for the summary).
 */
const nextRun = async (s: Schedule, lane: Lane, ctx: string): Promise<string> => {
  const next = s.pick<Next>(['backup', 'backup', 'prune', 'verify', 'list'])
  const before = await leftovers(lane.store)
  await ageLocks(lane.store)
  let stderr = ''
  const run = async (args: string[]): Promise<void> => {
    const r = await gbOk(['-v', ...args], `${ctx}, next run`)
    stderr += r.stderr
  }
  switch (next) {
    case 'backup':
      await run(lane.backup)
      break
    case 'prune':
      await run(['prune', '--store', lane.store, '--keep', `keep-last=${s.int(2, 4)}`])
      break
    case 'verify':
      await run(['verify', '--store', lane.store])
      break
    case 'list': {
      const rows = await listRows(lane.store, `${ctx}, next run list`)
      assert.ok(rows.every((r) => r.volid !== ''))
      await run(['verify', '--store', lane.store])
      break
    }
  }
  assertCleanupLogged(before, await leftovers(lane.store), stderr, `${ctx}, next ${next}`)
  return next
}

/**
 * One lane of kill rounds: `prepare(i)` changes the source and returns its reference and the
 * kill window (ms); the rest is the same for VMs and containers.
 */
const killRounds = async (
  name: string,
  s: Schedule,
  lane: Lane,
  rounds: number,
  prepare: (i: number) => Promise<{ ref: string; window: number; label: string }>,
  refs: Map<string, string>,
  work: string,
): Promise<void> => {
  const phases = new Map<string, number>()
  const nexts = new Map<string, number>()
  const t0 = performance.now()
  for (let i = 0; i < rounds; i++) {
    const { ref, window, label } = await prepare(i)
    const delay = s.float() * window
    let ctx = `seed=${SCHEDULE.seed} ${name} round ${i + 1}/${rounds} (${label}), kill at ${delay.toFixed(0)}/${window.toFixed(0)} ms`
    const killed = await runAndKill(['-v', ...lane.backup, '--bwlimit', RATE], delay, ctx)
    ctx += ` ${killed.phase}`
    count(phases, killed.phase)
    count(nexts, await nextRun(s, lane, ctx))
    const rows = await assertStoreClean(lane.store, ctx)
    // A backup is new when the killed run (committed before the kill) or the next one made it.
    for (const r of rows) if (!refs.has(r.volid)) refs.set(r.volid, ref)
    const listed = new Set(rows.map((r) => r.volid))
    for (const v of [...refs.keys()]) if (!listed.has(v)) refs.delete(v)
    const pick = s.pick(rows)
    const target = join(work, `restore-${name}-${i}`)
    await lane.restoreMatches(pick.volid, target, refs.get(pick.volid) ?? '')
    await rm(target, { recursive: true, force: true })
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1)
  console.log(
    `seed=${SCHEDULE.seed} ${name}: ${rounds} kills in ${secs} s; landed ${counts(phases)}; next runs ${counts(nexts)}`,
  )
}

describe('faults: backup SIGKILLed at random moments', { concurrency: 2 }, () => {
  let dir = ''
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-fault-backup-'))
  })
  after(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  })

  it('offline VM backup, full and incremental', { timeout: 10 * 60_000 }, async () => {
    const s = LANES.vm
    const work = join(dir, 'vm')
    await mkdir(work)
    const store = join(work, 'store')
    const disk = join(work, 'disk.qcow2')
    const conf = join(work, 'guest.conf')
    await writeFile(conf, 'name: fault-vm\n')
    await execOk('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(32 * MiB)])
    await execOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 32M', disk])
    const ctx0 = `seed=${SCHEDULE.seed} vm setup`
    await gbOk(['init', store, '--vm-backup-mode', 'incremental'], ctx0)
    const lane: Lane = {
      store,
      backup: backupArgs(store, 100, conf, '--disk', `scsi0=${disk}`),
      restoreMatches: async (volid, target, ref) => {
        await gbOk(['restore', '--store', store, volid, '--target', target], `restore ${volid}`)
        const c = await exec('qemu-img', [
          ...['compare', '-f', 'raw', '-F', 'raw'],
          ...[join(target, 'drive-scsi0.raw'), ref],
        ])
        assert.equal(c.code, 0, `${volid} restores other data than its source: ${c.stdout}`)
      },
    }
    const refs = new Map<string, string>()
    const snapshot = async (tag: string): Promise<string> => {
      const ref = join(work, `ref-${tag}.raw`)
      await execOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, ref])
      return ref
    }
    // The kill windows: an uninterrupted full and incremental backup at the same rate.
    const timed = async (): Promise<number> => {
      const t = performance.now()
      await gbOk([...lane.backup, '--bwlimit', RATE], ctx0)
      return performance.now() - t
    }
    const fullRef = await snapshot('full')
    const full = await timed()
    await execOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x12 8M 16M', disk])
    const incRef = await snapshot('inc')
    const inc = await timed()
    const first = await listRows(store, ctx0)
    assert.equal(first.length, 2, `${ctx0}: two backups`)
    assert.ok(first[0]?.parent === first[1]?.volid, `${ctx0}: the second is incremental`)
    refs.set(first[1]?.volid ?? '', fullRef)
    refs.set(first[0]?.volid ?? '', incRef)
    console.log(`vm: uninterrupted full ${full.toFixed(0)} ms, incremental ${inc.toFixed(0)} ms`)
    await killRounds(
      'vm',
      s,
      lane,
      VM_ROUNDS,
      async (i) => {
        const kind = s.pick(['full', 'incremental', 'incremental'])
        const off = s.int(0, 8) * 2
        await execOk('qemu-io', [
          ...['-f', 'qcow2', '-c', `write -P ${s.int(1, 255)} ${off}M 16M`, disk],
        ])
        // Without bitmaps the next backup is full (the previous one's is gone).
        if (kind === 'full') await gbOk(['bitmaps', '--disk', disk, '--drop-all'], 'drop bitmaps')
        const ref = await snapshot(String(i))
        return { ref, window: 1.2 * (kind === 'full' ? full : inc), label: kind }
      },
      refs,
      work,
    )
  })

  const containerLane = async (
    name: string,
    mode: 'tar' | 'squashfs',
    vmid: number,
    rounds: number,
    s: Schedule,
  ): Promise<void> => {
    const work = join(dir, name)
    await mkdir(work)
    const store = join(work, 'store')
    const rootfs = join(work, 'rootfs')
    const conf = join(work, 'guest.conf')
    await writeFile(conf, `hostname: ${name}\n`)
    await mkdir(join(rootfs, 'etc'), { recursive: true })
    await writeFile(join(rootfs, 'etc', 'hostname'), `${name}\n`)
    for (let f = 0; f < 8; f++) await writeFile(join(rootfs, `f${f}`), bytesOf(s, 4 * MiB))
    const ctx0 = `seed=${SCHEDULE.seed} ${name} setup`
    await gbOk(['init', store, '--lxc-backup-mode', mode], ctx0)
    const manifests = new Map<string, Manifest>()
    const lane: Lane = {
      store,
      backup: backupArgs(store, vmid, conf, '--rootfs', rootfs),
      restoreMatches: async (volid, target, ref) => {
        await gbOk(['restore', '--store', store, volid, '--target', target], `restore ${volid}`)
        const got = await treeManifest(join(target, 'rootfs'))
        assert.deepEqual(got, manifests.get(ref), `${volid} restores another tree than its source`)
      },
    }
    const t = performance.now()
    await gbOk([...lane.backup, '--bwlimit', RATE], ctx0)
    const window = 1.2 * (performance.now() - t)
    const refs = new Map<string, string>()
    manifests.set('initial', await treeManifest(rootfs))
    for (const r of await listRows(store, ctx0)) refs.set(r.volid, 'initial')
    console.log(`${name}: uninterrupted backup ${window.toFixed(0)} ms / 1.2`)
    await killRounds(
      name,
      s,
      lane,
      rounds,
      async (i) => {
        // Change, add and remove files, so that each backup has its own content.
        await writeFile(join(rootfs, `f${s.int(0, 7)}`), bytesOf(s, 4 * MiB))
        await writeFile(join(rootfs, 'etc', `round-${i}`), `${i}\n`)
        if (i > 0 && s.float() < 0.5) await unlink(join(rootfs, 'etc', `round-${i - 1}`))
        const tag = String(i)
        manifests.set(tag, await treeManifest(rootfs))
        return { ref: tag, window, label: mode }
      },
      refs,
      work,
    )
  }

  it('container backup in tar mode', { timeout: 10 * 60_000 }, async () => {
    await containerLane('ct-tar', 'tar', 200, CT_ROUNDS, LANES.tar)
  })

  it('container backup in squashfs mode', { timeout: 10 * 60_000 }, async () => {
    await containerLane('ct-sqfs', 'squashfs', 201, SQFS_ROUNDS, LANES.sqfs)
  })
})
