/**
 * Userspace NBD client (proto.md of NetworkBlockDevice/nbd) over unix sockets: handshake,
 * pipelined reads and writes, block status of meta contexts, and extent walking.
 */
export { NbdClient } from './client.ts'
export type {
  BlockSize,
  Extent,
  NbdConnectOptions,
  NbdExportFlags,
  NbdListOptions,
  NbdReadOptions,
  NbdRequestOptions,
} from './types.ts'
export { allocationFlags, dirtyBitmapFlags, dirtyExtents, walkExtents } from './extents.ts'
export type { WalkExtentsOptions } from './extents.ts'
export {
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_FLAG,
  NBD_INFO,
  NBD_OPT,
  NBD_REP,
  NBD_REPLY_FLAG,
  NBD_REPLY_TYPE,
  NBD_STATE,
} from './constants.ts'
