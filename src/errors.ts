/**
 * The one error class of guestbackup. Callers branch on {@link BackupError.code}, never on
 * `instanceof` chains; subclasses exist only where they carry extra typed fields.
 */

/** Every error code guestbackup raises, prefixed by subsystem. */
export const ERROR_CODES = [
  'USAGE',
  'CONFIG_INVALID',
  'NBD_PROTOCOL',
  'NBD_SERVER',
  'NBD_CLOSED',
  'NBD_TIMEOUT',
  'NBD_UNSUPPORTED',
  'QMP_PROTOCOL',
  'QMP_COMMAND',
  'QMP_CLOSED',
  'QMP_TIMEOUT',
  'QGA_PROTOCOL',
  'QGA_COMMAND',
  'QGA_CLOSED',
  'QGA_TIMEOUT',
  'QEMU_TOOL_FAILED',
  'IMAGE_INVALID',
  'UNSAFE_IMAGE',
  'UNSAFE_PATH',
  'PROVIDER_INVALID',
  'PROVIDER_FAILED',
  'ARCHIVE_TOOL_FAILED',
  'ARCHIVE_INVALID',
  'VERIFY_FAILED',
  'STORE_INVALID',
  'NOT_FOUND',
  'PROTECTED',
  'LOCKED',
  'NO_SPACE',
  'IO',
  'ABORTED',
  /** A vzdump-style hook script (`--script`) failed a phase. */
  'HOOK_FAILED',
  /** The host or QEMU lacks a needed capability (version, feature). */
  'UNSUPPORTED',
  /** A line of the Proxmox VE plugin protocol (docs/pve-protocol.md) is not one of its shapes. */
  'PVE_PROTOCOL',
  /** The Proxmox VE plugin called a method guestbackup does not know. */
  'PVE_METHOD',
  /** The arguments of a Proxmox VE plugin call do not fit the method. */
  'PVE_ARGS',
  /** A provider session handed back by a stateless host is not one this store could have made. */
  'SESSION_INVALID',
  /** A guestbackup bug: an invariant broke or an API was misused by our own code. */
  'INTERNAL',
] as const

/** A string code naming the kind of failure. */
export type ErrorCode = (typeof ERROR_CODES)[number]

/** Options of {@link BackupError}: the standard `cause` plus structured details. */
export interface BackupErrorOptions extends ErrorOptions {
  /** Machine-readable context (paths, offsets, errno …). */
  details?: Record<string, unknown>
}

/** The error class of guestbackup. `cause` keeps the low-level error. */
export class BackupError extends Error {
  override name = 'BackupError'
  /** What kind of failure this is. */
  readonly code: ErrorCode
  /** Machine-readable context, if any. */
  readonly details: Readonly<Record<string, unknown>> | undefined

  constructor(code: ErrorCode, message: string, options?: BackupErrorOptions) {
    super(message, options)
    this.code = code
    this.details = options?.details
  }
}

/** True if `e` is a {@link BackupError}, optionally of the given code. */
export const isBackupError = (e: unknown, code?: ErrorCode): e is BackupError =>
  e instanceof BackupError && (code === undefined || e.code === code)

/** NBD_ENOSPC (`proto.md` §"Error values"): qemu-nbd sends it for ENOSPC, EDQUOT and EFBIG. */
const NBD_ENOSPC = 28

/**
 * An NBD server answered a request with an errno (NBD `proto.md` §"Error values"). Its code is
 * `NO_SPACE` for NBD_ENOSPC (the image's file system is full), else `NBD_SERVER`.
 */
export class NbdServerError extends BackupError {
  override name = 'NbdServerError'
  /** The errno the server sent (EIO=5, EPERM=1, ENOSPC=28, …). */
  readonly errno: number
  constructor(errno: number, message: string, options?: BackupErrorOptions) {
    super(errno === NBD_ENOSPC ? 'NO_SPACE' : 'NBD_SERVER', message, options)
    this.errno = errno
  }
}

/** QEMU answered a QMP command with `{"error":{"class":…,"desc":…}}`. */
export class QmpCommandError extends BackupError {
  override name = 'QmpCommandError'
  /** QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  readonly errorClass: string
  /** QEMU's human-readable description. */
  readonly desc: string
  constructor(command: string, errorClass: string, desc: string, options?: BackupErrorOptions) {
    super('QMP_COMMAND', `QMP ${command} failed: ${errorClass}: ${desc}`, options)
    this.errorClass = errorClass
    this.desc = desc
  }
}

/**
 * Turn anything thrown into a {@link BackupError}. AbortError (DOMException) becomes `ABORTED`;
 * ENOSPC becomes `NO_SPACE`; other errors get `fallback`.
 */
export const toBackupError = (e: unknown, fallback: ErrorCode = 'IO'): BackupError => {
  if (e instanceof BackupError) return e
  if (e instanceof Error) {
    if (e.name === 'AbortError')
      return new BackupError('ABORTED', 'operation aborted', { cause: e })
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOSPC' || code === 'EFBIG' || code === 'EDQUOT') {
      return new BackupError('NO_SPACE', `no space left: ${e.message}`, { cause: e })
    }
    return new BackupError(fallback, e.message, { cause: e })
  }
  return new BackupError(fallback, String(e))
}

/** The errno codes of a full file system, quota or file size limit. */
const NO_SPACE_ERRNOS: ReadonlySet<string> = new Set(['ENOSPC', 'EDQUOT', 'EFBIG'])

/**
 * How tools (tar, mksquashfs, qemu-img, unsquashfs) print those errnos (strerror), and GNU
 * tar's short write: a write(2) that stops part-way, which a filling file system does before
 * ENOSPC (tar's `src/system.c` / paxlib's `write_error_details`: "Wrote only %lu of %lu bytes").
 */
const NO_SPACE_TEXT =
  /No space left on device|Disk quota exceeded|File too large|Wrote only \d+ of \d+ bytes/

/**
 * True if `e`, or an error in its `cause` chain, says a write found no space: an errno of
 * {@link NO_SPACE_ERRNOS}, a `NO_SPACE` error (NBD_ENOSPC included), or a tool's error whose
 * message or kept stderr has the strerror text.
 */
export const isNoSpace = (e: unknown): boolean => {
  for (let c: unknown = e, depth = 0; c instanceof Error && depth < 8; c = c.cause, depth++) {
    if (c instanceof BackupError) {
      if (c.code === 'NO_SPACE') return true
      const stderr = c.details?.['stderr']
      if (typeof stderr === 'string' && NO_SPACE_TEXT.test(stderr)) return true
    }
    const code = (c as NodeJS.ErrnoException).code
    if (typeof code === 'string' && NO_SPACE_ERRNOS.has(code)) return true
    if (NO_SPACE_TEXT.test(c.message)) return true
  }
  return false
}

/** Where guestbackup writes, in the words the error line uses. */
export type SpacePlace = 'store' | 'fleecing dir' | 'temp dir' | 'restore target'

/**
 * The one error line of a full place: `no space left in the store /srv/backup (writing
 * 100/qemu-…/drive-scsi0.qcow2)`, where `what` is the text in parentheses (what was being
 * done). Code `NO_SPACE`; `cause` keeps the low-level error; `details` has `place` and `path`.
 */
export const noSpaceIn = (
  place: SpacePlace,
  path: string,
  cause: unknown,
  what?: string,
): BackupError => {
  const prep = place === 'restore target' ? 'on' : 'in'
  return new BackupError(
    'NO_SPACE',
    `no space left ${prep} the ${place} ${path}${what === undefined ? '' : ` (${what})`}`,
    { cause, details: { place, path } },
  )
}

/** True if `e` is already a {@link noSpaceIn} error (the innermost layer named the place). */
const isPlaced = (e: unknown): boolean =>
  isBackupError(e, 'NO_SPACE') && typeof e.details?.['place'] === 'string'

/**
 * Run `fn`, which writes `writing` (a path below `path`, if given); an error that
 * {@link isNoSpace} becomes {@link noSpaceIn}, unless an inner layer already named its place.
 * Other errors pass unchanged.
 */
export const withSpaceIn = async <T>(
  place: SpacePlace,
  path: string,
  fn: () => Promise<T>,
  writing?: string,
): Promise<T> => {
  try {
    return await fn()
  } catch (e) {
    if (isNoSpace(e) && !isPlaced(e)) {
      throw noSpaceIn(place, path, e, writing === undefined ? undefined : `writing ${writing}`)
    }
    throw e
  }
}

/** Throw `ABORTED` if the signal fired; keeps the signal's reason as `cause`. */
export const throwIfAborted = (signal: AbortSignal | undefined): void => {
  if (signal?.aborted === true) {
    throw new BackupError('ABORTED', 'operation aborted', { cause: signal.reason })
  }
}
