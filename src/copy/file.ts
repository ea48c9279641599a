/**
 * The `file-handle` mechanism on the copy engine's side: a {@link VolumeReader} with its
 * `nextDirtyRegion` iterator as a {@link CopySource}.
 */
import type { VolumeReader, VmVolume } from '../api/provider.ts'
import { BackupError } from '../errors.ts'
import type { CopySource } from './copy.ts'

/** A file-handle volume as a copy source; all-zero chunks are detected in memory. */
export const fileHandleSource = (vol: VmVolume): CopySource => {
  const reader: VolumeReader | undefined = vol.fileHandle
  const next = vol.nextDirtyRegion
  if (reader === undefined || next === undefined) {
    throw new BackupError('PROVIDER_FAILED', 'file-handle volume without reader or regions')
  }
  return {
    size: vol.size,
    // nextDirtyRegion is a one-shot iterator, and the engine walks the regions once.
    async *regions() {
      for (let r = await next(); r !== undefined; r = await next()) yield [r[0], r[1]] as const
    },
    read: (offset, length, signal, into) => reader.read(offset, length, signal, into),
    done: async (offset, length) => {
      await reader.discard?.(offset, length)
    },
  }
}
