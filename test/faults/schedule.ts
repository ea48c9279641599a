/**
 * The crash-safety fault suite's shared parts (kill-*.test.ts): a seeded schedule of random
 * choices, the real CLI (bin/guestbackup) started as a process and SIGKILLed at a moment of it,
 * and the checks every kill is followed by: no child of the killed run survives it, the next
 * run says what it cleaned up, and the store holds exactly its listed backups, each verifying.
 *
 * Every random choice of a file comes from one seed: `GUESTBACKUP_FAULT_SEED` when set, else a
 * random one, printed first thing so that a failure can be replayed. Kill moments are drawn in
 * [0, T) with T a measured run time, so a replay hits the same phases, not the same instructions.
 */
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { readdir, readFile, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { BIN } from '../helpers/cli.ts'
import { exec, processTree } from '../helpers/process-group.ts'
import type { ExecResult, ProcInfo } from '../helpers/process-group.ts'
import { mulberry32, seedFromEnv } from '../helpers/prng.ts'
import * as lockModule from '../../src/io/lock.ts'

/** The environment variable that replays a schedule. */
export const SEED_ENV = 'GUESTBACKUP_FAULT_SEED'

/** Seeded random choices; every one a test makes must come from here. */
export class Schedule {
  readonly seed: number
  readonly #next: () => number
  constructor(seed: number) {
    this.seed = seed
    this.#next = mulberry32(seed)
  }
  /** Uniform in [0, 1). */
  float(): number {
    return this.#next()
  }
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.#next() * (hi - lo + 1))
  }
  /** One of `xs`, uniformly. */
  pick<T>(xs: readonly T[]): T {
    const x = xs[Math.floor(this.#next() * xs.length)]
    if (x === undefined) throw new Error('pick from an empty list')
    return x
  }
  /** A sub-schedule with its own stream, so lanes run side by side stay replayable. */
  fork(): Schedule {
    return new Schedule(Math.floor(this.#next() * 2 ** 32))
  }
}

/**
 * The schedule of test file `file` (its path from the repository root), its seed printed with
 * the command line that replays it.
 */
export const faultSchedule = (file: string): Schedule => {
  const seed = seedFromEnv(SEED_ENV) ?? randomInt(0, 2 ** 32)
  console.log(
    `fault schedule seed: ${seed} (replay: ${SEED_ENV}=${seed} node --import tsx --test ${file})`,
  )
  return new Schedule(seed)
}

/** Run bin/guestbackup to completion. */
export const gb = (args: readonly string[]): Promise<ExecResult> => exec(BIN, args)

/** {@link gb} that must exit 0; `ctx` prefixes the failure. */
export const gbOk = async (args: readonly string[], ctx: string): Promise<ExecResult> => {
  const r = await gb(args)
  if (r.code !== 0) {
    throw new Error(`${ctx}: guestbackup ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`)
  }
  return r
}

/** What became of a run killed by {@link runAndKill}. */
export interface KilledRun {
  /** The CLI and its descendants just before the kill; [] when it had exited by itself. */
  members: ProcInfo[]
  code: number | null
  signal: NodeJS.Signals | null
  stderr: string
  /** Where the kill landed: `after exit`, `in node`, or `in <tool>`. */
  phase: string
}

const ENV_MARK = 'GUESTBACKUP_FAULT_MARK'

/** Processes whose environment carries `mark` (the killed run's descendants, wherever now). */
const marked = async (mark: string): Promise<number[]> => {
  const needle = `${ENV_MARK}=${mark}\0`
  const out: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const env = await readFile(`/proc/${name}/environ`, 'latin1').catch(() => '')
    if (env.includes(needle)) {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      if (state !== '' && state !== 'Z' && state !== 'X') out.push(Number(name))
    }
  }
  return out
}

const describeProc = async (pid: number): Promise<string> => {
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  return `${pid} ${cmd.replaceAll('\0', ' ').trim()}`
}

/**
 * Start `bin/guestbackup args` and SIGKILL that one process after `delayMs` (its children are
 * not signalled: they must go by themselves). Then waits up to `graceMs` for every process that
 * carries the run's environment mark to be gone, and fails naming the survivors (killing them,
 * so that one failure does not spoil the next rounds).
 */
export const runAndKill = async (
  args: readonly string[],
  delayMs: number,
  ctx: string,
  graceMs = 1_000,
): Promise<KilledRun> => {
  const mark = randomBytes(8).toString('hex')
  const child = spawn(BIN, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, [ENV_MARK]: mark },
  })
  const { pid } = child
  if (pid === undefined) throw new Error(`${ctx}: cannot start ${BIN}`)
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  const state = { done: false }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve, reject) => {
      child.once('error', reject)
      child.once('exit', (code, signal) => {
        state.done = true
        resolve({ code, signal })
      })
    },
  )
  await sleep(delayMs)
  let members: ProcInfo[] = []
  if (!state.done) {
    members = await processTree(pid)
    try {
      process.kill(pid, 'SIGKILL')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e
    }
  }
  const exit = await exited
  const tools = members.filter((p) => p.pid !== pid && p.comm !== 'node' && p.comm !== 'sh')
  const phase =
    members.length === 0
      ? 'after exit'
      : tools.length === 0
        ? 'in node'
        : `in ${[...new Set(tools.map((p) => p.comm))].join('+')}`
  const deadline = Date.now() + graceMs
  let left = await marked(mark)
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(50)
    left = await marked(mark)
  }
  if (left.length > 0) {
    const names = await Promise.all(left.map(describeProc))
    for (const p of left) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // Gone meanwhile.
      }
    }
    assert.fail(
      `${ctx}: ${left.length} child process(es) of the killed run still ran ${graceMs} ms after the kill (${phase}): ${names.join('; ')}`,
    )
  }
  assert.ok(
    exit.code === 0 || exit.signal === 'SIGKILL',
    `${ctx}: the run failed by itself (exit ${exit.code ?? exit.signal}): ${stderr.trim()}`,
  )
  return { members, ...exit, stderr, phase }
}

/**
 * Whether the guest lock breaks a dead holder's lock itself and says so (the cross-host lock
 * protocol, which exports its poll period). The proper-lockfile lock takes a stale lock over
 * silently, so with it a stale lock's cleanup cannot be found in the log.
 */
export const LOCK_LOGS_BREAKS = 'POLL_MS' in lockModule

/**
 * A SIGKILLed holder leaves its guest lock behind, which proper-lockfile takes over only once
 * it is stale (6 s after the holder's last refresh). Age every `.lock` in the store instead of
 * sleeping that long each round: the next run sees what it would see a little later. (The
 * cross-host lock breaks a dead holder of this host at once and ignores the times.)
 */
export const ageLocks = async (store: string): Promise<void> => {
  const past = new Date(Date.now() - 60_000)
  for (const rel of await readdir(store, { recursive: true })) {
    if (rel.endsWith('.lock')) await utimes(join(store, rel), past, past)
  }
}

/** What a killed run left in a store, by kind, as paths relative to the store. */
export interface Leftovers {
  partials: string[]
  journals: string[]
  locks: string[]
  tmps: string[]
  /** Backup directories without a manifest (a container backup written in place). */
  unfinished: string[]
}

const BACKUP_DIR = /^(qemu|lxc)-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/
/** Names `Dir.writeFileAtomic` writes before its rename. */
const ATOMIC_TMP = /^\..+\.[0-9a-f]{12}\.tmp$/

/** Look at what is in `store` that no listed backup explains. */
export const leftovers = async (store: string): Promise<Leftovers> => {
  const out: Leftovers = { partials: [], journals: [], locks: [], tmps: [], unfinished: [] }
  for (const g of await readdir(store, { withFileTypes: true })) {
    if (ATOMIC_TMP.test(g.name)) out.tmps.push(g.name)
    if (!g.isDirectory() || !/^\d+$/.test(g.name)) continue
    for (const e of await readdir(join(store, g.name), { withFileTypes: true })) {
      const rel = `${g.name}/${e.name}`
      if (e.name.startsWith('.partial-')) out.partials.push(rel)
      else if (e.name === '.removing.json') out.journals.push(rel)
      else if (e.name.startsWith('.lock')) out.locks.push(rel)
      else if (ATOMIC_TMP.test(e.name)) out.tmps.push(rel)
      else if (e.isDirectory() && BACKUP_DIR.test(e.name)) {
        const files = await readdir(join(store, rel))
        if (!files.includes('manifest.json')) out.unfinished.push(rel)
        for (const f of files) if (ATOMIC_TMP.test(f)) out.tmps.push(`${rel}/${f}`)
      }
    }
  }
  return out
}

/** Whether anything is left. */
export const anyLeft = (l: Leftovers): boolean =>
  [l.partials, l.journals, l.locks, l.tmps, l.unfinished].some((xs) => xs.length > 0)

/**
 * The next run's log (`stderr`, at `-v`) must name the cleanup of every leftover in `before`
 * that is gone after it: a partial dir, a removal journal, a temporary file, a stale lock.
 * A backup dir without manifest is either a removal's victim (the journal's line) or a
 * container's written in place (its own line).
 */
export const assertCleanupLogged = (
  before: Leftovers,
  after: Leftovers,
  stderr: string,
  ctx: string,
): void => {
  const gone = (xs: string[], now: string[]): string[] => xs.filter((x) => !now.includes(x))
  const missing: string[] = []
  const base = (rel: string): string => rel.slice(rel.lastIndexOf('/') + 1)
  for (const p of gone(before.partials, after.partials)) {
    const name = base(p).slice('.partial-'.length)
    if (
      !new RegExp(`removing the partial backup \\S*${name}\\S* left by a killed run`).test(stderr)
    )
      missing.push(`partial ${p}`)
  }
  if (gone(before.journals, after.journals).length > 0) {
    if (!stderr.includes('completing the interrupted removal of ')) missing.push('removal journal')
  }
  for (const t of gone(before.tmps, after.tmps)) {
    if (!stderr.includes(`removing the temporary file`) || !stderr.includes(base(t))) {
      missing.push(`temporary file ${t}`)
    }
  }
  for (const u of gone(before.unfinished, after.unfinished)) {
    const name = base(u)
    const byJournal = before.journals.length > 0
    if (
      !byJournal &&
      !new RegExp(`removing \\S*${name}, left incomplete by a killed run`).test(stderr)
    )
      missing.push(`unfinished ${u}`)
  }
  if (LOCK_LOGS_BREAKS && gone(before.locks, after.locks).length > 0) {
    const said = ['breaking the stale lock of ', 'a lock left half taken, broken or released']
    if (!said.some((s) => stderr.includes(s))) missing.push(`stale lock ${before.locks.join(', ')}`)
  }
  assert.deepEqual(
    missing,
    [],
    `${ctx}: the next run cleaned up ${missing.join(', ')} without saying so:\n${stderr}`,
  )
}

/** A row of `list --json`. */
export interface Row {
  volid: string
  vmid: number
  subtype: 'qemu' | 'lxc'
  parent: string | null
  'verify-state'?: string
}

/** A row of `verify --json`. */
interface VerifyRow {
  volid: string
  state: string
  detail?: string
}

/** `list --json` of the store. */
export const listRows = async (store: string, ctx: string): Promise<Row[]> =>
  JSON.parse((await gbOk(['list', '--store', store, '--json'], ctx)).stdout) as Row[]

/** Files a committed backup dir holds besides those its manifest lists. */
const BACKUP_OWN_FILES = ['manifest.json', 'manifest.sha256', 'backup.log']

/**
 * After the next run: the store holds exactly what its listed backups explain (the store file,
 * per guest its backup dirs with their manifest's files, their `.verify` records and the bitmap
 * record), with no chain broken, and `verify` finds every listed backup ok. Returns the rows.
 */
export const assertStoreClean = async (store: string, ctx: string): Promise<Row[]> => {
  const rows = await listRows(store, ctx)
  const listed = new Set(rows.map((r) => r.volid))
  for (const r of rows) {
    assert.ok(
      r.parent === null || listed.has(r.parent),
      `${ctx}: broken chain: ${r.volid} builds on ${r.parent ?? ''}, which is not listed`,
    )
  }
  const unexplained: string[] = []
  const dirsOf = new Map<string, Set<string>>()
  for (const r of rows) {
    const dirName = r.volid.slice(r.volid.lastIndexOf('/') + 1)
    const set = dirsOf.get(String(r.vmid)) ?? new Set<string>()
    set.add(dirName)
    dirsOf.set(String(r.vmid), set)
  }
  for (const g of await readdir(store, { withFileTypes: true })) {
    if (g.name === 'guestbackup-store.json' && g.isFile()) continue
    const dirs = dirsOf.get(g.name)
    if (!g.isDirectory() || !/^\d+$/.test(g.name)) {
      unexplained.push(g.name)
      continue
    }
    for (const e of await readdir(join(store, g.name), { withFileTypes: true })) {
      const rel = `${g.name}/${e.name}`
      if (e.isDirectory() && dirs?.has(e.name) === true) {
        const manifest = JSON.parse(await readFile(join(store, rel, 'manifest.json'), 'utf8')) as {
          files: Record<string, number>
        }
        const want = new Set([...Object.keys(manifest.files), ...BACKUP_OWN_FILES])
        for (const f of await readdir(join(store, rel))) {
          if (!want.has(f)) unexplained.push(`${rel}/${f}`)
        }
        continue
      }
      const verifyOf = /^(.*)\.verify$/.exec(e.name)?.[1]
      if (e.isFile() && verifyOf !== undefined && dirs?.has(verifyOf) === true) continue
      if (e.isFile() && e.name === 'bitmaps.json') continue
      unexplained.push(rel)
    }
  }
  assert.deepEqual(unexplained, [], `${ctx}: the store holds what no listed backup explains`)
  const v = await gb(['verify', '--store', store, '--json'])
  const vrows = (v.stdout.trim() === '' ? [] : JSON.parse(v.stdout)) as VerifyRow[]
  const bad = vrows.filter((r) => r.state !== 'ok')
  assert.deepEqual(
    bad.map((r) => `${r.volid}: ${r.state} ${r.detail ?? ''}`),
    [],
    `${ctx}: listed backups fail verification`,
  )
  assert.equal(v.code, 0, `${ctx}: verify exited ${v.code}: ${v.stderr.trim()}`)
  assert.deepEqual(
    vrows.map((r) => r.volid).sort(),
    [...listed].sort(),
    `${ctx}: verify did not verify exactly the listed backups`,
  )
  return rows
}

/** Count occurrences into a map (for the per-file summary). */
export const count = (m: Map<string, number>, k: string): void => {
  m.set(k, (m.get(k) ?? 0) + 1)
}

/** `{ key: n, … }` of a count map, for a summary line. */
export const counts = (m: Map<string, number>): string => JSON.stringify(Object.fromEntries(m))
