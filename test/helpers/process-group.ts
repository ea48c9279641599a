/**
 * Child processes for crash tests: run a tool to completion, start one in its own process group
 * so that it and everything it spawned (qemu-img, qemu-nbd …) can be SIGKILLed at once, and see
 * which processes are still in a group or still working under a directory.
 */
import { spawn } from 'node:child_process'
import { readdir, readFile, readlink } from 'node:fs/promises'

/** How a process ended. */
export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** Result of {@link exec}. */
export interface ExecResult extends Exit {
  stdout: string
  stderr: string
}

/** Run `file args` to completion and capture its output; never rejects on a non-zero exit. */
export const exec = (
  file: string,
  args: readonly string[],
  opts: { cwd?: string } = {},
): Promise<ExecResult> =>
  new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    child.once('error', reject)
    child.once('close', (code, signal) => {
      resolve({ code, signal, stdout, stderr })
    })
  })

/** Like {@link exec} but throws unless the exit code is 0. */
export const execOk = async (file: string, args: readonly string[]): Promise<ExecResult> => {
  const r = await exec(file, args)
  if (r.code !== 0) {
    throw new Error(`${file} ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`)
  }
  return r
}

/** A process started by {@link spawnGroup}; its pid is also the process group id. */
export interface GroupChild {
  readonly pid: number
  /** Resolves when the group leader has exited (and been reaped). */
  readonly exited: Promise<Exit>
  /** Whether {@link exited} has resolved. */
  hasExited(): boolean
  /** What it wrote to stderr so far. */
  stderr(): string
}

/** Start `file args` as the leader of a new process group; stdout is discarded. */
export const spawnGroup = (file: string, args: readonly string[]): GroupChild => {
  const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true })
  const { pid } = child
  if (pid === undefined) throw new Error(`cannot start ${file}`)
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
  let done = false
  const exited = new Promise<Exit>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      done = true
      resolve({ code, signal })
    })
  })
  return { pid, exited, hasExited: () => done, stderr: () => stderr }
}

/** One live process as /proc shows it. */
export interface ProcInfo {
  pid: number
  pgid: number
  /** Executable name (`comm`, at most 15 characters). */
  comm: string
  /** Command line, arguments joined by spaces. */
  cmdline: string
  /** Working directory, '' when unreadable. */
  cwd: string
}

type ProcStat = Pick<ProcInfo, 'pid' | 'pgid' | 'comm'>

/** `/proc/PID/stat` of a live process; undefined for a zombie or a process already gone. */
const readStat = async (pid: number): Promise<ProcStat | undefined> => {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // `pid (comm) state ppid pgrp …`; comm may itself contain spaces and parentheses.
    const close = stat.lastIndexOf(')')
    const comm = stat.slice(stat.indexOf('(') + 1, close)
    const [state, , pgrp] = stat.slice(close + 2).split(' ')
    // A zombie has released its files and locks; it only waits for its parent to reap it.
    if (state === 'Z' || state === 'X') return undefined
    return { pid, pgid: Number(pgrp), comm }
  } catch {
    return undefined
  }
}

const withDetails = async (st: ProcStat): Promise<ProcInfo> => {
  const cmdline = await readFile(`/proc/${st.pid}/cmdline`, 'utf8').catch(() => '')
  const cwd = await readlink(`/proc/${st.pid}/cwd`).catch(() => '')
  return { ...st, cmdline: cmdline.replace(/\0+$/, '').replaceAll('\0', ' '), cwd }
}

const live = async (pids: readonly number[]): Promise<ProcStat[]> =>
  (await Promise.all(pids.map(readStat))).filter(
    (p): p is ProcStat => p !== undefined && p.pid !== process.pid,
  )

const allPids = async (): Promise<number[]> =>
  (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number)

/** Every live (non-zombie) process of the host but this one. */
export const processes = async (): Promise<ProcInfo[]> =>
  Promise.all((await live(await allPids())).map(withDetails))

/** Live processes of process group `pgid`. */
export const groupMembers = async (pgid: number): Promise<ProcInfo[]> =>
  Promise.all((await live(await allPids())).filter((p) => p.pgid === pgid).map(withDetails))

/**
 * `pid` and its live descendants, from /proc/PID/task/TID/children: a few reads instead of a
 * scan of the whole /proc, so it can be taken right before a kill without moving the moment.
 */
export const processTree = async (pid: number): Promise<ProcInfo[]> => {
  const pids: number[] = []
  const queue = [pid]
  for (let p = queue.shift(); p !== undefined; p = queue.shift()) {
    pids.push(p)
    const tasks = await readdir(`/proc/${p}/task`).catch(() => [])
    for (const t of tasks) {
      const kids = await readFile(`/proc/${p}/task/${t}/children`, 'utf8').catch(() => '')
      for (const k of kids.split(' ')) if (k.trim() !== '') queue.push(Number(k))
    }
  }
  return Promise.all((await live(pids)).map(withDetails))
}

/** Live processes whose command line names `dir` or whose working directory is inside it. */
export const processesUnder = async (dir: string): Promise<ProcInfo[]> =>
  (await processes()).filter(
    (p) => p.cmdline.includes(dir) || p.cwd === dir || p.cwd.startsWith(`${dir}/`),
  )

/**
 * SIGKILL process group `pgid` (no SIGSTOP first: that would let a write(2) in progress finish
 * instead of stopping short as a real crash can). Returns who was running just before the kill,
 * for the record; [] if the group had already exited.
 */
export const killGroup = async (pgid: number): Promise<ProcInfo[]> => {
  const members = await processTree(pgid)
  try {
    process.kill(-pgid, 'SIGKILL')
  } catch (e) {
    // ESRCH: the whole group has already exited.
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return []
    throw e
  }
  return members
}

/** Wait until group `pgid` has no live process; returns the ones left after `timeoutMs`. */
export const waitGroupGone = async (pgid: number, timeoutMs = 10_000): Promise<ProcInfo[]> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const left = await groupMembers(pgid)
    if (left.length === 0 || Date.now() > deadline) return left
    await new Promise((r) => setTimeout(r, 20))
  }
}
