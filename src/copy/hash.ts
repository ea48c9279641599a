/**
 * Hashing a whole disk through the copy engine (the same reads, allocation map and requests in
 * flight as a backup), for verification: nothing is written, zero extents get their digest
 * without being read.
 */
import { BlockDigests, DIGEST_BLOCK_SIZE } from '../digest/blocks.ts'
import { DiskHasher } from '../digest/hasher.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { copyBlocks } from './copy.ts'
import type { CopySource, CopyTarget } from './copy.ts'

/** A target that is never written: {@link hashDisk} only reads. */
const NOWHERE: CopyTarget = {
  write: () => Promise.reject(new Error('hashDisk writes nothing')),
  writeZeroes: () => Promise.reject(new Error('hashDisk writes nothing')),
  flush: () => Promise.resolve(),
}

/** Options of {@link hashDisk}. */
export interface HashDiskOptions {
  blockSize?: number
  /**
   * Digests to start from: only the blocks the source's regions touch are hashed, the others
   * keep these (a disk whose regions are what its top image holds, over a verified parent).
   */
  base?: BlockDigests | undefined
  bucket?: TokenBucket | undefined
  onProgress?: ((position: number, size: number) => void) | undefined
  signal: AbortSignal
}

/**
 * The block digests of `src`: of every byte when its regions cover the whole disk, else of the
 * blocks they touch over `opts.base`.
 */
export const hashDisk = async (src: CopySource, opts: HashDiskOptions): Promise<BlockDigests> => {
  const start =
    opts.base === undefined
      ? BlockDigests.empty(src.size, opts.blockSize ?? DIGEST_BLOCK_SIZE)
      : BlockDigests.from(
          opts.base.size,
          opts.base.blockSize,
          opts.base.bytes(),
          'the base digests',
        )
  const hasher = new DiskHasher(start)
  await copyBlocks(src, NOWHERE, {
    targetIsZero: true,
    hasher,
    hashOnly: true,
    bucket: opts.bucket,
    onProgress: opts.onProgress,
    signal: opts.signal,
  })
  return hasher.finish()
}

/** The first block whose digest differs between `a` and `b`, or undefined when all agree. */
export const firstDifference = (a: BlockDigests, b: BlockDigests): number | undefined => {
  if (a.size !== b.size || a.blockSize !== b.blockSize) return 0
  for (let i = 0; i < a.count; i++) if (!a.get(i).equals(b.get(i))) return i
  return undefined
}
