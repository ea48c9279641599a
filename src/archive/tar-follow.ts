/**
 * The digests of a tar archive that tar writes to its file itself (tar-write.ts, the direct
 * way): Node reads the file behind tar as it grows, once, into the slots of a
 * {@link SpanHasher}; the main thread parses each slot's headers (the members file, tar-digest.ts)
 * while the hashing thread takes the archive's SHA-256 and the members' content digests from
 * the same bytes in place. Reads see everything written before them (a regular file's page cache
 * is shared, read(2)); after the writer's exit, one more read to the end picks up its last
 * writes. Memory: the slots ({@link SLOTS} × {@link SLOT_BYTES}) and the parser's.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { SpanHasher } from '../digest/span-hasher.ts'
import { throwIfAborted } from '../errors.ts'
import type { MembersSink } from './tar-digest.ts'

/** Slots: one being read while the others are hashed. */
const SLOTS = 4
/** Size of the reads: large reads keep the hashing, not the system calls, the cost. */
const SLOT_BYTES = 4 * 1024 * 1024
/** How long the reader waits when it has caught up with the writer (ms). */
const POLL_MS = 2

/** Options of {@link followTarFile}. */
export interface FollowTarOptions {
  /** Settles (either way) when the writer has exited, i.e. written everything it will. */
  writerDone: Promise<unknown>
  signal: AbortSignal
  /** The members file, opened with `deferContent`; absent: the archive's digest only. */
  members: MembersSink | undefined
  /** Gets the bytes read so far, as they grow. */
  onBytes?: ((bytes: number) => void) | undefined
}

/** Resolves after {@link POLL_MS}, or as soon as `exit` settles. */
const pause = async (exit: Promise<unknown>): Promise<void> => {
  const ac = new AbortController()
  const tick = sleep(POLL_MS, undefined, { signal: ac.signal }).catch(() => undefined)
  await Promise.race([tick, exit])
  ac.abort()
}

/**
 * Follow the tar archive `path` while its writer appends to it (see the module comment) until
 * the writer has exited and the end is reached; returns the archive's hex SHA-256 and length.
 * A stream that is no tar archive throws the parser's `TarParseError`.
 */
export const followTarFile = async (
  path: string,
  o: FollowTarOptions,
): Promise<{ digest: string; bytes: number }> => {
  const fh = await open(path, constants.O_RDONLY)
  try {
    await using hasher = new SpanHasher(SLOTS, SLOT_BYTES)
    const slots = Array.from({ length: SLOTS }, (_, i) => hasher.slot(i))
    const busy: (Promise<void> | undefined)[] = []
    let order: Promise<void> = Promise.resolve()
    const writer = { exited: false }
    const exit = o.writerDone.then(
      () => (writer.exited = true),
      () => (writer.exited = true),
    )
    let pos = 0
    for (let seq = 0; ;) {
      throwIfAborted(o.signal)
      const slot = seq % SLOTS
      await busy[slot]
      const buf = slots[slot] ?? hasher.slot(slot)
      const wasExited = writer.exited
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
      if (bytesRead === 0) {
        if (wasExited) break
        await pause(exit)
        continue
      }
      const batch = o.members?.parse(buf.subarray(0, bytesRead))
      const hashed = hasher.hash(slot, bytesRead, pos, batch?.spans ?? [])
      hashed.catch(() => undefined)
      // Batches complete in stream order: the members file's lines keep the archive's order.
      const members = o.members
      const done = order.then(async () => {
        const digests = await hashed
        if (batch !== undefined) await members?.complete(batch, digests)
      })
      // Both are awaited later (in `done`, at the slot's next use, at the end): no unhandled
      // rejection meanwhile.
      done.catch(() => undefined)
      order = done
      busy[slot] = done
      pos += bytesRead
      seq++
      o.onBytes?.(pos)
    }
    await order
    return await hasher.end()
  } finally {
    await fh.close()
  }
}
