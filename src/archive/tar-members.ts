/**
 * A streaming parser of the tar stream GNU tar 1.34 writes with our flags (`COMMON_TAR_FLAGS`:
 * with `--acls`/`--xattrs` that is the POSIX pax format, PAX sparse 1.0; without them the GNU
 * format, old GNU sparse `S` members, `L`/`K` long names), fed Buffers in any chunking. For each
 * member it yields a {@link TarMember} record: where its first header block starts in the
 * uncompressed stream, its name, type, size, the SHA-256 of its content as it will be on disk
 * (sparse members expanded, holes as zeroes) and the SHA-256 of its header blocks. Pure: no I/O.
 * Memory: one member's metadata (bounded by {@link MAX_META}) and a sparse map.
 *
 * State machine (`#state`), one 512-byte block at a time except for content:
 *
 *     header ──zero block──▶ header (second zero block) ──▶ end (the rest must be zero)
 *       │ x / g / L / K ──▶ meta (size bytes, padded) ──▶ header
 *       │ S with isextended ──▶ ext (21 map entries per block) ──▶ content
 *       └ member ──▶ content (PAX sparse 1.0: the decimal map first) ──▶ pad ──▶ header
 *
 * Field offsets: POSIX.1-2001 ustar and GNU tar's `tar.h` (`oldgnu_header`, `sparse_header`).
 */
import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import {
  MAX_META,
  TAR_BLOCK,
  TYPES,
  TarParseError,
  checksumOk,
  field,
  firstNonZero,
  isZero,
  must,
  parsePax,
  paxNumber,
  readNumber,
  text,
} from './tar-format.ts'
import type { TarMember } from './tar-format.ts'
import { SparseMapText, addGnuEntries, checkSparseMap, newSparse } from './tar-sparse.ts'
import type { Sparse } from './tar-sparse.ts'
import { ContentDigest } from './tar-content.ts'
import type { ContentSpans } from './tar-content.ts'

export { MAX_META, MAX_SPARSE_ENTRIES, TAR_BLOCK, TarParseError } from './tar-format.ts'
export type { ContentSpans } from './tar-content.ts'
export type { TarMember, TarMemberType } from './tar-format.ts'

/** The member whose header blocks are being read. */
interface Pending {
  offset: number
  hash: Hash | undefined
  path?: Buffer
  link?: Buffer
  size?: number
  sparse?: Sparse
  /** `GNU.sparse.*` pax values but offsets and sizes. */
  pax: Map<string, string>
  /** PAX sparse 0.0: `GNU.sparse.offset` and `GNU.sparse.numbytes` in order. */
  paxSparse0: number[]
}

/** A pax header or GNU long name being read. */
interface Meta {
  type: string
  buf: Buffer
  have: number
  size: number
  at: number
}

type State = 'header' | 'meta' | 'ext' | 'map' | 'content' | 'pad' | 'end'

/** Options of {@link TarMemberParser}. */
export interface TarParserOptions {
  /** Take the SHA-256 of headers and contents (`header`, `sha256`). Default true. */
  digests?: boolean
  /**
   * Leave the content digest of files to the caller: their records come without `sha256`, and
   * {@link TarMemberParser.takeSpans} says where their content lies in the stream (and where a
   * sparse file's holes go), so another thread can hash it from the same bytes (tar-follow.ts).
   */
  deferContent?: boolean
  /**
   * Called with each member (without digests) once all its header blocks are read and before
   * any of its content; throwing stops the parse. `flag` is the header's type flag.
   */
  onHeader?: (member: TarMember, flag: string) => void
}

/** See the module comment. One instance per tar stream. */
export class TarMemberParser {
  readonly #digests: boolean
  /** Content digests (tar-content.ts); absent without `digests`. */
  readonly #content: ContentDigest | undefined
  /** The current member is a file whose content goes to {@link #content}. */
  #inFile = false
  /** Members completed so far: the id of the member being read. */
  #done = 0
  readonly #check: ((member: TarMember, flag: string) => void) | undefined
  #state: State = 'header'
  #pos = 0
  readonly #block = Buffer.alloc(TAR_BLOCK)
  #have = 0
  #zeroBlocks = 0
  #meta: Meta | undefined
  #member: Pending | undefined
  #record: TarMember | undefined
  /** Content bytes (as stored) still to come, and their total. */
  #left = 0
  #stored = 0
  #padLeft = 0
  #map: SparseMapText | undefined
  #stray: number | undefined
  #flag = ''
  #endAt = 0

  constructor(opts: TarParserOptions = {}) {
    this.#digests = opts.digests ?? true
    this.#content = this.#digests ? new ContentDigest(opts.deferContent === true) : undefined
    this.#check = opts.onHeader
  }

  /**
   * Offset up to which every member's header blocks were read and passed `onHeader`: the bytes
   * before it may go on; those after it belong to a member whose headers are still coming. It
   * stops at the end of the end-of-archive blocks.
   */
  get checked(): number {
    if (this.#state === 'end') return this.#endAt
    const headers = this.#state === 'header' || this.#state === 'meta' || this.#state === 'ext'
    if (!headers) return this.#pos
    return this.#member?.offset ?? this.#pos - this.#have
  }

  /** Bytes consumed so far (the offset of the next byte). */
  get offset(): number {
    return this.#pos
  }

  /** Offset of the first non-zero byte in a member's padding or after the end blocks. */
  get strayByte(): number | undefined {
    return this.#stray
  }

  /** True once the two end-of-archive blocks were read. */
  get ended(): boolean {
    return this.#state === 'end'
  }

  /**
   * The deferred content spans found since the last call (see {@link ContentSpans}), in stream
   * order; with `deferContent` only.
   */
  takeSpans(): ContentSpans {
    return this.#content?.take() ?? []
  }

  /** Feed the next bytes; returns the members they complete, in order. */
  push(chunk: Buffer): TarMember[] {
    const out: TarMember[] = []
    let i = 0
    while (i < chunk.length) {
      const n = this.#step(chunk.subarray(i), out)
      i += n
      this.#pos += n
    }
    return out
  }

  /** The stream ended: `TarParseError` unless it ended after its end-of-archive blocks. */
  end(): void {
    if (this.#state !== 'end') {
      throw new TarParseError(this.#pos, `the tar stream ends at byte ${this.#pos}, unfinished`)
    }
  }

  /** Consume a non-empty prefix of `data` (which starts at `#pos`); returns its length. */
  #step(data: Buffer, out: TarMember[]): number {
    switch (this.#state) {
      case 'header':
      case 'ext': {
        const n = Math.min(TAR_BLOCK - this.#have, data.length)
        data.copy(this.#block, this.#have, 0, n)
        this.#have += n
        if (this.#have === TAR_BLOCK) {
          this.#have = 0
          const at = this.#pos + n - TAR_BLOCK
          if (this.#state === 'header') this.#onHeader(at, out)
          else this.#onExt(at, out)
        }
        return n
      }
      case 'meta': {
        const m = must(this.#meta)
        const n = Math.min(m.buf.length - m.have, data.length)
        data.copy(m.buf, m.have, 0, n)
        m.have += n
        if (m.have === m.buf.length) this.#onMeta(m)
        return n
      }
      case 'map':
        return this.#mapBytes(data, out)
      case 'content': {
        const n = Math.min(this.#left, data.length)
        this.#contentBytes(data.subarray(0, n))
        this.#left -= n
        if (this.#left === 0) this.#finishContent(out)
        return n
      }
      case 'pad': {
        const n = Math.min(this.#padLeft, data.length)
        this.#checkZero(data.subarray(0, n))
        this.#padLeft -= n
        if (this.#padLeft === 0) this.#state = 'header'
        return n
      }
      case 'end':
        this.#checkZero(data)
        return data.length
    }
  }

  #checkZero(data: Buffer): void {
    if (this.#stray !== undefined) return
    const i = firstNonZero(data)
    if (i >= 0) this.#stray = this.#pos + i
  }

  #onHeader(at: number, out: TarMember[]): void {
    const h = this.#block
    if (isZero(h)) {
      if (this.#member !== undefined) {
        throw new TarParseError(at, `the archive's header at byte ${at} is damaged (zero block)`)
      }
      this.#zeroBlocks++
      if (this.#zeroBlocks === 2) {
        this.#state = 'end'
        this.#endAt = at + TAR_BLOCK
      }
      return
    }
    if (this.#zeroBlocks > 0 || !checksumOk(h)) {
      throw new TarParseError(at, `the archive's header at byte ${at} is damaged`)
    }
    const hash = this.#digests ? createHash('sha256') : undefined
    this.#member ??= { offset: at, hash, pax: new Map(), paxSparse0: [] }
    const p = this.#member
    p.hash?.update(h)
    const flag = String.fromCharCode(h[156] ?? 0)
    const size = readNumber(h, 124, 12)
    if (size === undefined) {
      throw new TarParseError(at, `the archive's header at byte ${at} is damaged (size)`)
    }
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw new TarParseError(at, `the header at byte ${at} is too large`)
      const buf = Buffer.alloc(Math.ceil(size / TAR_BLOCK) * TAR_BLOCK)
      this.#meta = { type: flag, buf, have: 0, size, at }
      if (buf.length === 0) this.#onMeta(this.#meta)
      else this.#state = 'meta'
      return
    }
    const posix = h.subarray(257, 263).toString('latin1') === 'ustar\0'
    let name = p.path ?? field(h, 0, 100)
    if (p.path === undefined && posix && h[345] !== 0) {
      name = Buffer.concat([field(h, 345, 155), Buffer.from('/'), field(h, 0, 100)])
    }
    const type = TYPES[flag] ?? 'other'
    this.#flag = flag
    const pname = text(name)
    this.#stored = p.size ?? size
    // The catalog's attributes: pax records (GNU tar writes them for values a ustar field cannot
    // hold, POSIX.1-2001 pax `uid`, `gid`, `mtime`) win over the header's fields.
    const attr = (key: string, off: number, len: number): number => {
      const v = p.pax.get(key)
      const n = v === undefined ? undefined : Math.floor(Number(v))
      if (n !== undefined && Number.isSafeInteger(n)) return n
      const f = readNumber(h, off, len)
      if (f === undefined) throw new TarParseError(at, `the header at byte ${at} has a bad ${key}`)
      return f
    }
    const rec: TarMember = {
      offset: p.offset,
      path: pname.s,
      type,
      size: this.#stored,
      mode: attr('mode', 100, 8) & 0o7777,
      uid: attr('uid', 108, 8),
      gid: attr('gid', 116, 8),
      mtime: attr('mtime', 136, 12),
      header: '',
    }
    if (pname.raw !== undefined) rec.pathRaw = pname.raw
    if (type === 'symlink' || type === 'hardlink') {
      const l = text(p.link ?? field(h, 157, 100))
      rec.link = l.s
      if (l.raw !== undefined) rec.linkRaw = l.raw
    }
    if (type !== 'file') rec.size = type === 'other' ? this.#stored : 0
    this.#record = rec
    this.#left = this.#stored
    const damaged = (): TarParseError =>
      new TarParseError(at, `the sparse header at byte ${at} is damaged`)
    if (flag === 'S') {
      const real = readNumber(h, 483, 12)
      if (real === undefined) throw damaged()
      p.sparse = newSparse(real, false)
      addGnuEntries(p.sparse, h, 386, 4, at)
      if (h[482] !== 0) {
        this.#state = 'ext'
        return
      }
    } else if (p.pax.get('GNU.sparse.major') === '1') {
      const real = Number(p.pax.get('GNU.sparse.realsize'))
      if (!Number.isSafeInteger(real) || real < 0) throw damaged()
      p.sparse = newSparse(real, true)
    } else if (p.pax.has('GNU.sparse.size')) {
      // PAX sparse 0.0 (GNU.sparse.offset / numbytes pairs) and 0.1 (GNU.sparse.map).
      const real = Number(p.pax.get('GNU.sparse.size'))
      const list = p.pax.get('GNU.sparse.map')
      const map = list === undefined ? p.paxSparse0 : list.split(',').map(Number)
      const bad = map.length % 2 !== 0 || map.some((v) => !Number.isSafeInteger(v) || v < 0)
      if (!Number.isSafeInteger(real) || real < 0 || bad) throw damaged()
      p.sparse = newSparse(real, false, map)
    }
    this.#startContent(at, out)
  }

  #onMeta(m: Meta): void {
    const p = must(this.#member)
    p.hash?.update(m.buf)
    const data = m.buf.subarray(0, m.size)
    this.#meta = undefined
    this.#state = 'header'
    if (m.type === 'L' || m.type === 'K') {
      const nul = data.indexOf(0)
      const v = Buffer.from(nul < 0 ? data : data.subarray(0, nul))
      if (m.type === 'L') p.path = v
      else p.link = v
      return
    }
    if (m.type === 'g') return // global defaults: GNU tar writes none that we use
    for (const [key, value] of parsePax(data, m.at)) {
      if (key === 'path' || key === 'GNU.sparse.name') p.path = Buffer.from(value)
      else if (key === 'linkpath') p.link = Buffer.from(value)
      else if (key === 'size') p.size = paxNumber(value, m.at)
      else if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
        p.paxSparse0.push(paxNumber(value, m.at))
      } else if (
        key.startsWith('GNU.sparse.') ||
        key === 'uid' ||
        key === 'gid' ||
        key === 'mtime'
      ) {
        p.pax.set(key, value.toString('latin1'))
      }
    }
  }

  #onExt(at: number, out: TarMember[]): void {
    this.#member?.hash?.update(this.#block)
    addGnuEntries(must(must(this.#member).sparse), this.#block, 0, 21, at)
    if (this.#block[504] === 0) this.#startContent(at, out)
  }

  #startContent(at: number, out: TarMember[]): void {
    const p = must(this.#member)
    const rec = must(this.#record)
    this.#check?.({ ...rec, size: p.sparse?.real ?? rec.size }, this.#flag)
    rec.header = p.hash?.digest('hex') ?? ''
    this.#inFile = rec.type === 'file' && this.#content !== undefined
    if (this.#inFile) this.#content?.begin(this.#done)
    this.#state = 'content'
    if (p.sparse !== undefined) {
      rec.size = p.sparse.real
      if (p.sparse.inContent) {
        if (this.#left === 0) throw new TarParseError(at, `the sparse member at ${at} is empty`)
        this.#map = new SparseMapText()
        this.#state = 'map'
        return
      }
      checkSparseMap(p.sparse, this.#left, at)
    }
    if (this.#left === 0) this.#finishContent(out)
  }

  /** PAX sparse 1.0: the map at the start of the content, then the data. */
  #mapBytes(data: Buffer, out: TarMember[]): number {
    const m = must(this.#map)
    const i = m.read(data, Math.min(data.length, this.#left), this.#pos)
    this.#left -= i
    if (m.done) {
      const s = must(must(this.#member).sparse)
      s.map = m.map
      this.#map = undefined
      checkSparseMap(s, this.#left, this.#pos)
      this.#state = 'content'
      if (this.#left === 0) this.#finishContent(out)
    } else if (this.#left === 0) {
      throw new TarParseError(this.#pos + i, `the sparse map at byte ${this.#pos + i} is damaged`)
    }
    return i
  }

  #contentBytes(data: Buffer): void {
    if (this.#inFile) this.#content?.bytes(this.#pos, data, this.#member?.sparse)
  }

  #finishContent(out: TarMember[]): void {
    const rec = must(this.#record)
    const s = this.#member?.sparse
    if (this.#inFile) {
      const digest = this.#content?.end(this.#pos, s)
      if (digest !== undefined) rec.sha256 = digest
    }
    this.#inFile = false
    this.#done++
    this.#member = undefined
    this.#record = undefined
    out.push(rec)
    this.#padLeft = (TAR_BLOCK - (this.#stored % TAR_BLOCK)) % TAR_BLOCK
    this.#state = this.#padLeft === 0 ? 'header' : 'pad'
  }
}
