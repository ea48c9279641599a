/**
 * The digests of a tar archive being written (see `createTarArchive`): a SHA-256 of the bytes
 * that land in the archive file, and a {@link TarMemberParser} over the uncompressed tar stream
 * that writes one JSON line per member to the members file as the stream goes by. Both are fed
 * by {@link ArchiveDigests.push}, called by whichever writer moves the bytes (tar-write.ts).
 * Memory: the parser's, plus at most {@link FLUSH_BYTES} of pending lines.
 */
import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { BackupError } from '../errors.ts'
import { TarMemberParser } from './tar-members.ts'
import type { ContentSpans, TarMember } from './tar-members.ts'
import type { SpanDigests } from '../digest/span-hasher.ts'

/** Pending member lines are written once they reach this size. */
const FLUSH_BYTES = 1024 * 1024

/** A pass-through stream that feeds every chunk to `hash`. */
export const hashStage = (hash: Hash): Transform =>
  new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      hash.update(chunk)
      cb(null, chunk)
    },
  })

/** One member as its line in a members file (fixed key order). */
export const memberLine = (m: TarMember): string => `${JSON.stringify(m)}\n`

/** What a members file holds. */
export interface MembersResult {
  /** SHA-256 (hex) of the members file. */
  digest: string
  /** Number of members. */
  count: number
}

/**
 * The members one chunk completed, with their content digests still to come (see
 * {@link MembersSink.parse}).
 */
export interface MemberBatch {
  members: TarMember[]
  /** The stream-wide index of the first of `members`. */
  first: number
  /** Where the deferred contents lie (tar-members.ts `ContentSpans`). */
  spans: ContentSpans
}

/**
 * The members file of a tar stream being written: the stream is parsed as it is pushed, and
 * the members' lines are gathered and written in large writes; the file's SHA-256 is taken
 * from the same bytes. Either `push` does it all, or (`deferContent`) `parse` reads the
 * headers and `complete` takes the content digests hashed elsewhere from the same bytes.
 */
export class MembersSink implements AsyncDisposable {
  readonly #fh: FileHandle
  readonly #hash = createHash('sha256')
  readonly #parser: TarMemberParser
  #pending: string[] = []
  #bytes = 0
  #count = 0
  #parsed = 0

  private constructor(fh: FileHandle, deferContent: boolean) {
    this.#fh = fh
    this.#parser = new TarMemberParser({ deferContent })
  }

  /**
   * Open the existing, empty file `path` (the members file's partial); `deferContent` for a
   * caller that hashes plain files' contents itself (`parse`, `complete`).
   */
  static async open(path: string, opts: { deferContent?: boolean } = {}): Promise<MembersSink> {
    return new MembersSink(await open(path, constants.O_WRONLY), opts.deferContent === true)
  }

  /** `deferContent`: parse the next bytes; pass the batch to `complete` once hashed. */
  parse(chunk: Buffer): MemberBatch {
    const members = this.#parser.push(chunk)
    const first = this.#parsed
    this.#parsed += members.length
    return { members, first, spans: this.#parser.takeSpans() }
  }

  /**
   * Take a batch from `parse` (batches in order) with the digests of the spans that ended in
   * its chunk; every member whose content was deferred must have one. Returns a promise only
   * when lines are written.
   */
  complete(batch: MemberBatch, digests: SpanDigests): Promise<void> | undefined {
    batch.members.forEach((m, i) => {
      if (m.type !== 'file' || m.sha256 !== undefined) return
      const d = digests.get(batch.first + i)
      if (d === undefined)
        throw new BackupError('INTERNAL', `member ${batch.first + i} got no content digest`)
      m.sha256 = d
    })
    return this.#queue(batch.members)
  }

  /**
   * Parse the next bytes of the uncompressed tar stream. A stream that is no tar archive throws
   * a `TarParseError` (`ARCHIVE_INVALID`). Returns a promise only when lines are written.
   */
  push(chunk: Buffer): Promise<void> | undefined {
    return this.#queue(this.#parser.push(chunk))
  }

  #queue(members: readonly TarMember[]): Promise<void> | undefined {
    for (const m of members) {
      const line = memberLine(m)
      this.#pending.push(line)
      this.#bytes += line.length
      this.#count++
    }
    return this.#bytes >= FLUSH_BYTES ? this.#flush() : undefined
  }

  async #flush(): Promise<void> {
    if (this.#pending.length === 0) return
    const buf = Buffer.from(this.#pending.join(''), 'utf8')
    this.#pending = []
    this.#bytes = 0
    this.#hash.update(buf)
    await this.#fh.write(buf)
  }

  /** The stream ended: `TarParseError` unless it was a complete archive; writes the rest. */
  async finish(): Promise<MembersResult> {
    this.#parser.end()
    await this.#flush()
    return { digest: this.#hash.digest('hex'), count: this.#count }
  }

  /** Close the file (the caller syncs and renames it). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#fh.close()
  }
}

/**
 * A pass-through stage over an uncompressed tar stream that feeds `sink` (whose `finish` the
 * caller calls once the pipeline completed).
 */
export const membersStage = (sink: MembersSink): Transform =>
  new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      let wrote: Promise<void> | undefined
      try {
        wrote = sink.push(chunk)
      } catch (e) {
        cb(e as Error)
        return
      }
      if (wrote === undefined) cb(null, chunk)
      else
        wrote.then(() => {
          cb(null, chunk)
        }, cb)
    },
  })
