/**
 * The JSON each command prints with `--output-format json` (or `json-pretty`, or `--json`): one
 * zod schema per command, the single source of docs/cli-json.md (test/cli/output/doc.test.ts
 * checks the document against {@link renderCliJsonDoc}) and of the tests that run every command
 * and validate its output. A new command adds its schema to {@link OUTPUT_SHAPES}.
 */
import * as z from 'zod'
import { StoreOptionsSchema } from '../../provider/directory/options.ts'

const Volid = z.string().describe('volume id, `<storeid>:backup/<vmid>/<type>-<time>`')
const Bytes = z.number().int().nonnegative()
const GuestType = z.enum(['qemu', 'lxc'])

/** `--version`. */
const VersionShape = z.strictObject({ version: z.string().describe('the package version') })

/** `init`: the store's id, its UUID and every option after the change. */
const InitShape = z.strictObject({
  id: z.string().describe('store id, the prefix of volume ids'),
  uuid: z.string().describe('identity of the store, made by the first init'),
  options: StoreOptionsSchema.describe('every option of the store (guestbackup-store.json)'),
})

const DiskReport = z.strictObject({
  device: z.string().describe('device name, `drive-<key>`'),
  size: Bytes.describe('virtual size of the disk'),
  mode: z.enum(['full', 'incremental']),
  reason: z.string().nullable().describe('why this disk was backed up in full (null: incremental)'),
  parent: Volid.nullable().describe('the backup this disk image builds on (incremental)'),
  read: Bytes.describe('guest data read from the source and written into the image'),
  zero: Bytes.describe('bytes written as zeroes (incremental) or skipped as holes (full)'),
  stored: Bytes.describe('apparent size of the stored image file'),
})

/**
 * `backup`: one guest's outcome. `job run` (or any command backing up several guests) prints
 * an array of these.
 */
const BackupShape = z.strictObject({
  vmid: z.number().int().positive(),
  type: GuestType,
  status: z.enum(['ok', 'failed']),
  volid: Volid.nullable().describe('the backup made; null when the run failed (no backup exists)'),
  size: Bytes.nullable().describe(
    'bytes the backup occupies in the store (as `stored`); null on failure',
  ),
  error: z.string().nullable().describe('the error line of a failed run'),
  mode: z
    .enum(['full', 'incremental'])
    .nullable()
    .describe('incremental when any disk is; null on failure'),
  reason: z.string().nullable().describe('why the backup is full (null: incremental, or failed)'),
  consistency: z
    .enum(['crash', 'fs', 'offline'])
    .nullable()
    .describe(
      'offline (stopped VM or container tree), crash (running VM) or fs (frozen by the guest agent)',
    ),
  duration: z.number().nonnegative().describe('seconds the run took, a wait for the lock included'),
  read: Bytes.describe(
    'bytes read from the source (VM: guest data of the disks; container: archive bytes)',
  ),
  written: Bytes.describe('bytes written into the backup files (apparent sizes)'),
  stored: Bytes.describe('bytes the backup occupies in the store (allocated)'),
  disks: z.array(DiskReport).describe('VM disks; empty for a container or a failed run'),
  warnings: z.strictObject({
    count: z.number().int().nonnegative(),
    messages: z.array(z.string()).describe('the warning lines of the task log'),
  }),
})

const ListBackupRow = z.strictObject({
  volid: Volid,
  vmid: z.number().int().positive(),
  subtype: GuestType,
  ctime: z.number().int().describe('backup time, Unix seconds'),
  size: Bytes.describe('bytes the backup occupies in the store (allocated)'),
  format: z.string(),
  parent: Volid.nullable(),
  protected: z.boolean(),
  notes: z.string().nullable(),
  'verify-state': z.enum(['ok', 'failed', 'none']),
  verified: z.string().nullable().describe('time of the last verify (ISO 8601)'),
  'verify-detail': z.string().optional().describe('the first difference verify found'),
  status: z.enum(['ok', 'broken']),
  broken: z.string().optional().describe('why the backup cannot be restored (status broken)'),
  idmap: z
    .array(z.string())
    .optional()
    .describe("an unprivileged container's id map (lxc.idmap entries, e.g. u 0 100000 65536)"),
})

const ListFailedRow = z.strictObject({
  volid: Volid.describe('the volume id the failed run would have had'),
  vmid: z.number().int().positive(),
  subtype: GuestType,
  ctime: z.number().int(),
  status: z.literal('failed'),
  error: z.string().nullable(),
  log: z.string().describe('path of the task log kept in the store'),
})

/** `list`: backups, then (with --failed) failed runs. */
const ListShape = z.array(z.union([ListBackupRow, ListFailedRow]))

/** `restore`: what was written where. */
const RestoreShape = z.strictObject({
  volid: Volid,
  type: GuestType,
  target: z.string().describe('the target directory, absolute'),
  files: z
    .array(z.string())
    .describe('absolute paths written: disks, rootfs, guest.conf, firewall.conf'),
  disks: z
    .array(
      z.strictObject({
        device: z.string().describe('e.g. drive-scsi0'),
        path: z.string().describe('absolute: a file in the target, or the --target-disk path'),
        format: z.enum(['raw', 'qcow2']).describe('as --format (raw onto a --target-disk)'),
        targetDisk: z.boolean().describe('true: written onto an existing --target-disk'),
      }),
    )
    .describe('where each restored VM disk went (only those chosen with --disk, if given)'),
})

/** `verify` of backups. */
const VerifyShape = z.array(
  z.strictObject({
    volid: Volid,
    state: z.enum(['ok', 'failed', 'none']).describe('none: made before digests were recorded'),
    time: z.string().describe('when it was verified (ISO 8601)'),
    bytes: Bytes.describe('bytes read and checked'),
    detail: z.string().optional().describe('the first difference, or why it cannot be verified'),
  }),
)

/** `verify --restored DIR`. */
const VerifyRestoredShape = z.strictObject({
  volid: Volid,
  restored: z.string(),
  state: z.enum(['ok', 'failed']),
  detail: z.string().optional(),
})

/** `show-config`: both configurations, whether or not `--firewall` is given. */
const ShowConfigShape = z.strictObject({
  volid: Volid,
  config: z.string().describe('the guest configuration, as stored'),
  firewall: z.string().nullable().describe('the firewall configuration; null when none was stored'),
})

const FileEntry = z.strictObject({
  path: z.string().describe('relative to the container root, without `./`'),
  type: z.enum(['file', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'socket', 'other']),
  size: Bytes.describe('content bytes (a sparse file: its real size); 0 for others'),
  mode: z.number().int().nullable().describe('permission bits (07777); null when not recorded'),
  uid: z
    .number()
    .int()
    .nullable()
    .describe("owner as stored (an unprivileged backup: the container's view)"),
  gid: z.number().int().nullable(),
  mtime: z.number().int().nullable().describe('Unix seconds'),
  link: z.string().nullable().describe('symlink target, or the path a hard link links to'),
})

/** `files VOLUME ls` and `files VOLUME find`: the entries (`get`: see `files-get`). */
const FilesListShape = z.array(FileEntry)

/** `files VOLUME get`: what was extracted and what it cost. */
const FilesGetShape = z.strictObject({
  volid: Volid,
  target: z.string().describe('the directory the files were written into'),
  archive: z.string().describe('the archive file they came from'),
  members: z.number().int().nonnegative().describe('members extracted'),
  bytesRead: Bytes.nullable().describe('bytes read from the archive file; null for squashfs'),
  archiveBytes: Bytes.nullable().describe('size of the archive file; null for squashfs'),
})

const Merge = z.strictObject({
  child: Volid.describe('the backup the removed one was merged into'),
  device: z.string(),
  bytes: Bytes.describe('bytes the merge writes (dry run: at most)'),
})

/** `prune`: every backup considered, its mark, and for each removed one its bytes and merges. */
const PruneShape = z.strictObject({
  'dry-run': z.boolean(),
  keep: z
    .string()
    .describe("the retention applied (prune-backups syntax): --keep/--keep-*, else the store's"),
  backups: z.array(
    z.strictObject({
      volid: Volid,
      vmid: z.number().int().positive(),
      type: GuestType,
      ctime: z.number().int(),
      mark: z.enum(['keep', 'remove', 'protected']),
      bytes: Bytes.nullable().describe('for a removed backup, the bytes it occupied; else null'),
      merges: z.array(Merge).describe('merges into dependants its removal does (did)'),
    }),
  ),
})

/** `remove`. */
const RemoveShape = z.strictObject({
  volid: Volid,
  bytes: Bytes.describe('bytes the backup occupied'),
  merges: z.array(Merge),
})

/** `protect`. */
const ProtectShape = z.strictObject({ volid: Volid, protected: z.boolean() })

/** `notes`: the notes after the command (with --set, the new ones). */
const NotesShape = z.strictObject({ volid: Volid, notes: z.string().nullable() })

const Bitmap = z.strictObject({ name: z.string(), flags: z.array(z.string()) })
/** `bitmaps`. */
const BitmapsShape = z.strictObject({
  dropped: z.array(z.string()),
  bitmaps: z.array(Bitmap).describe("guestbackup's bitmaps left in the disk"),
})

/** `check`. */
const CheckShape = z.strictObject({
  findings: z.array(
    z.strictObject({
      kind: z.string(),
      path: z.string(),
      vmid: z.number().int().optional(),
      volname: z.string().optional(),
      detail: z.string(),
      repair: z.string(),
      repaired: z.boolean(),
    }),
  ),
  repaired: z.number().int().nonnegative(),
})

/** `job run`: one `backup` report per guest of the job file, and the job's own outcome. */
const JobRunShape = z.strictObject({
  job: z.string().describe('the job file, as given'),
  status: z
    .enum(['ok', 'failed'])
    .describe("ok only when every guest's backup and the job's own steps succeeded"),
  error: z
    .string()
    .nullable()
    .describe("the job's own failure (jobInit, the job-start or job-end hook), else null"),
  ok: z.number().int().nonnegative().describe('guests backed up'),
  failed: z.number().int().nonnegative().describe('guests whose backup failed'),
  guests: z
    .array(
      BackupShape.extend({
        volid: Volid.nullable().describe(
          'the backup kept: set on success, and on a failure after the backup was committed (a failed backup-end hook)',
        ),
        log: z
          .string()
          .nullable()
          .describe('the task log a failed run left in the store (`list --failed`), else null'),
      }),
    )
    .describe('in the order of the job file; `duration` from the start of one guest to the next'),
})

/** `job check`: whether the job file is valid, and each error found in it. */
const JobCheckShape = z.strictObject({
  job: z.string().describe('the job file, as given'),
  valid: z.boolean(),
  guests: z.number().int().nonnegative().nullable().describe('guests of a valid file, else null'),
  errors: z.array(z.string()).describe('one per error: `<path in the file>: <reason>`'),
})

/**
 * Every JSON shape of the CLI, by the name docs/cli-json.md gives it (a command, or a command
 * and the option that changes its shape). Add a command's shape here: the doc test then asks
 * for its section in docs/cli-json.md.
 */
export const OUTPUT_SHAPES = {
  version: { command: 'guestbackup --version', schema: VersionShape },
  init: { command: 'guestbackup init', schema: InitShape },
  backup: { command: 'guestbackup backup', schema: BackupShape },
  list: { command: 'guestbackup list', schema: ListShape },
  restore: { command: 'guestbackup restore', schema: RestoreShape },
  verify: { command: 'guestbackup verify', schema: VerifyShape },
  'verify-restored': { command: 'guestbackup verify --restored DIR', schema: VerifyRestoredShape },
  'show-config': { command: 'guestbackup show-config', schema: ShowConfigShape },
  'files-list': { command: 'guestbackup files', schema: FilesListShape },
  'files-get': { command: 'guestbackup files VOLUME get', schema: FilesGetShape },
  prune: { command: 'guestbackup prune', schema: PruneShape },
  remove: { command: 'guestbackup remove', schema: RemoveShape },
  protect: { command: 'guestbackup protect', schema: ProtectShape },
  notes: { command: 'guestbackup notes', schema: NotesShape },
  bitmaps: { command: 'guestbackup bitmaps', schema: BitmapsShape },
  check: { command: 'guestbackup check', schema: CheckShape },
  'job-run': { command: 'guestbackup job run', schema: JobRunShape },
  'job-check': { command: 'guestbackup job check', schema: JobCheckShape },
} as const satisfies Record<string, { command: string; schema: z.ZodType }>

/** The name of a shape of {@link OUTPUT_SHAPES}. */
export type ShapeName = keyof typeof OUTPUT_SHAPES

/** The value a command prints as shape `N`. */
export type Shape<N extends ShapeName> = z.output<(typeof OUTPUT_SHAPES)[N]['schema']>
