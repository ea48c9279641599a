/**
 * The tar format's fields as GNU tar 1.34 writes them (POSIX.1-2001 ustar and pax, GNU tar's
 * `tar.h` `oldgnu_header` and `sparse_header`): numbers, names, checksums, pax records. Pure.
 */
import type { Hash } from 'node:crypto'
import { BackupError } from '../errors.ts'

/** Block size of the tar format. */
export const TAR_BLOCK = 512
/** Largest pax header or GNU long name accepted (xattrs and ACLs make pax headers grow). */
export const MAX_META = 16 * 1024 * 1024
/** Most sparse map entries of one member (offset and size pairs, 16 bytes each). */
export const MAX_SPARSE_ENTRIES = 4 * 1024 * 1024

/** Kinds of members. `other`: GNU volume labels, multi-volume continuations, … */
export type TarMemberType =
  'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'other'

/** One member of a tar stream, as written (one JSON line each) to `archive.members`. */
export interface TarMember {
  /** Offset of the member's first header block (pax or long-name headers included). */
  offset: number
  /** Its name as stored (`./etc/passwd`, `./etc/`), decoded as UTF-8. */
  path: string
  /** The name's bytes, base64, when they are not valid UTF-8. */
  pathRaw?: string
  type: TarMemberType
  /** Content size in bytes: a sparse file's real size; 0 for links and directories. */
  size: number
  /** Permission bits (`st_mode & 07777`), owner ids as stored, mtime (Unix seconds). */
  mode?: number
  uid?: number
  gid?: number
  mtime?: number
  /** Target of a symbolic or hard link. */
  link?: string
  /** The target's bytes, base64, when they are not valid UTF-8. */
  linkRaw?: string
  /** SHA-256 (hex) of the content as restored, for `file` only. */
  sha256?: string
  /** SHA-256 (hex) of every header block of the member, from `offset` to its content. */
  header: string
}

/** The stream is not a tar stream we can read; `offset` is where it went wrong. */
export class TarParseError extends BackupError {
  override name = 'TarParseError'
  /** Byte offset in the uncompressed stream. */
  readonly offset: number
  constructor(offset: number, message: string) {
    super('ARCHIVE_INVALID', message, { details: { offset } })
    this.offset = offset
  }
}

export const TYPES: Readonly<Record<string, TarMemberType>> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  S: 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  D: 'dir',
  '6': 'fifo',
}

const ZEROES = Buffer.alloc(1024 * 1024)

export const isZero = (b: Buffer): boolean => {
  for (let at = 0; at < b.length; at += ZEROES.length) {
    const part = b.subarray(at, at + ZEROES.length)
    if (!part.equals(ZEROES.subarray(0, part.length))) return false
  }
  return true
}

export const hashZeroes = (h: Hash, n: number): void => {
  for (let left = n; left > 0; left -= ZEROES.length) h.update(ZEROES.subarray(0, left))
}

/** An octal or base-256 (GNU) number field; undefined when malformed or not safe. */
export const readNumber = (b: Buffer, off: number, len: number): number | undefined => {
  const first = b[off] ?? 0
  if (first & 0x80) {
    if (first !== 0x80) return undefined // negative
    let v = 0
    for (let i = 1; i < len; i++) v = v * 256 + (b[off + i] ?? 0)
    return Number.isSafeInteger(v) ? v : undefined
  }
  let i = off
  const end = off + len
  while (i < end && b[i] === 0x20) i++
  let v = 0
  for (; i < end; i++) {
    const c = b[i] ?? 0
    if (c === 0 || c === 0x20) break
    if (c < 0x30 || c > 0x37) return undefined
    v = v * 8 + (c - 0x30)
  }
  return Number.isSafeInteger(v) ? v : undefined
}

/** A NUL-terminated field. */
export const field = (b: Buffer, off: number, len: number): Buffer => {
  const f = b.subarray(off, off + len)
  const nul = f.indexOf(0)
  return nul < 0 ? f : f.subarray(0, nul)
}

/** A name as text, with its bytes when they are no valid UTF-8. */
export const text = (b: Buffer): { s: string; raw?: string } => {
  const s = b.toString('utf8')
  return Buffer.from(s, 'utf8').equals(b) ? { s } : { s, raw: b.toString('base64') }
}

export const checksumOk = (h: Buffer): boolean => {
  const want = readNumber(h, 148, 8)
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < TAR_BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0)
    unsigned += c
    signed += c > 127 ? c - 256 : c
  }
  return want === unsigned || want === signed
}

/** Pax records (`<len> <key>=<value>\n`) in order; values as bytes. */
export const parsePax = (data: Buffer, at: number): [string, Buffer][] => {
  const out: [string, Buffer][] = []
  let pos = 0
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos)
    const len = Number(data.subarray(pos, sp).toString('latin1'))
    const end = pos + len
    const eq = data.indexOf(0x3d, sp)
    if (sp < 0 || !Number.isSafeInteger(len) || len <= 0 || end > data.length || eq < 0) {
      throw new TarParseError(at, `the pax header at byte ${at} is damaged`)
    }
    if (data[end - 1] !== 0x0a || eq >= end) {
      throw new TarParseError(at, `the pax header at byte ${at} is damaged`)
    }
    out.push([data.subarray(sp + 1, eq).toString('utf8'), data.subarray(eq + 1, end - 1)])
    pos = end
  }
  return out
}

/** Index of the first non-zero byte of `b`, or -1. */
export const firstNonZero = (b: Buffer): number => {
  if (isZero(b)) return -1
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return i
  return -1
}

/** The parser's state invariants: a value its state guarantees. */
export const must = <T>(v: T | undefined): T => {
  if (v === undefined) throw new BackupError('INTERNAL', 'tar parser state lost')
  return v
}

/** A decimal pax value. */
export const paxNumber = (value: Buffer, at: number): number => {
  const s = value.toString('latin1')
  const v = Number(s)
  if (!/^\d{1,20}$/.test(s) || !Number.isSafeInteger(v)) {
    throw new TarParseError(at, `the pax header at byte ${at} is damaged`)
  }
  return v
}
