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
  bucket?: TokenBucket | undefined
  onProgress?: ((position: number, size: number) => void) | undefined
  signal: AbortSignal
}

/** The block digests of every byte of `src` (its regions must cover the whole disk). */
export const hashDisk = async (src: CopySource, opts: HashDiskOptions): Promise<BlockDigests> => {
  const hasher = new DiskHasher(BlockDigests.empty(src.size, opts.blockSize ?? DIGEST_BLOCK_SIZE))
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
