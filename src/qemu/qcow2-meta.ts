/**
 * A digest of a qcow2 image's metadata: the header cluster (header and header extensions), the
 * L1 table, every L2 table, the refcount table and every refcount block, in that order. With
 * the digests of the guest-visible content, it proves every byte of the image that QEMU reads
 * (data clusters through the content, everything else through this), so a flipped bit in a
 * reserved field of an L2 entry, which reads the same, is caught as well.
 *
 * Layout from QEMU's `docs/interop/qcow2.txt`: header fields big-endian, `cluster_bits` at 20,
 * `l1_size` at 36, `l1_table_offset` at 40, `refcount_table_offset` at 48,
 * `refcount_table_clusters` at 56; L1, L2 and refcount table entries hold a cluster offset in
 * bits 9-55. The file is untrusted: every offset is checked against its size first.
 */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { BackupError } from '../errors.ts'
import { QCOW2_MAGIC } from './qcow2-header.ts'

/** Bits 9-55 of a table entry: the cluster offset (qcow2.txt, "L1 table entry"). */
const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n

/** `cluster_bits` QEMU accepts (qcow2.txt: 9 to 21). */
const MIN_CLUSTER_BITS = 9
const MAX_CLUSTER_BITS = 21

/** Largest table read at once (the L1 table of a 64 TiB disk at 64 KiB clusters is 1 MiB). */
const MAX_TABLE_BYTES = 64 * 1024 * 1024

const invalid = (path: string, why: string): BackupError =>
  new BackupError('IMAGE_INVALID', `${path}: ${why}`)

/** Hex SHA-256 of the metadata of the qcow2 image at `path`; see the module comment. */
export const qcow2MetadataDigest = async (path: string, label = path): Promise<string> => {
  await using fh = await open(path, constants.O_RDONLY)
  const fileSize = (await fh.stat()).size
  const read = async (offset: number, length: number, what: string): Promise<Buffer> => {
    if (offset < 0 || length < 0 || length > MAX_TABLE_BYTES || offset + length > fileSize) {
      throw invalid(label, `${what} (${length} bytes at ${offset}) lies outside the image`)
    }
    return await readAt(fh, offset, length)
  }
  const head = await read(0, 72, 'the header')
  if (head.readUInt32BE(0) !== QCOW2_MAGIC) throw invalid(label, 'not a qcow2 image')
  const bits = head.readUInt32BE(20)
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw invalid(label, `cluster_bits ${bits} is out of range`)
  }
  const cluster = 2 ** bits
  const h = createHash('sha256')
  h.update(await read(0, Math.min(cluster, fileSize), 'the header cluster'))
  const l1 = await read(u64(head, 40), head.readUInt32BE(36) * 8, 'the L1 table')
  h.update(l1)
  await hashTables(l1, cluster, read, h, 'an L2 table', label)
  const rt = await read(u64(head, 48), head.readUInt32BE(56) * cluster, 'the refcount table')
  h.update(rt)
  await hashTables(rt, cluster, read, h, 'a refcount block', label)
  return h.digest('hex')
}

/** Hash the cluster each non-zero entry of `table` points to. */
const hashTables = async (
  table: Buffer,
  cluster: number,
  read: (offset: number, length: number, what: string) => Promise<Buffer>,
  h: ReturnType<typeof createHash>,
  what: string,
  label: string,
): Promise<void> => {
  // Each table is a cluster of its own (qcow2.txt): an offset named twice is a crafted image
  // that would have us hash one cluster millions of times.
  const seen = new Set<number>()
  for (let i = 0; i + 8 <= table.length; i += 8) {
    const offset = Number(table.readBigUInt64BE(i) & OFFSET_MASK)
    if (offset === 0) continue
    if (seen.has(offset)) throw invalid(label, `${what} at ${offset} is named twice`)
    seen.add(offset)
    h.update(await read(offset, cluster, what))
  }
}

const u64 = (b: Buffer, at: number): number => {
  const v = b.readBigUInt64BE(at)
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v)
}

const readAt = async (fh: FileHandle, offset: number, length: number): Promise<Buffer> => {
  const buf = Buffer.alloc(length)
  let n = 0
  while (n < length) {
    const { bytesRead } = await fh.read(buf, n, length - n, offset + n)
    if (bytesRead === 0) break
    n += bytesRead
  }
  return buf.subarray(0, n)
}
