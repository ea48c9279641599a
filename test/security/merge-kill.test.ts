/**
 * Crash safety of the merges done by `remove` and `prune`: a removed backup that others build on
 * is first merged into its dependants. Here the whole process group of the command (node and its
 * qemu-img) is SIGKILLed at a random moment, the same command is run again, and then every backup
 * still listed must restore exactly the disk as it was at that backup's instant.
 *
 * Replay: GB_KILL_SEED=<seed> (printed at start and in every failure). GB_KILL_ROUNDS sets the
 * kills per command (default 30). GB_KILL_CLI=bin runs bin/guestbackup (tsx unless dist/ is
 * current, 2-3x slower to start) instead of a private compiled copy of src/. GB_KILL_KEEP=1
 * keeps the stores of failed rounds.
 * Kill moments are fractions of a measured run time, so a replay hits the same phases, not the
 * same instructions.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomInt } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { BIN, backupArgs } from '../helpers/cli.ts'
import { compileCli } from '../helpers/compiled-cli.ts'
import type { CliCommand } from '../helpers/compiled-cli.ts'
import {
  exec,
  execOk,
  killGroup,
  processesUnder,
  spawnGroup,
  waitGroupGone,
} from '../helpers/process-group.ts'
import type { ExecResult, ProcInfo } from '../helpers/process-group.ts'
import { mulberry32, seedFromEnv } from '../helpers/prng.ts'
import { randomWrites } from '../helpers/random-data.ts'

const MiB = 1024 * 1024
const VMID = 100
const SEED = seedFromEnv('GB_KILL_SEED') ?? randomInt(0, 2 ** 32)
const ROUNDS = Number(process.env['GB_KILL_ROUNDS'] ?? '30')
const KEEP = process.env['GB_KILL_KEEP'] === '1'

/**
 * The disk is large but sparse: a merge lasts long enough (~0.2 s per level, measured) to be hit
 * often, while backups, raw references and restores only cost what is allocated (~30 MiB).
 */
const DISK_SIZE = 512 * MiB

/**
 * qemu-io commands run on the disk before each backup (full, then three incrementals). Every
 * level holds several MiB, so each merge copies real data; the writes overlap earlier levels,
 * and zeroes over data, a discard and a write that is not cluster aligned cover the cases where
 * a merge must carry "no data" or part of a cluster.
 */
const WRITES: readonly (readonly string[])[] = [
  ['write -P 0x11 0 14M', 'write -P 0x12 16M 12M', 'write -P 0x13 300M 2M'],
  [
    'write -P 0x21 2M 8M',
    'write -P 0x22 20M 4M',
    'write -P 0x23 28M 3M',
    'write -P 0x24 1500k 300k',
    'write -P 0x25 400M 2M',
  ],
  ['write -z 4M 2M', 'write -P 0x31 9M 7M', 'discard 17M 1M', 'write -P 0x32 29M 3M'],
  ['write -P 0x41 0 3M', 'write -P 0x42 11M 8M', 'write -P 0x43 23M 6M', 'write -z 300M 1M'],
]

interface Row {
  volid: string
  parent: string | null
  size: number
}

type Command = 'remove' | 'prune'

/** One run of a command to kill: its arguments for a store and what must be listed after it. */
interface Plan {
  args: (store: string) => string[]
  expected: readonly string[]
  /** The volume name `remove` may answer "does not exist" for. */
  victim?: string
  label: string
}

const nth = <T>(xs: readonly T[], i: number): T => {
  const x = xs[i]
  if (x === undefined) throw new Error(`no element ${i}`)
  return x
}

const volnameOf = (volid: string): string => volid.slice(volid.indexOf(':') + 1)

const mapLimit = async <T>(
  xs: readonly T[],
  limit: number,
  fn: (x: T, i: number) => Promise<void>,
): Promise<void> => {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < xs.length) {
      const i = next++
      await fn(nth(xs, i), i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, xs.length) }, worker))
}

/** Where in the command the kill landed, from the processes seen just before it. */
const killPhase = (members: readonly ProcInfo[]): { kind: string; detail: string } => {
  if (members.length === 0) return { kind: 'after exit', detail: 'after the command exited' }
  const tools = members.filter((p) => p.comm !== 'node' && p.comm !== 'sh')
  if (tools.length === 0) return { kind: 'in node', detail: 'in node (no tool running)' }
  const what = tools.map(
    (p) => `${p.cmdline.split(' ').slice(0, 2).join(' ')} in ${basename(p.cwd)}`,
  )
  return { kind: `in ${nth(tools, 0).comm}`, detail: `during ${what.join(', ')}` }
}

const lastLine = (s: string): string => s.trim().split('\n').at(-1) ?? ''

// The remove and the prune rounds run side by side (2 cores): half the wall time. The kill
// windows are measured under that same load (the two lanes are timed side by side in before).
describe('security: remove and prune SIGKILLed mid-merge', { concurrency: 2 }, () => {
  let dir = ''
  let template = ''
  let gbCmd: CliCommand = { file: BIN, args: [], diagnostics: '' }
  /** Volume ids of the template's backups, oldest (the full one) first. */
  const chain: string[] = []
  /** Raw copy of the disk at each backup's instant, by volume id. */
  const refs = new Map<string, string>()
  /** Duration in ms of an uninterrupted run of each command line, by plan label. */
  const duration = new Map<string, number>()
  const windowOf = (plan: Plan): number => {
    const ms = duration.get(plan.label)
    if (ms === undefined) throw new Error(`${plan.label} was not timed`)
    return ms
  }
  let keepFailed = false

  const gb = (args: readonly string[]): Promise<ExecResult> =>
    exec(gbCmd.file, [...gbCmd.args, ...args])
  const gbOk = async (args: readonly string[], ctx: string): Promise<ExecResult> => {
    const r = await gb(args)
    if (r.code !== 0) {
      throw new Error(`${ctx}: guestbackup ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`)
    }
    return r
  }
  const listRows = async (store: string, ctx: string): Promise<Row[]> =>
    JSON.parse((await gbOk(['list', '--store', store, '--json'], ctx)).stdout) as Row[]

  /**
   * The store lists exactly `expected`, no listed backup depends on one that is not listed, and
   * every listed backup restores identical to its reference (all are tried; problems are joined).
   */
  const verifyStore = async (
    store: string,
    expected: readonly string[],
    work: string,
    ctx: string,
  ): Promise<void> => {
    const rows = await listRows(store, ctx)
    const listed = rows.map((r) => r.volid).sort()
    assert.deepEqual(
      listed,
      [...expected].sort(),
      `${ctx}: listed ${JSON.stringify(listed)}, expected ${JSON.stringify([...expected].sort())}`,
    )
    for (const r of rows) {
      assert.ok(
        r.parent === null || listed.includes(r.parent),
        `${ctx}: ${r.volid} depends on ${r.parent ?? ''}, which is not listed`,
      )
    }
    const problems: string[] = []
    await mapLimit(rows, 2, async (row, k) => {
      const target = join(work, `restore-${k}`)
      const ref = refs.get(row.volid)
      if (ref === undefined) {
        problems.push(`${row.volid} is not a backup of the template`)
        return
      }
      const r = await gb(['restore', '--store', store, row.volid, '--target', target])
      if (r.code !== 0) {
        problems.push(`restore ${row.volid} exited ${r.code}: ${lastLine(r.stderr)}`)
      } else {
        const raw = join(target, 'drive-scsi0.raw')
        const c = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, ref])
        if (c.code !== 0) {
          const why = c.code === 1 ? 'different data' : `compare failed (${c.code})`
          problems.push(`${row.volid} restores ${why}: ${`${c.stdout}${c.stderr}`.trim()}`)
        }
      }
      await rm(target, { recursive: true, force: true })
    })
    assert.deepEqual(problems, [], `${ctx}: ${problems.join('; ')}`)
  }

  /** Time an uninterrupted run on a fresh copy (the kill window) and check its result. */
  const measure = async (plan: Plan): Promise<number> => {
    const ctx = `seed=${SEED} uninterrupted ${plan.label}`
    const work = await mkdtemp(join(dir, 'measure-'))
    const store = join(work, 'store')
    await execOk('cp', ['-a', template, store])
    const t0 = performance.now()
    const child = spawnGroup(gbCmd.file, [...gbCmd.args, ...plan.args(store)])
    const exit = await child.exited
    const ms = performance.now() - t0
    assert.equal(exit.code, 0, `${ctx}: exited ${exit.code ?? exit.signal}: ${child.stderr()}`)
    await verifyStore(store, plan.expected, work, ctx)
    await rm(work, { recursive: true, force: true })
    return ms
  }

  before(async () => {
    console.log(`seed=${SEED} rounds=${ROUNDS}`)
    assert.ok(Number.isInteger(ROUNDS) && ROUNDS > 0, `GB_KILL_ROUNDS=${ROUNDS}`)
    dir = await mkdtemp(join(tmpdir(), 'gb-merge-kill-'))
    if (process.env['GB_KILL_CLI'] !== 'bin') {
      gbCmd = await compileCli(join(dir, 'cli'))
      if (gbCmd.diagnostics !== '') {
        console.log(`tsc reported errors; testing what it emitted:\n${gbCmd.diagnostics}`)
      }
    }
    template = join(dir, 'template')
    const disk = join(dir, 'disk.qcow2')
    const conf = join(dir, 'guest.conf')
    await writeFile(conf, 'name: merge-kill\n')
    await execOk('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(DISK_SIZE)])
    const ctx = `seed=${SEED} template`
    await gbOk(['init', template, '--vm-backup-mode', 'incremental'], ctx)
    for (const [n, writes] of WRITES.entries()) {
      // Random data: the store compresses, and the sizes checked below are of the data written.
      const cmds = await randomWrites(dir, writes)
      await execOk('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), disk])
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
    // The persistent bitmap must have made a linear chain, or there would be nothing to merge.
    const rows = await listRows(template, ctx)
    assert.deepEqual(
      rows.map((r) => [r.volid, r.parent]),
      chain.map((v, i) => [v, i === 0 ? null : nth(chain, i - 1)]).reverse(),
      `${ctx}: a full backup and three incrementals on top of each other`,
    )
    for (const r of rows) assert.ok(r.size >= 3 * MiB, `${ctx}: ${r.volid} holds ${r.size} bytes`)
    // Each command line once: its kill delays are drawn from [0, its own run time], so a short
    // merge (a middle backup, keep-last=3) is not mostly killed after it is done.
    const timeAll = async (plans: readonly Plan[]): Promise<void> => {
      for (const p of plans) duration.set(p.label, await measure(p))
    }
    await Promise.all([timeAll([0, 1, 2].map(removePlan)), timeAll([1, 2, 3].map(prunePlan))])
    const times = [...duration].map(
      ([label, ms]) => `${label.split(' ', 3).join(' ')} ${ms.toFixed(0)}`,
    )
    console.log(`uninterrupted runs (ms): ${times.join(', ')}`)
  })

  after(async () => {
    if (dir === '') return
    const strays = await processesUnder(dir)
    for (const p of strays) {
      try {
        process.kill(p.pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }
    if (keepFailed) console.log(`kept ${dir}`)
    else await rm(dir, { recursive: true, force: true })
    assert.deepEqual(
      strays.map((p) => `${p.pid} ${p.cmdline}`),
      [],
      `seed=${SEED}: processes left behind under ${dir}`,
    )
  })

  /** `remove` of the k-th oldest backup; k < 3, so a later backup always builds on it. */
  const removePlan = (k: number): Plan => {
    const victim = nth(chain, k)
    return {
      args: (store) => ['remove', '--store', store, victim],
      expected: chain.filter((v) => v !== victim),
      victim: volnameOf(victim),
      label: `remove ${k === 0 ? 'full base' : `middle #${k}`} ${victim}`,
    }
  }
  /** `prune --keep keep-last=n`: the older backups go, the oldest kept one must absorb them. */
  const prunePlan = (n: number): Plan => ({
    args: (store) => ['prune', '--store', store, '--keep', `keep-last=${n}`],
    expected: chain.slice(chain.length - n),
    label: `prune keep-last=${n}`,
  })

  /**
   * Kill one run of `plan` after `delay` ms, run it again and verify the store. Tells `killed`
   * where the kill landed (also for rounds that then fail); returns how the rerun answered.
   */
  const round = async (
    cmd: Command,
    i: number,
    plan: Plan,
    delay: number,
    killed: (kind: string) => void,
  ): Promise<string> => {
    let ctx = `seed=${SEED} ${cmd} round ${i + 1}/${ROUNDS}: ${plan.label}, kill at ${delay.toFixed(0)}/${windowOf(plan).toFixed(0)} ms`
    const work = join(dir, `${cmd}-${i}`)
    const store = join(work, 'store')
    let ok = false
    try {
      await mkdir(work)
      await execOk('cp', ['-a', template, store])
      const args = plan.args(store)
      const child = spawnGroup(gbCmd.file, [...gbCmd.args, ...args])
      await sleep(delay)
      const members = child.hasExited() ? [] : await killGroup(child.pid)
      const exit = await child.exited
      const phase = killPhase(members)
      killed(phase.kind)
      ctx += ` ${phase.detail}`
      const left = await waitGroupGone(child.pid)
      assert.deepEqual(
        left.map((p) => `${p.pid} ${p.cmdline}`),
        [],
        `${ctx}: processes left in the killed group: ${left.map((p) => p.cmdline).join('; ')}`,
      )
      assert.ok(
        exit.code === 0 || exit.signal === 'SIGKILL',
        `${ctx}: the run failed by itself (exit ${exit.code ?? exit.signal}): ${child.stderr()}`,
      )
      // The killed run's guest lock names a process of this host that is gone: the rerun
      // breaks it at once (io/lock.ts), it does not wait for it to go stale.
      const r = await gb([...args, '--lock-wait', '0'])
      let rerun = 'ok'
      if (cmd === 'remove' && r.code === 1) {
        // Only when the kill came after the removal was committed; verifyStore then checks that
        // the victim is gone and its dependants whole.
        assert.equal(
          lastLine(r.stderr),
          `guestbackup: backup ${plan.victim ?? ''} does not exist`,
          `${ctx}: the rerun exited 1: ${r.stderr.trim()}`,
        )
        rerun = 'does not exist'
      } else {
        assert.equal(r.code, 0, `${ctx}: the rerun exited ${r.code}: ${r.stderr.trim()}`)
      }
      await verifyStore(store, plan.expected, work, ctx)
      ok = true
      return rerun
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e)
      const kept = KEEP ? ` (store kept in ${work})` : ''
      throw new Error(`${msg.startsWith(ctx) ? msg : `${ctx}: ${msg}`}${kept}`, { cause: e })
    } finally {
      if (ok || !KEEP) await rm(work, { recursive: true, force: true })
      else keepFailed = true
    }
  }

  /** ROUNDS kill rounds of `cmd`; all are run, then every failure is reported at once. */
  const killRounds = async (
    cmd: Command,
    pick: (i: number) => Plan,
    seed: number,
  ): Promise<void> => {
    const rng = mulberry32(seed)
    const failures: string[] = []
    const kinds = new Map<string, number>()
    const count = (m: Map<string, number>, k: string): void => {
      m.set(k, (m.get(k) ?? 0) + 1)
    }
    const reruns = new Map<string, number>()
    const t0 = performance.now()
    for (let i = 0; i < ROUNDS; i++) {
      const plan = pick(i)
      const delay = rng() * windowOf(plan)
      try {
        const killed = (kind: string): void => {
          count(kinds, kind)
        }
        count(reruns, await round(cmd, i, plan, delay, killed))
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e)
        console.log(`FAIL ${msg}`)
        failures.push(msg)
        count(reruns, 'failed')
      }
    }
    const secs = ((performance.now() - t0) / 1000).toFixed(1)
    console.log(
      `seed=${SEED} ${cmd}: ${ROUNDS} rounds in ${secs} s; kills ${JSON.stringify(Object.fromEntries(kinds))}; reruns/verification ${JSON.stringify(Object.fromEntries(reruns))}`,
    )
    assert.equal(
      failures.length,
      0,
      `seed=${SEED}: ${failures.length}/${ROUNDS} ${cmd} rounds failed:\n${failures.join('\n')}`,
    )
  }

  // ~2 min each on an idle 2-core machine, but every round is a dozen CLI starts: under a loaded
  // suite that can pass the default 5 min, and a timeout would abandon rounds midway.
  const slow = { timeout: 15 * 60_000 }

  it(
    'remove of a backup others build on, killed at random moments, then run again',
    slow,
    async () => {
      // The full base and both middle backups in turn; the kill moment is the random part.
      await killRounds('remove', (i) => removePlan(i % 3), SEED)
    },
  )

  it(
    'prune that merges bases into kept backups, killed at random moments, then run again',
    slow,
    async () => {
      // Its own stream, so that changing the remove rounds does not move the prune kills.
      const rng = mulberry32(SEED ^ 0x9e3779b9)
      const keeps = Array.from({ length: ROUNDS }, () => 1 + Math.floor(rng() * 3))
      await killRounds('prune', (i) => prunePlan(nth(keeps, i)), SEED ^ 0x85ebca6b)
    },
  )
})
