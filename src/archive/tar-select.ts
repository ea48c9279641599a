/**
 * Extracting chosen members of a tar archive without reading all of it: the caller gives the
 * byte ranges of the members in the uncompressed tar stream (from the members file: a member
 * runs from its offset to the next member's), and only those bytes, followed by an end-of-archive
 * marker, go through the restore's member checks into `tar x` (tar-extract.ts). An uncompressed
 * archive is read at those ranges only; a seekable zstd archive (zstd-frames.ts) from the frames
 * holding them; a gzip or lzo stream has no index and is decompressed from its start (only the
 * ranges reach tar).
 */
import { constants } from 'node:fs'
import { open, stat } from 'node:fs/promises'
import { pipeline } from 'node:stream/promises'
import type { FileHandle } from 'node:fs/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { ToolNamespace } from '../io/userns.ts'
import { assertEmptyDirectory, stdioOf } from './internal.ts'
import type { Group } from './internal.ts'
import { decompressorFor } from './tar-check.ts'
import { extractTarStream } from './tar-extract.ts'
import { RESTORE_TAR_FLAGS } from './tar.ts'
import type { ExtractTarResult } from './tar-extract.ts'
import { TAR_BLOCK } from './tar-format.ts'
import { framesFor } from './zstd-frames.ts'
import type { FrameIndex } from './zstd-frames.ts'

const READ_BYTES = 1024 * 1024

/** A range of the uncompressed tar stream: `[start, end)`; `end` undefined runs to the end. */
export interface StreamRange {
  start: number
  end?: number | undefined
}

/** Options of {@link extractTarMembers}. */
export interface ExtractMembersOptions {
  /** The archive file, named `*.tar`, `*.tar.zst`, `*.tar.gz`, `*.tar.lzo` (or a pinned path). */
  archive: string
  /** The frame index of a seekable `.tar.zst`; without it a zstd archive is read from its start. */
  frames?: FrameIndex | undefined
  /** Member ranges, each starting at a member's first header. */
  ranges: readonly StreamRange[]
  /** Existing, empty directory. */
  target: string
  signal?: AbortSignal | undefined
  /** Run tar x in this user namespace. */
  namespace?: ToolNamespace | undefined
}

/** Result of {@link extractTarMembers}. */
export interface ExtractMembersResult extends ExtractTarResult {
  /** Bytes read from the archive file. */
  bytesRead: number
  /** Size of the archive file. */
  archiveBytes: number
}

/** Sorted ranges with overlapping and touching ones joined. */
export const mergeRanges = (ranges: readonly StreamRange[]): { start: number; end: number }[] => {
  const sorted = ranges
    .map((r) => ({ start: r.start, end: r.end ?? Infinity }))
    .sort((a, b) => a.start - b.start)
  const out: { start: number; end: number }[] = []
  for (const r of sorted) {
    const last = out.at(-1)
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end)
    else out.push({ ...r })
  }
  return out
}

/** The parts of `stream` (which starts at offset `u0`) that fall into `ranges`, in order. */
async function* slices(
  stream: AsyncIterable<Buffer>,
  u0: number,
  ranges: readonly { start: number; end: number }[],
): AsyncGenerator<Buffer> {
  let pos = u0
  let i = 0
  for await (const chunk of stream) {
    const from = pos
    pos += chunk.length
    while (i < ranges.length) {
      const r = ranges[i]
      if (r === undefined || r.start >= pos) break
      const a = Math.max(r.start, from)
      const b = Math.min(r.end, pos)
      if (b > a) yield chunk.subarray(a - from, b - from)
      if (r.end > pos) break
      i++
    }
    // The rest is read on (a decompressor stopped mid-stream would fail on its broken pipe).
  }
}

/** `[start, end)` of the open file, in reads of at most 1 MiB (each a new buffer). */
async function* fileRange(
  fh: FileHandle,
  start: number,
  end: number,
  signal: AbortSignal,
  count: (n: number) => void,
): AsyncGenerator<Buffer> {
  for (let pos = start; pos < end;) {
    throwIfAborted(signal)
    const buf = Buffer.allocUnsafe(Math.min(READ_BYTES, end - pos))
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
    if (bytesRead === 0) return
    count(bytesRead)
    pos += bytesRead
    yield buf.subarray(0, bytesRead)
  }
}

/** A decompressor's output for the input chunks `input`, in `group`. */
const decompress = (
  cmd: readonly string[],
  input: AsyncIterable<Buffer> | number,
  group: Group,
): AsyncIterable<Buffer> => {
  const [prog, ...args] = cmd as [string, ...string[]]
  const tool = spawnTool(prog, args, {
    stdin: typeof input === 'number' ? input : 'pipe',
    signal: group.signal,
    errorCode: 'ARCHIVE_INVALID',
  })
  group.addTool(tool)
  if (typeof input !== 'number') {
    group.add(pipeline(input, stdioOf(tool.stdin, group), { signal: group.signal }))
  }
  return stdioOf(tool.stdout, group)
}

/**
 * Extract the members at `o.ranges` of the archive into `o.target`, reading no more of the
 * file than its format needs (see the module comment), with the restore's member checks.
 *
 * @throws BackupError `USAGE` (no tar archive by name, target not an empty directory),
 *   `ARCHIVE_INVALID` (damaged ranges or frames, a refused member), `ARCHIVE_TOOL_FAILED`.
 */
export const extractTarMembers = async (
  o: ExtractMembersOptions,
): Promise<ExtractMembersResult> => {
  throwIfAborted(o.signal)
  const cmd = decompressorFor(o.archive)
  if (o.ranges.length === 0) throw new BackupError('USAGE', 'no members to extract')
  await assertEmptyDirectory(o.target, 'target')
  const size = (await stat(o.archive)).size
  const ranges = mergeRanges(o.ranges)
  let bytesRead = 0
  const count = (n: number): void => {
    bytesRead += n
  }
  const fh = await open(o.archive, constants.O_RDONLY)
  try {
    const r = await extractTarStream(o, o.archive, (group) => {
      const signal = group.signal
      async function* stream(): AsyncGenerator<Buffer> {
        if (cmd === undefined) {
          for (const r of ranges)
            yield* fileRange(fh, r.start, Math.min(r.end, size), signal, count)
        } else if (o.frames !== undefined && cmd[0] === 'zstd') {
          const total = o.frames.frames.reduce((s, [, u]) => s + u, 0)
          // Each run of ranges sharing frames is decoded from its first frame, once.
          let i = 0
          while (i < ranges.length) {
            const first = ranges[i]
            if (first === undefined) break
            const spans = framesFor(o.frames, first.start, Math.min(first.end, total))
            let last = spans.at(-1)
            const run = [first]
            for (i++; i < ranges.length; i++) {
              const next = ranges[i]
              if (
                next === undefined ||
                last === undefined ||
                next.start >= last.offset + last.bytes
              )
                break
              run.push(next)
              last = framesFor(o.frames, next.start, Math.min(next.end, total)).at(-1) ?? last
            }
            const head = spans[0]
            if (head === undefined || last === undefined) continue
            const cEnd = last.compressedOffset + last.compressedBytes
            const input = fileRange(fh, head.compressedOffset, cEnd, signal, count)
            yield* slices(decompress(cmd, input, group), head.offset, run)
          }
        } else {
          count(size) // a stream without an index is read whole
          yield* slices(decompress(cmd, fh.fd, group), 0, ranges)
        }
        // The end-of-archive marker: two zero blocks.
        yield Buffer.alloc(2 * TAR_BLOCK)
      }
      return Promise.resolve(stream())
    })
    return { ...r, bytesRead, archiveBytes: size }
  } finally {
    await fh.close()
  }
}

/** Options of {@link extractTreePaths}. */
export interface ExtractTreePathsOptions {
  /** A directory tree (a squashfs image's mount). */
  root: string
  /** Paths relative to `root`, no `..`. */
  paths: readonly string[]
  /** Existing, empty directory. */
  target: string
  signal?: AbortSignal | undefined
}

/**
 * Copy `paths` of the tree at `root` into `target`: `tar c` of them (links not followed) into
 * the restore's member checks and `tar x`, as a whole-tree restore from a mount does.
 */
export const extractTreePaths = async (o: ExtractTreePathsOptions): Promise<ExtractTarResult> => {
  await assertEmptyDirectory(o.target, 'target')
  for (const p of o.paths) {
    if (p === '' || p.startsWith('/') || p.split('/').includes('..')) {
      throw new BackupError('USAGE', `invalid path ${JSON.stringify(p)}`)
    }
  }
  return await extractTarStream(o, o.root, (group) => {
    const tar = spawnTool(
      'tar',
      ['cpf', '-', ...RESTORE_TAR_FLAGS, '-C', o.root, '--', ...o.paths.map((p) => `./${p}`)],
      { stdin: 'ignore', signal: group.signal },
    )
    group.addTool(tar)
    return Promise.resolve(stdioOf(tar.stdout, group) as unknown as AsyncIterable<Buffer>)
  })
}
