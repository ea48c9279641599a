/**
 * Block digests of a disk: its guest-visible content cut into blocks of a fixed size, one
 * SHA-256 per block (the last block may be shorter), kept as a raw array of 32-byte digests in
 * block order. The digest of the whole disk is the SHA-256 of that array: it depends only on the
 * content, never on the container holding it (a qcow2 chain, a raw file, a block device), and an
 * incremental gets it from its parent's array with only its dirty blocks hashed again.
 *
 * Memory: 32 bytes per block, 8 MiB for a 1 TiB disk at the default 4 MiB block size.
 */
import { createHash } from 'node:crypto'
import { BackupError } from '../errors.ts'

/** Default block size: 4 MiB (a multiple of every qcow2 cluster size up to 2 MiB). */
export const DIGEST_BLOCK_SIZE = 4 * 1024 * 1024

/** Bytes of one SHA-256 digest. */
export const DIGEST_BYTES = 32

/** Hex SHA-256 of a buffer. */
export const sha256Hex = (data: Buffer | string): string =>
  createHash('sha256').update(data).digest('hex')

const zeroDigests = new Map<number, Buffer>()

/**
 * SHA-256 of `length` zero bytes, computed once per length: an all-zero block is recognised from
 * the allocation map or a zero read and gets this digest without being hashed.
 */
export const zeroDigest = (length: number): Buffer => {
  let d = zeroDigests.get(length)
  if (d === undefined) {
    const h = createHash('sha256')
    const zeroes = Buffer.alloc(Math.min(length, 1024 * 1024))
    for (let left = length; left > 0; left -= zeroes.length) {
      h.update(left >= zeroes.length ? zeroes : zeroes.subarray(0, left))
    }
    d = h.digest()
    zeroDigests.set(length, d)
  }
  return d
}

/** The block digests of a disk of `size` bytes. */
export class BlockDigests {
  readonly size: number
  readonly blockSize: number
  readonly count: number
  readonly #digests: Buffer
  readonly #set: Uint8Array

  private constructor(size: number, blockSize: number, digests: Buffer, set: boolean) {
    this.size = size
    this.blockSize = blockSize
    this.count = blockCount(size, blockSize)
    this.#digests = digests
    this.#set = new Uint8Array(this.count).fill(set ? 1 : 0)
  }

  /** Empty digests, every block still to be set. */
  static empty(size: number, blockSize = DIGEST_BLOCK_SIZE): BlockDigests {
    return new BlockDigests(
      size,
      blockSize,
      Buffer.alloc(blockCount(size, blockSize) * DIGEST_BYTES),
      false,
    )
  }

  /**
   * Digests read back from their array (a `<device>.blocks` file, described as `what`):
   * `ARCHIVE_INVALID` when its length does not fit `size`.
   */
  static from(size: number, blockSize: number, data: Buffer, what: string): BlockDigests {
    if (data.length !== blockCount(size, blockSize) * DIGEST_BYTES) {
      throw new BackupError(
        'ARCHIVE_INVALID',
        `${what} holds ${data.length} bytes, not the ${blockCount(size, blockSize) * DIGEST_BYTES} of ${size} bytes in blocks of ${blockSize}`,
      )
    }
    return new BlockDigests(size, blockSize, Buffer.from(data), true)
  }

  /** Length of block `i` (the last one may be shorter). */
  lengthOf(i: number): number {
    return Math.min(this.blockSize, this.size - i * this.blockSize)
  }

  /** Set the digest of block `i`. */
  set(i: number, digest: Buffer): void {
    digest.copy(this.#digests, i * DIGEST_BYTES)
    this.#set[i] = 1
  }

  /** The digest of block `i`. */
  get(i: number): Buffer {
    return this.#digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)
  }

  /** Whether block `i` was set. */
  has(i: number): boolean {
    return this.#set[i] === 1
  }

  /** Copy block `i`'s digest from `other` (a parent's digests of the same disk layout). */
  carry(i: number, other: BlockDigests): void {
    this.set(i, other.get(i))
  }

  /** The first block not set, or undefined when all are. */
  firstMissing(): number | undefined {
    const i = this.#set.indexOf(0)
    return i < 0 ? undefined : i
  }

  /** The array of digests, to be stored as `<device>.blocks`. */
  bytes(): Buffer {
    return this.#digests
  }

  /** The digest of the whole disk: the SHA-256 of the array. */
  content(): string {
    return sha256Hex(this.#digests)
  }
}

/** Number of blocks of `blockSize` covering `size` bytes. */
export const blockCount = (size: number, blockSize: number): number => Math.ceil(size / blockSize)
