/**
 * Hashing a disk's blocks while the copy engine moves it: each block is read whole, and its
 * SHA-256 is computed in one call of WebCrypto's `digest`, which Node runs on its thread pool
 * (lib/internal/crypto/hash.js `asyncDigest`, a `HashJob` in async mode, with its own copy of
 * the bytes): the main thread, which drives the NBD connections, never hashes. A block known
 * to read as zero gets {@link zeroDigest} without being hashed.
 */
import { webcrypto } from 'node:crypto'
import { BackupError } from '../errors.ts'
import { zeroDigest } from './blocks.ts'
import { HashPool } from './pool.ts'
import type { BlockDigests } from './blocks.ts'

/** Hashes the blocks of one disk from the jobs of a copy; see the module comment. */
export class DiskHasher {
  readonly digests: BlockDigests

  constructor(digests: BlockDigests) {
    this.digests = digests
  }

  get blockSize(): number {
    return this.digests.blockSize
  }

  /**
   * Hash `data`, all of block `index`. The bytes are copied before this returns, so the caller
   * may reuse its buffer at once; the promise resolves once the digest is set.
   */
  block(index: number, data: Buffer, pool?: HashPool): Promise<void> {
    if (data.length !== this.digests.lengthOf(index)) {
      throw new BackupError(
        'INTERNAL',
        `block ${index} hashed with ${data.length} bytes, not ${this.digests.lengthOf(index)}`,
      )
    }
    const digest =
      pool !== undefined && HashPool.shares(data)
        ? pool.sha256(data)
        : webcrypto.subtle.digest('SHA-256', data).then((d) => Buffer.from(d))
    return digest.then((d) => {
      this.digests.set(index, d)
    })
  }

  /** Block `index` reads as zero. */
  zeroBlock(index: number): void {
    this.digests.set(index, zeroDigest(this.digests.lengthOf(index)))
  }

  /** Check every block was hashed; returns the digests. */
  finish(): BlockDigests {
    const missing = this.digests.firstMissing()
    if (missing !== undefined) {
      throw new BackupError(
        'INTERNAL',
        `block ${missing} (offset ${missing * this.blockSize}) of the disk was not hashed`,
      )
    }
    return this.digests
  }
}
