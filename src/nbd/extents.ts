/**
 * Walking the extents of one meta context over a range, in BLOCK_STATUS queries of bounded
 * size. The server may answer a query with less than asked (proto.md §"NBD_CMD_BLOCK_STATUS":
 * "the server MAY return less data than requested"), so the walk advances by what came back.
 */
import { BackupError } from '../errors.ts'
import type { NbdClient } from './client.ts'
import { NBD_STATE } from './constants.ts'
import type { Extent } from './types.ts'

/** Flags of the `base:allocation` context (proto.md §"`base:allocation` metadata context"). */
export const allocationFlags = {
  /** Not allocated on the server; reads as ZERO only if that flag is also set. */
  HOLE: NBD_STATE.HOLE,
  /** Reads as zeroes. */
  ZERO: NBD_STATE.ZERO,
} as const

/** Flags of QEMU's `qemu:dirty-bitmap:NAME` contexts (QEMU docs/interop/nbd.txt). */
export const dirtyBitmapFlags = {
  /** Bit 0: the range changed since the bitmap was created or cleared. */
  DIRTY: 1,
} as const

/** Options of {@link walkExtents}. */
export interface WalkExtentsOptions {
  /** Start of the range. Default 0. */
  readonly offset?: number | undefined
  /** Length of the range. Default: to the end of the export. */
  readonly length?: number | undefined
  /** Largest BLOCK_STATUS query, a multiple of the minimum block size. Default 1 GiB. */
  readonly chunk?: number | undefined
  readonly signal?: AbortSignal | undefined
}

const DEFAULT_CHUNK = 1024 ** 3

/**
 * Yield the extents of `context` covering `[offset, offset + length)` exactly: in order,
 * contiguous, clipped to the range, adjacent extents with equal flags merged.
 * Rejects `NBD_UNSUPPORTED` when `context` was not negotiated.
 */
export async function* walkExtents(
  client: NbdClient,
  context: string,
  opts: WalkExtentsOptions = {},
): AsyncGenerator<Extent, void, undefined> {
  if (!client.metaContexts.has(context)) {
    throw new BackupError('NBD_UNSUPPORTED', `NBD meta context "${context}" was not negotiated`, {
      details: { negotiated: [...client.metaContexts.keys()] },
    })
  }
  const start = opts.offset ?? 0
  const end = start + (opts.length ?? client.size - start)
  const chunk = opts.chunk ?? DEFAULT_CHUNK
  const min = client.blockSize.minimum
  if (!Number.isSafeInteger(chunk) || chunk < min || chunk % min !== 0 || chunk > 2 ** 32 - min) {
    throw new BackupError('INTERNAL', `walkExtents: bad chunk size ${chunk}`)
  }
  let held: Extent | undefined
  let pos = start
  while (pos < end) {
    const status = await client.blockStatus(pos, Math.min(chunk, end - pos), {
      signal: opts.signal,
    })
    const extents = status.get(context) ?? []
    const before = pos
    for (const e of extents) {
      const len = Math.min(e.length, end - e.offset)
      if (len <= 0) break
      if (held?.flags === e.flags && held.offset + held.length === e.offset) {
        held = { offset: held.offset, length: held.length + len, flags: held.flags }
      } else {
        if (held) yield held
        held = { offset: e.offset, length: len, flags: e.flags }
      }
      pos = e.offset + len
    }
    if (pos === before) {
      throw new BackupError(
        'NBD_PROTOCOL',
        `NBD block status at ${pos} made no progress (the server replied with no extent)`,
      )
    }
  }
  if (held) yield held
}

/** Yield only the dirty extents of a `qemu:dirty-bitmap:…` context (merged, in order). */
export async function* dirtyExtents(
  client: NbdClient,
  context: string,
  opts: WalkExtentsOptions = {},
): AsyncGenerator<Extent, void, undefined> {
  for await (const e of walkExtents(client, context, opts)) {
    if ((e.flags & dirtyBitmapFlags.DIRTY) !== 0) yield e
  }
}
