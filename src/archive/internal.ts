/**
 * Helpers shared by the archive modules (not re-exported): running several processes and streams
 * as one pipeline, writing an output file atomically, and checking restore targets.
 */
import { readFile, readdir, stat } from 'node:fs/promises'
import { Duplex } from 'node:stream'
import type { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { BackupError, throwIfAborted, toBackupError } from '../errors.ts'
import type { ErrorCode } from '../errors.ts'
import type { Tool } from '../io/spawn.ts'

/** The lines of a tool's stderr, without blanks and without tar's `--totals` line. */
export const stderrLines = (stderr: string): string[] =>
  stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('Total bytes '))

/**
 * Errors that are only a consequence of another failure: our own abort, a broken pipe, a stream
 * destroyed because its peer died, a process killed by SIGPIPE.
 */
const isSecondary = (e: unknown): boolean => {
  if (e instanceof BackupError) {
    return e.code === 'ABORTED' || e.details?.['signal'] === 'SIGPIPE'
  }
  if (!(e instanceof Error)) return false
  if (e.name === 'AbortError') return true
  const code = (e as NodeJS.ErrnoException).code
  return (
    code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ERR_STREAM_DESTROYED'
  )
}

/**
 * A group of concurrently running parts (tool `done` promises, `pipeline()` promises) that fail
 * together: a real failure aborts {@link Group.signal}, which kills every tool and destroys every
 * stream of the group. Created per operation; the caller passes `group.signal` to `spawnTool` and
 * `pipeline`, then awaits {@link Group.settle}.
 *
 * A broken pipe is not a real failure by itself: tar stops reading at the end-of-archive marker
 * and exits 0, so feeding it the rest of the last record fails with EPIPE. Such errors do not
 * abort the group (the failed pipeline has destroyed its own streams, so its tools wind down)
 * and count only if the consumer failed.
 */
export class Group {
  readonly #ac = new AbortController()
  readonly #outer: AbortSignal | undefined
  readonly #onOuterAbort = (): void => {
    this.#ac.abort()
  }
  readonly #parts: Promise<void>[] = []
  readonly #failures: unknown[] = []

  /** Throws `ABORTED` at once if `outer` has already fired. */
  constructor(outer: AbortSignal | undefined) {
    throwIfAborted(outer)
    this.#outer = outer
    outer?.addEventListener('abort', this.#onOuterAbort, { once: true })
  }

  /** Aborted when the caller's signal fires or any part of the group really fails. */
  get signal(): AbortSignal {
    return this.#ac.signal
  }

  /** Add a running part; its rejection aborts the group (or closes its pipes, see above). */
  add(part: Promise<unknown>): void {
    this.#parts.push(
      part.then(
        () => undefined,
        (e: unknown) => {
          this.#failures.push(e)
          if (!isSecondary(e)) this.#ac.abort()
        },
      ),
    )
  }

  /**
   * Add a spawned tool: its `done` is a part, and when the group aborts its stdin/stdout are
   * destroyed too (a killed child's `close` only comes once its pipes are closed, and a wrapper
   * such as `Duplex.from` does not always destroy the pipes it wraps).
   */
  addTool(tool: Tool): void {
    const destroy = (): void => {
      tool.stdin?.destroy()
      tool.stdout?.destroy()
    }
    if (this.#ac.signal.aborted) destroy()
    else this.#ac.signal.addEventListener('abort', destroy, { once: true })
    this.add(tool.done)
  }

  /**
   * Abort every part (used when the caller fails before adding everything) without settling.
   */
  abort(): void {
    this.#ac.abort()
  }

  /**
   * Wait for every part. Throws `ABORTED` when the caller aborted, else the first real failure
   * (a tool's own error beats the EPIPE it caused). Broken pipes alone are ignored when
   * `consumer`, the tool at the end of the data path, succeeded; otherwise the first is thrown.
   */
  async settle(fallback: ErrorCode = 'IO', consumer?: Tool): Promise<void> {
    try {
      await Promise.all(this.#parts)
    } finally {
      this.#outer?.removeEventListener('abort', this.#onOuterAbort)
    }
    if (this.#outer?.aborted === true) {
      throw new BackupError('ABORTED', 'operation aborted', { cause: this.#outer.reason })
    }
    if (this.#failures.length === 0) return
    const primary = this.#failures.find((e) => !isSecondary(e))
    if (primary !== undefined) throw toBackupError(primary, fallback)
    const consumed = consumer?.done.then(
      () => true,
      () => false,
    )
    if (consumed !== undefined && (await consumed) && !this.#ac.signal.aborted) return
    throw toBackupError(this.#failures[0], fallback)
  }
}

/**
 * A child's piped stdio stream, which exists whenever it was spawned with `'pipe'`. If it does
 * not, the group is aborted (killing its tools) before throwing.
 */
export const stdioOf = <S>(stream: S | null, group: Group): S => {
  if (stream !== null) return stream
  group.abort()
  throw new BackupError('ARCHIVE_TOOL_FAILED', 'child process has no piped stdio')
}

/** Write `data` to `w`, resolving once it is handed over (the buffer may then be reused). */
export const writeTo = (w: Writable, data: Buffer): Promise<void> =>
  new Promise((resolve, reject) => {
    w.write(data, (e) => {
      if (e) reject(e)
      else resolve()
    })
  })

/**
 * A filter tool (stdin → stdout, e.g. zstd) as one pipeline stage. Destroying the stage destroys
 * both pipes, so the tool sees EOF or EPIPE and exits when its pipeline fails.
 */
export const toolStage = (tool: Tool, group: Group): Duplex => {
  const writable = stdioOf(tool.stdin, group)
  const readable = stdioOf(tool.stdout, group)
  const stage = Duplex.from({ writable, readable })
  stage.once('close', () => {
    writable.destroy()
    readable.destroy()
  })
  return stage
}

/** Throw `USAGE` unless `path` is an existing directory. */
export const assertDirectory = async (path: string, what: string): Promise<void> => {
  let isDir: boolean
  try {
    isDir = (await stat(path)).isDirectory()
  } catch (e) {
    throw new BackupError('USAGE', `${what} ${path} is not accessible`, { cause: e })
  }
  if (!isDir) throw new BackupError('USAGE', `${what} ${path} is not a directory`)
}

/** Throw `USAGE` unless `path` is an existing, empty directory. Touches nothing. */
export const assertEmptyDirectory = async (path: string, what: string): Promise<void> => {
  await assertDirectory(path, what)
  const entries = await readdir(path)
  if (entries.length > 0) {
    throw new BackupError('USAGE', `${what} ${path} is not empty`, {
      details: { path, entries: entries.slice(0, 10) },
    })
  }
}

/** How often {@link followProcIo} looks (ms). */
const PROC_IO_POLL_MS = 500

/**
 * Report a counter of `/proc/PID/io` (proc(5): `rchar` bytes read, `wchar` bytes written)
 * until `done` settles. For the squashfs tools of Debian 12 (4.5), which print no
 * machine-readable progress (their bars are for terminals; `-percentage` came with 4.6).
 * Returns `done`'s outcome.
 */
export const followProcIo = async <T>(
  pid: number | undefined,
  done: Promise<T>,
  field: 'rchar' | 'wchar',
  onBytes: (bytes: number) => void,
): Promise<T> => {
  const ac = new AbortController()
  const re = new RegExp(`^${field}: (\\d+)$`, 'm')
  const poll = async (): Promise<void> => {
    while (pid !== undefined && !ac.signal.aborted) {
      await sleep(PROC_IO_POLL_MS, undefined, { signal: ac.signal }).catch(() => undefined)
      const io = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => '')
      const m = re.exec(io)
      if (m !== null) onBytes(Number(m[1]))
    }
  }
  const polling = poll()
  try {
    return await done
  } finally {
    ac.abort()
    await polling
  }
}
