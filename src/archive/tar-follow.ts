/**
 * The digests of a tar stream read once: Node reads the stream into the slots of a
 * {@link SpanHasher}; the main thread parses each slot's headers (the members file,
 * tar-digest.ts) while the hashing thread takes the members' content digests (and, when the
 * stream is the archive file, the archive's SHA-256) from the same bytes in place. A slot may
 * then be handed, still in place, to a sink (a compressor's stdin, the archive file) before it
 * is refilled. Memory: the slots ({@link SLOTS} × {@link SLOT_BYTES}) and the parser's.
 *
 * Two sources: the archive file tar writes itself ({@link followTarFile}: reads see everything
 * written before them, since a regular file's page cache is shared, read(2); after the writer's
 * exit one more read to the end picks up its last writes), and a pipe from tar's stdout
 * ({@link followTarPipe}, for the ways that pass the stream on).
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { SpanHasher } from '../digest/span-hasher.ts'
import { throwIfAborted } from '../errors.ts'
import type { MembersSink } from './tar-digest.ts'

/** Slots: one being read while the others are hashed (and passed on). */
const SLOTS = 4
/** Size of the reads: large reads keep the hashing, not the system calls, the cost. */
export const SLOT_BYTES = 4 * 1024 * 1024
/** How long the file reader waits when it has caught up with the writer (ms). */
const POLL_MS = 2

/** Options of {@link followTarFile} and {@link followTarPipe}. */
export interface FollowTarOptions {
  signal: AbortSignal
  /** The members file; absent: no member digests. */
  members: MembersSink | undefined
  /** Gets the bytes read so far, as they grow. */
  onBytes?: ((bytes: number) => void) | undefined
}

/** Options of {@link followTarPipe}. */
export interface FollowTarStreamOptions extends FollowTarOptions {
  /**
   * Takes each slot's bytes, in stream order, one call at a time; the slot is refilled only
   * once the promise it returns has settled, so it may pass them on without a copy.
   */
  sink: (data: Buffer) => Promise<void>
  /** Take the stream's own SHA-256 too (when the stream is the archive's bytes). */
  streamDigest: boolean
}

/** Puts the stream's next bytes into `buf`, resolving with their count: 0 at its end. */
type Source = (buf: Buffer, pos: number) => Promise<number>

/** Resolves after {@link POLL_MS}, or as soon as `exit` settles. */
const pause = async (exit: Promise<unknown>): Promise<void> => {
  const ac = new AbortController()
  const tick = sleep(POLL_MS, undefined, { signal: ac.signal }).catch(() => undefined)
  await Promise.race([tick, exit])
  ac.abort()
}

/** The loop both sources share (see the module comment). */
const follow = async (
  source: Source,
  o: FollowTarOptions & { sink?: FollowTarStreamOptions['sink']; streamDigest: boolean },
): Promise<{ digest: string | undefined; bytes: number }> => {
  await using hasher = new SpanHasher(SLOTS, SLOT_BYTES, { streamDigest: o.streamDigest })
  const slots = Array.from({ length: SLOTS }, (_, i) => hasher.slot(i))
  const busy: (Promise<unknown> | undefined)[] = []
  let order: Promise<void> = Promise.resolve()
  let sunk: Promise<void> = Promise.resolve()
  let pos = 0
  for (let seq = 0; ; seq++) {
    throwIfAborted(o.signal)
    const slot = seq % SLOTS
    await busy[slot]
    const buf = slots[slot] ?? hasher.slot(slot)
    const bytesRead = await source(buf, pos)
    if (bytesRead === 0) break
    const data = buf.subarray(0, bytesRead)
    const batch = o.members?.parse(data)
    const hashed = hasher.hash(slot, bytesRead, pos, batch?.spans ?? [])
    hashed.catch(() => undefined)
    // Batches complete in stream order: the members file's lines keep the archive's order.
    const members = o.members
    const done = order.then(async () => {
      const digests = await hashed
      if (batch !== undefined) await members?.complete(batch, digests)
    })
    const sink = o.sink
    if (sink !== undefined) sunk = sunk.then(() => sink(data))
    // All are awaited later (at the slot's next use, at the end): no unhandled rejection
    // meanwhile.
    const settled = Promise.all([done, sunk])
    for (const p of [done, sunk, settled]) p.catch(() => undefined)
    order = done
    busy[slot] = settled
    pos += bytesRead
    o.onBytes?.(pos)
  }
  await Promise.all([order, sunk])
  return await hasher.end()
}

/**
 * Follow the tar archive `path` while its writer appends to it (see the module comment) until
 * the writer has exited (`writerDone` settled, either way) and the end is reached; returns the
 * archive's hex SHA-256 and length. A stream that is no tar archive throws the parser's
 * `TarParseError`.
 */
export const followTarFile = async (
  path: string,
  o: FollowTarOptions & { writerDone: Promise<unknown> },
): Promise<{ digest: string; bytes: number }> => {
  const fh = await open(path, constants.O_RDONLY)
  try {
    const writer = { exited: false }
    const exit = o.writerDone.then(
      () => (writer.exited = true),
      () => (writer.exited = true),
    )
    const source: Source = async (buf, pos) => {
      for (;;) {
        throwIfAborted(o.signal)
        const wasExited = writer.exited
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
        if (bytesRead > 0 || wasExited) return bytesRead
        await pause(exit)
      }
    }
    const { digest, bytes } = await follow(source, { ...o, streamDigest: true })
    return { digest: digest ?? '', bytes }
  } finally {
    await fh.close()
  }
}

/**
 * Read tar's output from the read end of a pipe (io/fifo.ts) to its end (see the module
 * comment), every slot passed to `o.sink`; returns the stream's length and, with
 * `streamDigest`, its hex SHA-256. Each slot is filled by reads straight into it.
 */
export const followTarPipe = (
  pipe: FileHandle,
  o: FollowTarStreamOptions,
): Promise<{ digest: string | undefined; bytes: number }> => {
  const source: Source = async (buf) => {
    let fill = 0
    while (fill < buf.length) {
      const { bytesRead } = await pipe.read(buf, fill, buf.length - fill, null)
      if (bytesRead === 0) break
      fill += bytesRead
    }
    return fill
  }
  return follow(source, o)
}
