/** SHA-256 of files, streamed in large reads (a stored archive may be many GiB). */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { throwIfAborted } from '../errors.ts'

/** Read size: large reads keep the hash, not the system calls, the cost. */
const READ = 4 * 1024 * 1024

/**
 * Hex SHA-256 of the file at `path` (a pinned file's `/proc/<pid>/fd/<n>` path, or a trusted
 * path), and its length. Memory: one read buffer.
 */
export const hashFile = async (
  path: string,
  signal?: AbortSignal,
): Promise<{ digest: string; bytes: number }> => {
  await using fh = await open(path, constants.O_RDONLY)
  const h = createHash('sha256')
  const buf = Buffer.allocUnsafe(READ)
  let bytes = 0
  for (;;) {
    throwIfAborted(signal)
    const { bytesRead } = await fh.read(buf, 0, READ, bytes)
    if (bytesRead === 0) break
    h.update(buf.subarray(0, bytesRead))
    bytes += bytesRead
  }
  return { digest: h.digest('hex'), bytes }
}
