/**
 * Store options of the directory provider, with Proxmox's names and defaults
 * (BackupProviderDirExamplePlugin). They are kept in the store itself (`guestbackup-store.json`,
 * written by `guestbackup init`), so every command sees the same settings.
 */
import * as z from 'zod'
import { BackupError } from '../../errors.ts'
import { parsePruneBackups } from '../../storage/prune-options.ts'

/** Name of the store's configuration file, at the root of `path`. */
export const STORE_FILE = 'guestbackup-store.json'

/** Proxmox storage id syntax. */
export const STORE_ID_RE = /^[a-z][a-z0-9._-]{0,63}$/

/** Format version of {@link STORE_FILE}. */
export const STORE_VERSION = 1

// One validator for `prune-backups` wherever it comes from (store file, `init`, the plugin's
// options): the port of Proxmox's own parser and its `validate_prune_backups`.
const pruneString = z.string().superRefine((v, ctx) => {
  try {
    parsePruneBackups(v)
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message })
  }
})

/** Schema of the store options. */
export const StoreOptionsSchema = z.strictObject({
  /** Absolute path of the store directory. */
  path: z.string().startsWith('/', 'path must be absolute'),
  /** `full`: always full; `incremental`: incremental when possible, full otherwise. */
  'vm-backup-mode': z.enum(['full', 'incremental']).default('full'),
  /** How VM disks are read: over NBD (default) or through a file handle. */
  'vm-backup-mechanism': z.enum(['nbd', 'file-handle']).default('nbd'),
  /** Container archive format. */
  'lxc-backup-mode': z.enum(['tar', 'squashfs']).default('tar'),
  /** Retention (Proxmox property string). Default: keep everything. */
  'prune-backups': pruneString.default('keep-all=1'),
  /**
   * Clean blocks (64 KiB) per disk that an incremental compares with the previous backup, to
   * catch a lying dirty bitmap; 0 disables the check.
   */
  'incremental-sample': z.number().int().min(0).max(100_000).default(64),
  /**
   * Read a VM backup's stored images back and compare them with the digests taken from the
   * source before the backup is committed: `first` for the full backup starting a chain (the
   * image every later backup depends on), `always`, or `never`.
   */
  'verify-after-backup': z.enum(['first', 'always', 'never']).default('first'),
  /**
   * How VM disk images are stored: `zstd`, their clusters compressed by QEMU (qcow2
   * `compression_type=zstd`, readable by any qemu-img ≥ 5.1), or `none`. Absent (a store made
   * before the option existed, a Proxmox storage without `gb-vm-compress`): `none`; `init`
   * makes new stores with {@link NEW_STORE_OPTIONS}.
   */
  'vm-compress': z.enum(['zstd', 'none']).default('none'),
  /**
   * How container tar archives are compressed, vzdump's `compress` names: `zstd` (seekable
   * frames, `archive.tar.zst`), `gzip` (`.tar.gz`), `lzo` (`.tar.lzo`) or `none` (`.tar`).
   * Absent (an older store, a Proxmox storage without `gb-lxc-compress`): `none`; `init` makes
   * new stores with {@link NEW_STORE_OPTIONS}. squashfs archives are always zstd-compressed.
   */
  'lxc-compress': z.enum(['zstd', 'gzip', 'lzo', 'none']).default('none'),
  /** Protected backups allowed per guest and type; -1 unlimited. */
  'max-protected-backups': z.number().int().min(-1).default(-1),
})

/**
 * Options a store made by `init` starts with where they differ from the schema's defaults
 * (which are what a store file without them means, so older stores keep their behaviour).
 */
export const NEW_STORE_OPTIONS = {
  'vm-compress': 'zstd',
  'lxc-compress': 'zstd',
} as const satisfies Partial<z.input<typeof StoreOptionsSchema>>

/** Validated store options. */
export type StoreOptions = z.infer<typeof StoreOptionsSchema>

/** Raw (input) store options, before defaults. */
export type StoreOptionsInput = z.input<typeof StoreOptionsSchema>

/** The store file: options plus a format version. */
export const StoreFileSchema = z.strictObject({
  version: z.literal(STORE_VERSION),
  type: z.literal('dir'),
  /** Store id, the prefix of volume ids (`<id>:backup/…`), Proxmox storage id syntax. */
  id: z.string().regex(STORE_ID_RE, 'a store id starts with a letter: [a-z][a-z0-9._-]*'),
  /**
   * The store's immutable identity, made at `init` (a UUID), the key of its dirty-bitmap names;
   * the id is only a display name. Stores made before it existed keep their id as key.
   */
  uuid: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/)
    .optional(),
  options: StoreOptionsSchema,
})

/** Parse store options; a clear `CONFIG_INVALID` error on bad input. */
export const parseStoreOptions = (raw: unknown): StoreOptions => {
  const r = StoreOptionsSchema.safeParse(raw)
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`)
    throw new BackupError('CONFIG_INVALID', `invalid store options: ${issues.join('; ')}`)
  }
  return r.data
}
