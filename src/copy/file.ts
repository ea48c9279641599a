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
  // nextDirtyRegion is a one-shot iterator: collect the regions once (they are few: merged
  // extents of a bitmap), so the engine can count and then copy them.
  let cached: (readonly [number, number])[] | undefined
  return {
    async *regions() {
      if (cached === undefined) {
        cached = []
        for (let r = await next(); r !== undefined; r = await next()) cached.push([r[0], r[1]])
      }
      yield* cached
    },
    read: (offset, length, signal, into) => reader.read(offset, length, signal, into),
    done: async (offset, length) => {
      await reader.discard?.(offset, length)
    },
  }
}
