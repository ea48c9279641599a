/**
 * Fault suite: the store operations SIGKILLed at random moments, on copies of one store that
 * holds a VM chain (a full backup and three incrementals): `prune --keep keep-last=N` (merging
 * the removed bases into the kept dependants), `remove` of a backup others build on (the base
 * or a middle one: a merge) and `verify`. After each kill: no child of the killed run survives;
 * the next command (the same one again, or backup, prune, verify, or list followed by verify,
 * picked at random) succeeds and logs the cleanup of what the killed run left; then the store
 * holds exactly its listed backups, all verifying, chains whole, and a random one restores
 * identical to the disk at its backup.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs } from '../helpers/cli.ts'
import { exec, execOk } from '../helpers/process-group.ts'
import {
  ageLocks,
  assertCleanupLogged,
  assertStoreClean,
  count,
  counts,
  faultSchedule,
  gb,
  gbOk,
  leftovers,
  listRows,
  runAndKill,
} from './schedule.ts'
import type { Schedule } from './schedule.ts'

const MiB = 1024 * 1024
const SCHEDULE = faultSchedule('test/faults/kill-store-ops.test.ts')
const ROUNDS = { prune: 9, remove: 9, verify: 6 }
/** One stream per lane, forked in a fixed order: the lanes run side by side. */
const LANES = { prune: SCHEDULE.fork(), remove: SCHEDULE.fork(), verify: SCHEDULE.fork() }
const VMID = 100

/**
 * Large but sparse (as in test/security/merge-kill.test.ts): a merge copies several MiB per
 * level and lasts long enough to be hit, while copies of the store stay small.
 */
const DISK_SIZE = 512 * MiB
const WRITES: readonly (readonly string[])[] = [
  ['write -P 0x11 0 14M', 'write -P 0x12 16M 12M', 'write -P 0x13 300M 2M'],
  ['write -P 0x21 2M 8M', 'write -P 0x22 20M 4M', 'write -P 0x24 1500k 300k'],
  ['write -z 4M 2M', 'write -P 0x31 9M 7M', 'discard 17M 1M', 'write -P 0x32 29M 3M'],
  ['write -P 0x41 0 3M', 'write -P 0x42 11M 8M', 'write -P 0x43 23M 6M', 'write -z 300M 1M'],
]

type Op = 'prune' | 'remove' | 'verify'

/** One killed command line and what the store must list once it has run to its end. */
interface Plan {
  op: Op
  args: (store: string) => string[]
  /** Listed after an uninterrupted run. */
  expected: readonly string[]
  /** `remove`: the volume name, which a rerun may find gone already. */
  victim?: string
  label: string
}

describe('faults: prune, remove and verify SIGKILLed at random moments', { concurrency: 2 }, () => {
  let dir = ''
  let template = ''
  let disk = ''
  let conf = ''
  /** Volume ids of the template's backups, oldest first. */
  const chain: string[] = []
  /** Raw copy of the disk at each backup, by volume id. */
  const refs = new Map<string, string>()
  const windows = new Map<string, number>()

  const prunePlan = (n: number): Plan => ({
    op: 'prune',
    args: (store) => ['-v', 'prune', '--store', store, '--keep', `keep-last=${n}`],
    expected: chain.slice(chain.length - n),
    label: `prune keep-last=${n}`,
  })
  const removePlan = (k: number): Plan => {
    const victim = chain[k] ?? ''
    return {
      op: 'remove',
      args: (store) => ['-v', 'remove', '--store', store, victim],
      expected: chain.filter((v) => v !== victim),
      victim: victim.slice(victim.indexOf(':') + 1),
      label: `remove ${k === 0 ? 'the full base' : `middle #${k}`}`,
    }
  }
  const verifyPlan: Plan = {
    op: 'verify',
    args: (store) => ['-v', 'verify', '--store', store],
    expected: chain,
    label: 'verify',
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-fault-ops-'))
    template = join(dir, 'template')
    disk = join(dir, 'disk.qcow2')
    conf = join(dir, 'guest.conf')
    await writeFile(conf, 'name: fault-ops\n')
    await execOk('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(DISK_SIZE)])
    const ctx = `seed=${SCHEDULE.seed} template`
    await gbOk(['init', template, '--vm-backup-mode', 'incremental'], ctx)
    for (const [n, writes] of WRITES.entries()) {
      await execOk('qemu-io', ['-f', 'qcow2', ...writes.flatMap((c) => ['-c', c]), disk])
      const ref = join(dir, `ref-${n}.raw`)
      await execOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, ref])
      const r = await gbOk(
        backupArgs(template, VMID, conf, '--disk', `scsi0=${disk}`, '--json'),
        ctx,
      )
      const { volid } = JSON.parse(r.stdout) as { volid: string }
      chain.push(volid)
      refs.set(volid, ref)
    }
    const rows = await assertStoreClean(template, ctx)
    assert.deepEqual(
      rows.map((r) => r.parent),
      [chain[2], chain[1], chain[0], null],
      `${ctx}: a full backup and three incrementals on top of each other`,
    )
    // The kill windows: each command line once, uninterrupted, on a copy (side by side, as
    // the lanes run).
    const time = async (plans: readonly Plan[]): Promise<void> => {
      for (const p of plans) {
        const work = await mkdtemp(join(dir, 'measure-'))
        const store = join(work, 'store')
        await execOk('cp', ['-a', template, store])
        const t = performance.now()
        await gbOk(p.args(store), `${ctx}: uninterrupted ${p.label}`)
        windows.set(p.label, performance.now() - t)
        await rm(work, { recursive: true, force: true })
      }
    }
    await Promise.all([
      time([1, 2, 3].map(prunePlan)),
      time([...[0, 1, 2].map(removePlan), verifyPlan]),
    ])
    const ms = [...windows].map(([l, t]) => `${l} ${t.toFixed(0)}`).join(', ')
    console.log(`uninterrupted runs (ms): ${ms}`)
  })

  after(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  })

  /**
   * The next run after a kill of `plan`: the same command again, or another one. Returns what
   * ran (for the summary) and whether the store must now list exactly `plan.expected`.
   */
  const nextRun = async (
    s: Schedule,
    plan: Plan,
    store: string,
    work: string,
    ctx: string,
  ): Promise<{ next: string; exact: boolean }> => {
    const next = s.pick(['same', 'same', 'backup', 'prune', 'verify', 'list'] as const)
    const before = await leftovers(store)
    await ageLocks(store)
    let stderr = ''
    const run = async (args: readonly string[]): Promise<number | null> => {
      const r = await gb(args)
      stderr += r.stderr
      return r.code
    }
    const must = async (args: readonly string[]): Promise<void> => {
      const code = await run(args)
      assert.equal(code, 0, `${ctx}: the next run (${next}) exited ${code}: ${stderr.trim()}`)
    }
    let exact = false
    switch (next) {
      case 'same': {
        const listed = (await listRows(store, ctx)).map((r) => r.volid)
        const code = await run(plan.args(store))
        // A remove killed after it was done finds nothing to remove: the command's intent holds.
        const gone =
          plan.victim !== undefined &&
          before.journals.length === 0 &&
          !listed.some((v) => v.endsWith(plan.victim ?? ''))
        if (gone && code === 1) {
          assert.match(stderr, new RegExp(`backup ${plan.victim ?? ''} does not exist`))
        } else {
          assert.equal(code, 0, `${ctx}: the rerun exited ${code}: ${stderr.trim()}`)
        }
        exact = true
        break
      }
      case 'backup': {
        // A copy of the disk: the lanes run side by side and a backup writes its bitmaps.
        const copy = join(work, 'disk.qcow2')
        await execOk('cp', ['--sparse=always', disk, copy])
        await must(['-v', ...backupArgs(store, VMID, conf, '--disk', `scsi0=${copy}`)])
        break
      }
      case 'prune':
        await must(['-v', 'prune', '--store', store, '--keep', `keep-last=${s.int(2, 4)}`])
        break
      case 'verify':
        await must(['-v', 'verify', '--store', store])
        exact = plan.op === 'verify'
        break
      case 'list':
        await listRows(store, ctx)
        await must(['-v', 'verify', '--store', store])
        exact = plan.op === 'verify'
        break
    }
    assertCleanupLogged(before, await leftovers(store), stderr, `${ctx}, next ${next}`)
    return { next, exact }
  }

  /** Kill rounds of one command; `pick(i)` chooses the plan of round i. */
  const killRounds = async (
    name: Op,
    s: Schedule,
    rounds: number,
    pick: () => Plan,
  ): Promise<void> => {
    const phases = new Map<string, number>()
    const nexts = new Map<string, number>()
    const t0 = performance.now()
    for (let i = 0; i < rounds; i++) {
      const plan = pick()
      const window = windows.get(plan.label) ?? 0
      const delay = s.float() * window
      let ctx = `seed=${SCHEDULE.seed} ${name} round ${i + 1}/${rounds} (${plan.label}), kill at ${delay.toFixed(0)}/${window.toFixed(0)} ms`
      const work = join(dir, `${name}-${i}`)
      await mkdir(work)
      const store = join(work, 'store')
      await execOk('cp', ['-a', template, store])
      const killed = await runAndKill(plan.args(store), delay, ctx)
      ctx += ` ${killed.phase}`
      count(phases, killed.phase)
      const { next, exact } = await nextRun(s, plan, store, work, ctx)
      count(nexts, next)
      const rows = await assertStoreClean(store, ctx)
      const listed = rows.map((r) => r.volid)
      // A backup the next run made is of the disk as the template's newest one saw it.
      const known = listed.filter((v) => refs.has(v))
      const made = listed.filter((v) => !refs.has(v))
      assert.ok(next === 'backup' || made.length === 0, `${ctx}: unknown backups ${made.join()}`)
      assert.ok(made.length <= 1, `${ctx}: several new backups ${made.join()}`)
      if (exact) assert.deepEqual(known.sort(), [...plan.expected].sort(), `${ctx}: listed`)
      else if (next !== 'prune') {
        // The killed command may or may not have got to its end; it removed nothing else.
        const missing = plan.expected.filter((v) => !listed.includes(v))
        assert.deepEqual(missing, [], `${ctx}: lost backups the command keeps`)
      }
      const chosen = s.pick(listed)
      const target = join(work, 'restore')
      await gbOk(['restore', '--store', store, chosen, '--target', target], ctx)
      const ref = refs.get(chosen) ?? refs.get(chain.at(-1) ?? '') ?? ''
      const c = await exec('qemu-img', [
        ...['compare', '-f', 'raw', '-F', 'raw', join(target, 'drive-scsi0.raw'), ref],
      ])
      assert.equal(c.code, 0, `${ctx}: ${chosen} restores other data than its disk: ${c.stdout}`)
      await rm(work, { recursive: true, force: true })
    }
    const secs = ((performance.now() - t0) / 1000).toFixed(1)
    console.log(
      `seed=${SCHEDULE.seed} ${name}: ${rounds} kills in ${secs} s; landed ${counts(phases)}; next runs ${counts(nexts)}`,
    )
  }

  const slow = { timeout: 10 * 60_000 }

  it('prune merging removed bases into kept backups', slow, async () => {
    const s = LANES.prune
    await killRounds('prune', s, ROUNDS.prune, () => prunePlan(s.int(1, 3)))
  })

  it('remove of the base or a middle backup of the chain', slow, async () => {
    const s = LANES.remove
    await killRounds('remove', s, ROUNDS.remove, () => removePlan(s.pick([0, 1, 1, 2, 2])))
  })

  it('verify of the whole store', slow, async () => {
    await killRounds('verify', LANES.verify, ROUNDS.verify, () => verifyPlan)
  })
})
