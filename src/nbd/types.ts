/**
 * Public types of the NBD client.
 */
import type { BlockSize } from './handshake.ts'

export type { BlockSize }

/** Options of `NbdClient.connect`. */
export interface NbdConnectOptions {
  /** Path of the server's unix socket. */
  readonly path: string
  /** Export to open. Default '' (the server's default export). */
  readonly exportName?: string | undefined
  /** Meta contexts to negotiate, e.g. `base:allocation`, `qemu:dirty-bitmap:bm0`. Default none. */
  readonly metaContexts?: readonly string[] | undefined
  /** Aborts connecting and the handshake (not the connection once open). */
  readonly signal?: AbortSignal | undefined
  /** Requests outstanding at once; further callers wait. Default 16, range 1–1024. */
  readonly maxInFlight?: number | undefined
}

/** Options of `NbdClient.listMetaContexts`. */
export interface NbdListOptions {
  readonly path: string
  /** Default ''. */
  readonly exportName?: string | undefined
  /** Queries such as `qemu:dirty-bitmap:`; default none, which lists everything. */
  readonly queries?: readonly string[] | undefined
  readonly signal?: AbortSignal | undefined
}

/** What the export supports, from its transmission flags (proto.md §"Transmission flags"). */
export interface NbdExportFlags {
  readonly readOnly: boolean
  readonly canFlush: boolean
  readonly canFua: boolean
  readonly canTrim: boolean
  readonly canWriteZeroes: boolean
  readonly canFastZero: boolean
  readonly canMultiConn: boolean
  readonly canDf: boolean
  readonly canCache: boolean
}

/** An extent of one meta context; `offset` is absolute in the export. */
export interface Extent {
  readonly offset: number
  readonly length: number
  /** Context-defined flags, e.g. `NBD_STATE_HOLE | NBD_STATE_ZERO` for `base:allocation`. */
  readonly flags: number
}

/** Options every request takes. */
export interface NbdRequestOptions {
  /** Rejects the request with `ABORTED`; its reply is still consumed and discarded. */
  readonly signal?: AbortSignal | undefined
}

/** Options of `NbdClient.read`. */
export interface NbdReadOptions extends NbdRequestOptions {
  /**
   * Receive into this buffer (at least `length` bytes) instead of a new one, and resolve with
   * `into.subarray(0, length)`. Reusing buffers spares the allocation, page faults and GC of a
   * fresh buffer per read. After an abort the promise rejects `ABORTED` only once the server's
   * reply has been received, because it is written into `into` until then.
   */
  readonly into?: Buffer | undefined
}
