/**
 * NBD protocol constants with the names of the NBD spec (`doc/proto.md` of
 * NetworkBlockDevice/nbd), minus the `NBD_` prefix inside each group. Plain `as const` objects
 * (no enums, see the house style), with a value type derived from each.
 */

/** Magic numbers, proto.md §"Handshake" and §"Transmission". */
export const NBD_MAGIC = {
  /** ASCII `NBDMAGIC`, first 8 bytes of every greeting (`INIT_PASSWD`). */
  INIT_PASSWD: 0x4e42444d41474943n,
  /** ASCII `IHAVEOPT`: second greeting word in newstyle, and the prefix of every option. */
  IHAVEOPT: 0x49484156454f5054n,
  /** Second greeting word of the obsolete oldstyle negotiation (`cliserv_magic`). */
  CLISERV_MAGIC: 0x00420281861253n,
  /** Prefix of every fixed-newstyle option reply. */
  OPTION_REPLY: 0x3e889045565a9n,
  /** `NBD_REQUEST_MAGIC`. */
  REQUEST: 0x25609513,
  /** `NBD_SIMPLE_REPLY_MAGIC` (formerly `NBD_REPLY_MAGIC`). */
  SIMPLE_REPLY: 0x67446698,
  /** `NBD_STRUCTURED_REPLY_MAGIC`. */
  STRUCTURED_REPLY: 0x668e33ef,
} as const

/** Handshake flags sent by the server, proto.md §"Handshake flags". */
export const NBD_FLAG_HS = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const

/** Client flags sent after the greeting, proto.md §"Client flags" (`NBD_FLAG_C_*`). */
export const NBD_FLAG_C = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const

/** Transmission flags of an export, proto.md §"Transmission flags" (`NBD_FLAG_*`). */
export const NBD_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const

/** Option types, proto.md §"Option types" (`NBD_OPT_*`). */
export const NBD_OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const
/** An option type number. */
export type NbdOpt = (typeof NBD_OPT)[keyof typeof NBD_OPT]

/** Bit 31 marks every error reply type, proto.md §"Option reply types". */
export const NBD_REP_FLAG_ERROR = 0x80000000

/** Option reply types, proto.md §"Option reply types" (`NBD_REP_*`). */
export const NBD_REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: NBD_REP_FLAG_ERROR + 1,
  ERR_POLICY: NBD_REP_FLAG_ERROR + 2,
  ERR_INVALID: NBD_REP_FLAG_ERROR + 3,
  ERR_PLATFORM: NBD_REP_FLAG_ERROR + 4,
  ERR_TLS_REQD: NBD_REP_FLAG_ERROR + 5,
  ERR_UNKNOWN: NBD_REP_FLAG_ERROR + 6,
  ERR_SHUTDOWN: NBD_REP_FLAG_ERROR + 7,
  ERR_BLOCK_SIZE_REQD: NBD_REP_FLAG_ERROR + 8,
  ERR_TOO_BIG: NBD_REP_FLAG_ERROR + 9,
} as const

/** Information types of `NBD_REP_INFO`, proto.md §"`NBD_OPT_INFO` and `NBD_OPT_GO`". */
export const NBD_INFO = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const

/** Request types, proto.md §"Request types" (`NBD_CMD_*`). */
export const NBD_CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const
/** A request type number. */
export type NbdCmd = (typeof NBD_CMD)[keyof typeof NBD_CMD]

/** Command flags, proto.md §"Command flags" (`NBD_CMD_FLAG_*`). */
export const NBD_CMD_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const

/** Structured reply flags, proto.md §"Structured reply flags" (`NBD_REPLY_FLAG_*`). */
export const NBD_REPLY_FLAG = {
  DONE: 1 << 0,
} as const

/** Bit 15 marks every error chunk type, proto.md §"Structured reply types". */
export const NBD_REPLY_TYPE_FLAG_ERROR = 0x8000

/** Structured reply chunk types, proto.md §"Structured reply types" (`NBD_REPLY_TYPE_*`). */
export const NBD_REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: NBD_REPLY_TYPE_FLAG_ERROR + 1,
  ERROR_OFFSET: NBD_REPLY_TYPE_FLAG_ERROR + 2,
} as const

/** Error values of replies, proto.md §"Error values" (`NBD_E*`). */
export const NBD_ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const

/** Flags of the `base:allocation` context, proto.md §"`base:allocation` metadata context". */
export const NBD_STATE = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
} as const

/** Sizes of fixed wire messages in bytes. */
export const NBD_SIZE = {
  /** INIT_PASSWD + IHAVEOPT + 16-bit handshake flags. */
  GREETING: 18,
  /** IHAVEOPT + option + length. */
  OPTION_HEADER: 16,
  /** Magic + option + reply type + length. */
  OPTION_REPLY_HEADER: 20,
  /** Reply to `NBD_OPT_EXPORT_NAME` without the 124 zero bytes. */
  EXPORT_NAME_REPLY: 10,
  /** The 124 reserved zero bytes after an `NBD_OPT_EXPORT_NAME` reply without NO_ZEROES. */
  EXPORT_NAME_ZEROES: 124,
  REQUEST: 28,
  SIMPLE_REPLY: 16,
  STRUCTURED_REPLY: 20,
} as const

/** Limits this client enforces on lengths read from the wire, before allocating. */
export const NBD_LIMIT = {
  /** proto.md §"Conventions": a string MUST be no longer than 4096 bytes. */
  MAX_STRING: 4096,
  /** Largest option reply payload accepted (strings plus fixed fields). */
  MAX_OPTION_REPLY: 16 * 1024,
  /** Largest structured payload that is buffered rather than streamed (block status lists). */
  MAX_PAYLOAD: 64 * 1024 * 1024,
  /** Meta contexts accepted from one SET/LIST_META_CONTEXT reply. */
  MAX_META_CONTEXTS: 1024,
  /** Largest 32-bit length field. */
  MAX_U32: 0xffffffff,
  /**
   * Default maximum request payload when the server advertises no block size,
   * proto.md §"Block size constraints" (2^25).
   */
  DEFAULT_MAX_BLOCK: 32 * 1024 * 1024,
} as const
