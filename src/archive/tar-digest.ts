/**
 * The members file of a tar archive being written (see `createTarArchive`): one JSON line per
 * member of the uncompressed tar stream, parsed on the main thread as the stream goes by, each
 * with its content's SHA-256 hashed from the same bytes on another thread (tar-follow.ts).
 * Memory: the parser's, plus at most {@link FLUSH_BYTES} of pending lines.
 */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { BackupError } from '../errors.ts'
import { TarMemberParser } from './tar-members.ts'
import type { ContentSpans, TarMember } from './tar-members.ts'
import type { SpanDigests } from '../digest/span-hasher.ts'

/** Pending member lines are written once they reach this size. */
const FLUSH_BYTES = 1024 * 1024

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
 * The members file of a tar stream being written: `parse` reads the headers of each chunk and
 * `complete` takes the content digests hashed elsewhere from the same bytes; the members' lines
 * are gathered and written in large writes, and the file's SHA-256 is taken from them.
 */
export class MembersSink implements AsyncDisposable {
  readonly #fh: FileHandle
  readonly #hash = createHash('sha256')
  readonly #parser: TarMemberParser
  #pending: string[] = []
  #bytes = 0
  #count = 0
  #parsed = 0

  private constructor(fh: FileHandle) {
    this.#fh = fh
    this.#parser = new TarMemberParser({ deferContent: true })
  }

  /** Open the existing, empty file `path` (the members file's partial). */
  static async open(path: string): Promise<MembersSink> {
    return new MembersSink(await open(path, constants.O_WRONLY))
  }

  /**
   * Parse the next bytes of the uncompressed tar stream; pass the batch to `complete` once
   * hashed. A stream that is no tar archive throws a `TarParseError` (`ARCHIVE_INVALID`).
   */
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
