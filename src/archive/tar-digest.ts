/**
 * The digest stages of a tar relay (see `createTarArchive`): a pass-through SHA-256 of the bytes
 * that land in the archive file, and a pass-through {@link TarMemberParser} over the uncompressed
 * tar stream that writes one JSON line per member to the members file as the stream goes by.
 * Memory: the parser's, plus at most {@link FLUSH_BYTES} of pending lines.
 */
import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { TarMemberParser } from './tar-members.ts'
import type { TarMember } from './tar-members.ts'

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

/** What a {@link membersStage} wrote. */
export interface MembersResult {
  /** SHA-256 (hex) of the members file. */
  digest: string
  /** Number of members. */
  count: number
}

/**
 * A members file being written: lines are gathered and written in large writes; the file's
 * SHA-256 is taken from the same bytes.
 */
class MembersWriter {
  readonly #fh: FileHandle
  readonly #hash = createHash('sha256')
  #pending: string[] = []
  #bytes = 0
  #count = 0

  constructor(fh: FileHandle) {
    this.#fh = fh
  }

  async add(members: readonly TarMember[]): Promise<void> {
    for (const m of members) {
      const line = memberLine(m)
      this.#pending.push(line)
      this.#bytes += line.length
      this.#count++
    }
    if (this.#bytes >= FLUSH_BYTES) await this.flush()
  }

  async flush(): Promise<void> {
    if (this.#pending.length === 0) return
    const buf = Buffer.from(this.#pending.join(''), 'utf8')
    this.#pending = []
    this.#bytes = 0
    this.#hash.update(buf)
    await this.#fh.write(buf)
  }

  result(): MembersResult {
    return { digest: this.#hash.digest('hex'), count: this.#count }
  }
}

/**
 * A pass-through stage over an uncompressed tar stream that parses it and appends its members
 * to the file `path` (an existing, empty file: the members file's partial). `result()` is set
 * once the stage has flushed, i.e. after its pipeline completed. A stream that is no complete
 * tar archive fails the stage (`ARCHIVE_INVALID`, a `TarParseError`).
 */
export const membersStage = async (
  path: string,
): Promise<{
  stage: Transform
  result: () => MembersResult | undefined
  close: () => Promise<void>
}> => {
  const fh = await open(path, constants.O_WRONLY)
  const writer = new MembersWriter(fh)
  const parser = new TarMemberParser()
  let done: MembersResult | undefined
  const stage = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      let members: TarMember[]
      try {
        members = parser.push(chunk)
      } catch (e) {
        cb(e as Error)
        return
      }
      writer.add(members).then(
        () => {
          cb(null, chunk)
        },
        (e: unknown) => {
          cb(e as Error)
        },
      )
    },
    flush(cb: TransformCallback) {
      try {
        parser.end()
      } catch (e) {
        cb(e as Error)
        return
      }
      writer.flush().then(
        () => {
          done = writer.result()
          cb()
        },
        (e: unknown) => {
          cb(e as Error)
        },
      )
    },
  })
  return { stage, result: () => done, close: () => fh.close() }
}
