/**
 * The few fields of a qcow2 header guestbackup reads without QEMU: the magic, the version and
 * the backing file name. Layout from QEMU's `docs/interop/qcow2.txt` ("Header"): bytes 0-3
 * magic `QFI\xfb`, 4-7 version, 8-15 backing_file_offset, 16-19 backing_file_size (at most 1023),
 * all big-endian; the name is not NUL-terminated.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'

/** `QFI\xfb`. */
export const QCOW2_MAGIC = 0x514649fb

/** Longest backing file name QEMU writes (`docs/interop/qcow2.txt`: "must be < 1024"). */
const MAX_BACKING_NAME = 1023

/** What {@link parseQcow2Header} finds. */
export interface Qcow2Header {
  version: number
  /** Where the backing file name is, if any. */
  backing: { offset: number; size: number } | undefined
}

/** Parse the first 20 bytes of a qcow2 image; undefined if it is not one. */
export const parseQcow2Header = (buf: Buffer): Qcow2Header | undefined => {
  if (buf.length < 20 || buf.readUInt32BE(0) !== QCOW2_MAGIC) return undefined
  const version = buf.readUInt32BE(4)
  const offset = buf.readBigUInt64BE(8)
  const size = buf.readUInt32BE(16)
  if (offset === 0n || size === 0) return { version, backing: undefined }
  if (size > MAX_BACKING_NAME || offset > BigInt(Number.MAX_SAFE_INTEGER)) return undefined
  return { version, backing: { offset: Number(offset), size } }
}

/**
 * The backing file name recorded in the qcow2 image at `path` (a pinned file's path), `null`
 * when it has none, undefined when the file is not a qcow2 image.
 */
export const readBackingName = async (path: string): Promise<string | null | undefined> => {
  await using fh = await open(path, constants.O_RDONLY)
  const head = Buffer.alloc(20)
  const { bytesRead } = await fh.read(head, 0, 20, 0)
  const h = parseQcow2Header(head.subarray(0, bytesRead))
  if (h === undefined) return undefined
  if (h.backing === undefined) return null
  const name = Buffer.alloc(h.backing.size)
  const r = await fh.read(name, 0, name.length, h.backing.offset)
  if (r.bytesRead !== name.length) return undefined
  return name.toString('latin1')
}
