/**
 * Adapters between the NBD client and the copy engine: an export as a {@link CopySource}
 * (dirty regions from `qemu:dirty-bitmap:<name>`, allocation from `base:allocation`) and an
 * export as a {@link CopyTarget}.
 */
import type { NbdClient } from '../nbd/client.ts'
import { allocationFlags, dirtyExtents, walkExtents } from '../nbd/extents.ts'
import type { CopySource, CopyTarget, Piece } from './copy.ts'

/** Meta context of QEMU's allocation map. */
export const BASE_ALLOCATION = 'base:allocation'

/** Meta context name of a QEMU dirty bitmap. */
export const dirtyContext = (bitmap: string): string => `qemu:dirty-bitmap:${bitmap}`

/** Options of {@link nbdSource}. */
export interface NbdSourceOptions {
  /** Dirty bitmap context; when given, only dirty regions are copied. */
  dirtyContext?: string | undefined
  /** Use `base:allocation` to skip holes (default: if negotiated). */
  allocation?: boolean
  /** Connections to spread reads over (default: just `client`). */
  readers?: readonly NbdClient[]
  /** Largest NBD read; a larger `read` is split over the readers. Default {@link MAX_REQUEST}. */
  maxRequest?: number
}

/**
 * Largest NBD read or write: 2 MiB, half a digest block. Every request costs the client, the
 * source and the target server a fixed amount of work, so fewer, larger ones cost less CPU in
 * all three: measured here with bench/copy-sweep.ts (1 GiB of data, client + both servers),
 * 4 MiB reads cost ~0.8 CPU-s where 256 KiB ones cost ~1.4. qemu-nbd takes each request's
 * bounce buffer from its heap because it runs with a raised malloc mmap threshold
 * (src/qemu/nbd-server.ts); its heap then grows to several times the bytes in flight (aligned
 * allocations, qemu_blockalign, fragment it): with 32 MiB in flight, a peak RSS of ~120-170 MiB
 * at 4 MiB requests, ~55-85 MiB at 2 MiB (measured with nbdcopy, VmHWM), for the same CPU.
 */
export const MAX_REQUEST = 2 * 1024 * 1024

/**
 * One request of `length` bytes as pieces of at most `max`: `piece(at, n)` is started for each
 * (`at` from the request's start), and every piece is waited for before the first failure is
 * thrown, so the caller reuses its buffer only once no piece still reads or writes it.
 */
const inPieces = async (
  length: number,
  max: number,
  piece: (at: number, n: number) => Promise<unknown>,
): Promise<void> => {
  const parts: Promise<unknown>[] = []
  for (let at = 0; at < length; at += max) parts.push(piece(at, Math.min(max, length - at)))
  const settled = await Promise.allSettled(parts)
  for (const r of settled) if (r.status === 'rejected') throw r.reason
}

/** An NBD export as a copy source. */
export const nbdSource = (client: NbdClient, opts: NbdSourceOptions = {}): CopySource => {
  const haveAlloc = client.metaContexts.has(BASE_ALLOCATION) && opts.allocation !== false
  const dirty = opts.dirtyContext
  const readers = opts.readers ?? [client]
  let next = 0
  const src: CopySource = {
    size: client.size,
    async *regions(signal) {
      if (dirty === undefined) {
        if (client.size > 0) yield [0, client.size] as const
        return
      }
      // walkExtents already merges neighbours with equal flags, so dirty runs come out whole.
      for await (const e of dirtyExtents(client, dirty, { signal }))
        yield [e.offset, e.length] as const
    },
    read: async (offset, length, signal, into) => {
      const sub = opts.maxRequest ?? MAX_REQUEST
      if (length <= sub) {
        const c = readers[next++ % readers.length] ?? client
        return c.read(offset, length, into === undefined ? { signal } : { signal, into })
      }
      const buf = into ?? Buffer.allocUnsafe(length)
      await inPieces(length, sub, (at, n) => {
        const c = readers[next++ % readers.length] ?? client
        return c.read(offset + at, n, { signal, into: buf.subarray(at, at + n) })
      })
      return buf
    },
  }
  if (haveAlloc) {
    src.allocation = async function* (offset, length, signal): AsyncGenerator<Piece> {
      for await (const e of walkExtents(client, BASE_ALLOCATION, { offset, length, signal })) {
        yield { offset: e.offset, length: e.length, zero: (e.flags & allocationFlags.ZERO) !== 0 }
      }
    }
  }
  return src
}

/**
 * An NBD export as a copy target, over one or more connections: writes go round-robin, split
 * into requests of at most {@link MAX_REQUEST} (see there), and
 * `flush` flushes every connection (a flush covers the writes completed on its connection).
 */
export const nbdTarget = (all: readonly NbdClient[]): CopyTarget => {
  const first = all[0]
  if (first === undefined) throw new Error('nbdTarget needs a connection')
  let next = 0
  const pick = (): NbdClient => all[next++ % all.length] ?? first
  return {
    write: async (offset, data, signal) => {
      if (data.length <= MAX_REQUEST) return pick().write(offset, data, { signal })
      await inPieces(data.length, MAX_REQUEST, (at, n) =>
        pick().write(offset + at, data.subarray(at, at + n), { signal }),
      )
    },
    writeZeroes: (offset, length, signal) => pick().writeZeroes(offset, length, { signal }),
    flush: async (signal) => {
      await Promise.all(all.map((c) => c.flush({ signal })))
    },
  }
}
