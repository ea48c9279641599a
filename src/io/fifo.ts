/**
 * A pipe between a child's stdout and large reads of ours. Node's piped stdio is a socket read
 * in 64 KiB chunks, each a fresh Buffer; a FIFO's read end is a plain file descriptor that
 * `FileHandle.read` fills in the caller's own buffer (no allocation per read, no copy out of a
 * chunk). Node cannot make a pipe itself, so `mkfifo(1)` makes one in a private (0700)
 * directory, both ends are opened, and the name is removed at once: only the descriptors stay.
 */
import { constants } from 'node:fs'
import { open, rm } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from './spawn.ts'
import { makeTempDir } from './tmpdir.ts'

/** Both ends of a FIFO (see the module comment). */
export interface Fifo extends AsyncDisposable {
  /** The read end, opened blocking: a read waits in the thread pool for the writer. */
  readonly reader: FileHandle
  /** The write end's descriptor, for a child's stdout. */
  readonly writerFd: number
  /**
   * Close our copy of the write end (once the child has its own): the reader sees the end of
   * the stream when the child exits.
   */
  closeWriter(): Promise<void>
}

/** Make a FIFO and open both its ends (see the module comment). */
export const openFifo = async (signal?: AbortSignal): Promise<Fifo> => {
  await using dir = await makeTempDir('guestbackup-fifo-')
  const path = join(dir.path, 'pipe')
  await run('mkfifo', ['-m', '600', path], { signal })
  // A non-blocking read end opens at once without a writer; the write end then opens at once
  // too, and the blocking read end (the one kept) at once with that writer (fifo(7)).
  const probe = await open(path, constants.O_RDONLY | constants.O_NONBLOCK)
  let writer: FileHandle | undefined
  try {
    writer = await open(path, constants.O_WRONLY)
    const reader = await open(path, constants.O_RDONLY)
    await rm(path)
    const w = writer
    let writerOpen = true
    const closeWriter = async (): Promise<void> => {
      if (!writerOpen) return
      writerOpen = false
      await w.close()
    }
    return {
      reader,
      writerFd: w.fd,
      closeWriter,
      [Symbol.asyncDispose]: async () => {
        await closeWriter()
        await reader.close()
      },
    }
  } catch (e) {
    await writer?.close()
    throw e
  } finally {
    await probe.close()
  }
}
