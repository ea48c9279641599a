/** A raw image file (a restored disk) as a {@link CopySource}, read with positioned reads. */
import type { FileHandle } from 'node:fs/promises'
import { BackupError } from '../errors.ts'
import type { CopySource } from './copy.ts'

/** `fh` (`size` bytes) as a source covering the whole file. */
export const rawFileSource = (fh: FileHandle, size: number): CopySource => ({
  size,
  async *regions() {
    await Promise.resolve()
    if (size > 0) yield [0, size] as const
  },
  read: async (offset, length, _signal, into) => {
    const buf = into ?? Buffer.allocUnsafe(length)
    let n = 0
    while (n < length) {
      const { bytesRead } = await fh.read(buf, n, length - n, offset + n)
      if (bytesRead === 0) throw new BackupError('IO', `short read at ${offset + n} of ${size}`)
      n += bytesRead
    }
    return buf
  },
})
