/**
 * Tools for tests that tamper with a store: a CLI runner with a hard time limit, and "canary"
 * directories outside the store whose complete state is compared before and after a command.
 */
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { lstat, mkdir, readFile, readdir, readlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { BIN } from './cli.ts'
import type { CliResult } from './cli.ts'

const execFileP = promisify(execFile)

/** Result of {@link cliTimed}. */
export interface TimedResult extends CliResult {
  /** The signal that ended the process (SIGKILL after a time-out), if any. */
  signal: NodeJS.Signals | null
  /** True if the process was killed for running longer than the limit. */
  timedOut: boolean
  /** Wall-clock milliseconds from spawn to exit. */
  ms: number
  /** Highest resident set size seen (VmHWM of the CLI process), KiB; 0 if never sampled. */
  peakRssKiB: number
}

/** Options of {@link cliTimed}. */
export interface TimedOptions {
  /** Kill the process group with SIGKILL after this many milliseconds. Default 5000. */
  timeoutMs?: number
  /** Command put before `bin/guestbackup`, e.g. `['prlimit', '--fsize=…', '--']`. */
  wrapper?: readonly string[]
  /** Extra environment variables for the CLI. */
  env?: Readonly<Record<string, string>>
}

const killGroup = (pid: number | undefined): void => {
  if (pid === undefined) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // ESRCH: the group is already gone.
  }
}

const readHwm = async (pid: number): Promise<number> => {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    return Number(/^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1] ?? 0)
  } catch {
    return 0
  }
}

/**
 * Run `bin/guestbackup ARGS` like {@link cli} in `cli.ts`, but in its own process group that is
 * killed with SIGKILL (with every tar or qemu-nbd it started) when it runs past the limit: a
 * command blocked on a FIFO must fail the test, not hang it. The process's peak RSS is sampled
 * from /proc every 20 ms (the shell wrapper `exec`s node, so the pid stays the same), which shows
 * whether it slurped a device or pseudo file into memory.
 */
export const cliTimed = (args: readonly string[], opts: TimedOptions = {}): Promise<TimedResult> =>
  new Promise((resolve, reject) => {
    const [cmd, ...rest] = [...(opts.wrapper ?? []), BIN, ...args]
    const started = Date.now()
    const child = spawn(cmd ?? BIN, rest, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, ...opts.env },
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    let peakRssKiB = 0
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    const timer = setTimeout(() => {
      timedOut = true
      killGroup(child.pid)
    }, opts.timeoutMs ?? 5000)
    const sampler = setInterval(() => {
      if (child.pid === undefined) return
      void readHwm(child.pid).then((kib) => {
        peakRssKiB = Math.max(peakRssKiB, kib)
      })
    }, 20)
    child.once('error', (e) => {
      clearTimeout(timer)
      clearInterval(sampler)
      reject(e)
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      clearInterval(sampler)
      // Anything the CLI left running in its group (a stray qemu-nbd) must not outlive the test.
      killGroup(child.pid)
      resolve({ code, signal, stdout, stderr, timedOut, ms: Date.now() - started, peakRssKiB })
    })
  })

/** What {@link snapshotTree} records of one path (never following a symlink). */
export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block' | 'other'
  mode: string
  uid: number
  gid: number
  size: number
  mtimeMs: number
  /** sha256 of a regular file's bytes, or a symlink's target. */
  content?: string
  /** The first bytes of a regular file, for failure messages. */
  head?: string
}

/** Relative path (`.` for the root) to its {@link TreeEntry}. */
export type TreeSnapshot = Record<string, TreeEntry>

const typeOf = (st: Awaited<ReturnType<typeof lstat>>): TreeEntry['type'] => {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'socket'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  return 'other'
}

/**
 * The complete state of a tree: every name, type, mode, owner, size, mtime and file content,
 * recursively, with lstat (a symlink is recorded as a link, never followed; FIFOs and devices
 * are never opened). The link count and ctime are left out on purpose: a test may hard-link a
 * canary file into the store, which changes both without changing the file.
 */
export const snapshotTree = async (root: string): Promise<TreeSnapshot> => {
  const out: TreeSnapshot = {}
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '.' ? root : join(root, rel)
    const st = await lstat(abs)
    const e: TreeEntry = {
      type: typeOf(st),
      mode: (st.mode & 0o7777).toString(8),
      uid: st.uid,
      gid: st.gid,
      size: st.size,
      mtimeMs: st.mtimeMs,
    }
    if (e.type === 'file') {
      const data = await readFile(abs)
      e.content = createHash('sha256').update(data).digest('hex')
      e.head = JSON.stringify(data.subarray(0, 48).toString('latin1'))
    } else if (e.type === 'symlink') {
      e.content = await readlink(abs)
    }
    out[rel] = e
    if (e.type === 'dir') {
      for (const name of (await readdir(abs)).sort()) {
        await walk(rel === '.' ? name : join(rel, name))
      }
    }
  }
  await walk('.')
  return out
}

/** Human-readable differences between two snapshots; empty if the trees are identical. */
export const diffSnapshots = (before: TreeSnapshot, after: TreeSnapshot): string[] => {
  const out: string[] = []
  for (const [path, a] of Object.entries(before)) {
    const b = after[path]
    if (b === undefined) {
      out.push(`removed ${path} (${a.type})`)
      continue
    }
    const changed: string[] = []
    for (const key of ['type', 'mode', 'uid', 'gid', 'size', 'mtimeMs', 'content'] as const) {
      if (a[key] !== b[key]) changed.push(`${key} ${String(a[key])} -> ${String(b[key])}`)
    }
    if (a.content !== b.content && b.head !== undefined) changed.push(`now starts ${b.head}`)
    if (changed.length > 0) out.push(`changed ${path}: ${changed.join(', ')}`)
  }
  for (const [path, b] of Object.entries(after)) {
    if (before[path] === undefined) {
      out.push(`created ${path} (${b.type}${b.head === undefined ? '' : ` ${b.head}`})`)
    }
  }
  return out
}

/**
 * Regular files under `root` (not following symlinks, not opening FIFOs or devices) whose bytes
 * contain `needle`; paths relative to `root`. A missing root holds nothing.
 */
export const filesContaining = async (root: string, needle: string | Buffer): Promise<string[]> => {
  const want = typeof needle === 'string' ? Buffer.from(needle) : needle
  const out: string[] = []
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '' ? root : join(root, rel)
    let st
    try {
      st = await lstat(abs)
    } catch {
      return
    }
    if (st.isFile()) {
      if ((await readFile(abs)).includes(want)) out.push(rel === '' ? '.' : rel)
    } else if (st.isDirectory()) {
      for (const name of (await readdir(abs)).sort())
        await walk(rel === '' ? name : join(rel, name))
    }
  }
  await walk('')
  return out
}

/** A canary directory: files an attacker inside the store wants to read, change or delete. */
export interface Canary {
  dir: string
  /** A file whose first line holds {@link Canary.marker}. */
  secret: string
  /** A unique string that must never show up in any output or restored file. */
  marker: string
}

/** Fixed old mtime of every canary entry, so any touch (even a rewrite) is seen. */
const OLD = new Date('2020-02-02T02:02:02.345Z')

/**
 * Create a canary at `dir`: a secret file (mode 0600), a plain file, a copy of a manifest, a
 * subdirectory tree with an executable, all with an old mtime (directories last).
 */
export const makeCanary = async (dir: string, manifestCopy = '{}\n'): Promise<Canary> => {
  const marker = `CANARY-SECRET-${randomBytes(12).toString('hex')}`
  await mkdir(join(dir, 'sub', 'deeper'), { recursive: true, mode: 0o750 })
  const secret = join(dir, 'secret.txt')
  await writeFile(secret, `${marker}\nroot-only line 2\n`, { mode: 0o600 })
  await writeFile(join(dir, 'plain.txt'), 'nothing to see\n', { mode: 0o644 })
  await writeFile(join(dir, 'manifest.json'), manifestCopy, { mode: 0o644 })
  await writeFile(join(dir, 'sub', 'nested.txt'), 'nested\n', { mode: 0o640 })
  await writeFile(join(dir, 'sub', 'deeper', 'run.sh'), '#!/bin/sh\nexit 0\n', { mode: 0o755 })
  await ageTree(dir)
  return { dir, secret, marker }
}

/** Set {@link OLD} as atime and mtime of every entry under `dir` (children before parents). */
export const ageTree = async (dir: string): Promise<void> => {
  const walk = async (abs: string): Promise<void> => {
    const st = await lstat(abs)
    if (st.isSymbolicLink()) return
    if (st.isDirectory()) for (const name of await readdir(abs)) await walk(join(abs, name))
    await utimes(abs, OLD, OLD)
  }
  await walk(dir)
}

/** `cp -a SRC DST`: a copy with modes, times, symlinks and sparseness kept. */
export const copyTree = async (src: string, dst: string): Promise<void> => {
  await execFileP('cp', ['-a', '--reflink=auto', src, dst])
}

/** Run a helper tool (qemu-img, tar, mkfifo …) and return its stdout. */
export const tool = async (cmd: string, args: readonly string[]): Promise<string> =>
  (await execFileP(cmd, args, { maxBuffer: 16 * 1024 * 1024 })).stdout
