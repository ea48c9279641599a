/**
 * SHA-256 of a file that another process is still writing, taken on a worker thread: the
 * thread reads the file from its start as it grows (the page cache is shared, read(2) sees
 * every completed write) and hashes it, so the main thread, which parses the same bytes for
 * other digests, does not also carry the hash. The writer's exit is passed to the thread
 * through shared memory; after it, one more read to the end picks up its last writes.
 */
import { Worker } from 'node:worker_threads'
import { BackupError, throwIfAborted } from '../errors.ts'

/** State word shared with the thread: the writer is still writing, has exited, or we gave up. */
const WRITING = 0
const EXITED = 1
const ABORTED = 2

// CommonJS source of the thread. Synchronous reads are fine on a thread of its own; when it has
// caught up with the writer it sleeps on the state word (Atomics.wait) for at most POLL_MS, so a
// state change wakes it at once.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { openSync, readSync, closeSync } = require('node:fs')
const { createHash } = require('node:crypto')
const { path, state, readBytes, pollMs } = workerData
const word = new Int32Array(state)
const fd = openSync(path, 'r')
try {
  const hash = createHash('sha256')
  const buf = Buffer.allocUnsafe(readBytes)
  let pos = 0
  for (;;) {
    const s = Atomics.load(word, 0)
    if (s === ${ABORTED}) { parentPort.postMessage({ aborted: true }); break }
    const n = readSync(fd, buf, 0, buf.length, pos)
    if (n > 0) { pos += n; hash.update(buf.subarray(0, n)); continue }
    if (s === ${EXITED}) { parentPort.postMessage({ digest: hash.digest('hex'), bytes: pos }); break }
    Atomics.wait(word, 0, ${WRITING}, pollMs)
  }
} finally {
  closeSync(fd)
}
`

/** Size of the thread's reads: large reads keep the hash, not the system calls, the cost. */
const READ_BYTES = 4 * 1024 * 1024
/** Longest sleep of a thread that caught up with the writer (ms). */
const POLL_MS = 2

/** Options of {@link hashFollowing}. */
export interface HashFollowingOptions {
  /** Settles (either way) when the writer has exited, i.e. written everything it will. */
  writerDone: Promise<unknown>
  /** Stops the thread; the result then rejects with `ABORTED`. */
  signal?: AbortSignal | undefined
}

/**
 * Hex SHA-256 and length of the file at `path` (a pinned `/proc/<pid>/fd/<n>` path or a trusted
 * one) once its writer has exited, hashed on a worker thread while it is written. `IO` when the
 * thread fails (the file cannot be opened or read).
 */
export const hashFollowing = async (
  path: string,
  opts: HashFollowingOptions,
): Promise<{ digest: string; bytes: number }> => {
  throwIfAborted(opts.signal)
  const state = new SharedArrayBuffer(4)
  const word = new Int32Array(state)
  const set = (s: number): void => {
    Atomics.store(word, 0, s)
    Atomics.notify(word, 0)
  }
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: { path, state, readBytes: READ_BYTES, pollMs: POLL_MS },
  })
  const onAbort = (): void => {
    set(ABORTED)
  }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  void opts.writerDone.then(
    () => {
      set(EXITED)
    },
    () => {
      set(EXITED)
    },
  )
  try {
    const answer = await new Promise<{ digest?: string; bytes?: number; aborted?: boolean }>(
      (resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', (e) => {
          reject(new BackupError('IO', `cannot hash ${path}: ${e.message}`, { cause: e }))
        })
        worker.once('exit', (code) => {
          reject(new BackupError('IO', `the hashing thread of ${path} ended (exit code ${code})`))
        })
      },
    )
    throwIfAborted(opts.signal)
    if (answer.digest === undefined || answer.bytes === undefined) {
      throw new BackupError('INTERNAL', `the hashing thread of ${path} gave no digest`)
    }
    return { digest: answer.digest, bytes: answer.bytes }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    await worker.terminate()
  }
}
