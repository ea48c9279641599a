/**
 * `manifest.json`: the last file written into a backup. It describes every file of the backup
 * and is what `list`, restore and incrementals trust (after checking it against the files).
 */
import * as z from 'zod'
import { BACKUP_FILE_RE, DEVICE_NAME_RE } from '../../api/names.ts'
import { sha256Hex } from '../../digest/blocks.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import {
  ACLS_FILE,
  ARCHIVE_FILE_NAMES,
  ARCHIVE_FILES,
  FRAMES_FILE,
  MEMBERS_FILE,
} from './archive-files.ts'
import { MANIFEST, VOLNAME_RE } from './layout.ts'
import type { VolumeRef } from './layout.ts'

/** Upper bound of a manifest's size: a manifest is a few KiB; anything larger is not ours. */
export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024

// Every name read from a manifest becomes part of a path or is shown to the user: each is
// checked against the strict pattern of its kind before anything uses it.
const FileName = z.string().regex(BACKUP_FILE_RE, 'not a plain file name')
const Volname = z.string().regex(VOLNAME_RE, 'not a volume name')
const Device = z.string().regex(DEVICE_NAME_RE, 'not a device name')

/**
 * Format version of the manifest written today. Version 2 records digests (required); version 1
 * manifests, written before digests existed, are still read: their backups restore but cannot
 * be verified.
 */
export const MANIFEST_VERSION = 2

/** A SHA-256 digest, lower-case hex. */
const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'not a SHA-256 digest')

/**
 * Digests of a VM disk (see `src/digest/`): the guest-visible content cut into blocks of
 * `blockSize` bytes, one SHA-256 per block in the raw file `blocks` (32 bytes each, block order),
 * and `content`, the SHA-256 of that file: the digest of the whole disk, the same for any image
 * holding the same content (a qcow2 chain, a raw restore).
 */
const DiskDigestSchema = z.strictObject({
  algorithm: z.literal('sha256'),
  blockSize: z.number().int().positive(),
  /** `<device>.blocks`. */
  blocks: FileName,
  content: Sha256,
  /**
   * SHA-256 of the image's qcow2 metadata (header cluster, L1, L2 and refcount tables,
   * `src/qemu/qcow2-meta.ts`): with `content`, it proves every byte QEMU reads.
   */
  metadata: Sha256,
})

/**
 * Digests of a container archive: the SHA-256 of the archive file is in the manifest's
 * `digests`; for tar, `members` is a JSON-lines file with one record per member (its offset in
 * the archive, name, type, size and the SHA-256 of its content), which locates a damaged member
 * and proves a restored tree.
 */
const ArchiveDigestSchema = z.strictObject({
  algorithm: z.literal('sha256'),
  members: FileName.optional(),
  /** The frame index of a seekable zstd archive (`zstd-frames.ts`), `archive.frames`. */
  frames: FileName.optional(),
})

const DiskSchema = z.strictObject({
  /** File name inside the backup dir, `<device>.qcow2`. */
  file: FileName,
  format: z.literal('qcow2'),
  /** Virtual size in bytes. */
  size: z.number().int().nonnegative(),
  /** Volume name of the backup whose image is the backing file, for incrementals. */
  parent: Volname.optional(),
  /** Generation id of the bitmap this backup read (incrementals). */
  bitmap: z.string().optional(),
  /** Generation id of the bitmap started at this backup's instant: the next incremental's. */
  nextBitmap: z.string().optional(),
  /** Bitmap mode the host granted (`none`, `new`, `reuse`). */
  bitmapMode: z.enum(['none', 'new', 'reuse']),
  /** Bytes read from the source and written as data. */
  dataBytes: z.number().int().nonnegative(),
  /** Bytes written as explicit zeroes (incrementals) or skipped as holes (full). */
  zeroBytes: z.number().int().nonnegative(),
  /** Digests of the guest-visible content (version 2). */
  digest: DiskDigestSchema.optional(),
})

/** Schema of `manifest.json`. */
export const ManifestSchema = z.strictObject({
  version: z.union([z.literal(1), z.literal(MANIFEST_VERSION)]),
  vmid: z.number().int().positive(),
  type: z.enum(['qemu', 'lxc']),
  /** Backup time, Unix seconds. */
  ctime: z.number().int().nonnegative(),
  /** Archive name `<vmid>/<type>-<time>`. */
  // Must equal the name of the directory it is read from (see readManifest).
  archiveName: z.string(),
  /** When the backup was committed (ISO time). */
  completed: z.string(),
  /** Files of the backup with their sizes in bytes (apparent). */
  files: z.record(FileName, z.number().int().nonnegative()),
  /** Volume name this backup depends on (any disk has it as backing), if any. */
  parent: Volname.optional(),
  /** VM disks keyed by device name. */
  disks: z.record(Device, DiskSchema).optional(),
  /** Container archive. */
  container: z
    .strictObject({
      file: z.enum(ARCHIVE_FILE_NAMES),
      format: z.enum(['tar', 'squashfs']),
      excludes: z.array(z.string()),
      /** Digests of the archive (version 2). */
      digest: ArchiveDigestSchema.optional(),
      /**
       * squashfs: the file recording the tree's POSIX ACLs (`archive.acls`, getfacl text), which
       * squashfs cannot store; restore applies it after unpacking. Absent: none recorded.
       */
      acls: FileName.optional(),
      /**
       * The id map the archive was written under (an unprivileged container: its owners are the
       * container's view), as `lxc.idmap` entries `u 0 100000 65536`. Absent: privileged.
       */
      idmap: z.array(z.string().regex(/^[ug] \d+ \d+ \d+$/)).optional(),
    })
    .optional(),
  /**
   * SHA-256 of every file of the backup but its images (proven through their block digests),
   * the manifest itself (its digest is in `manifest.sha256`) and the task log (version 2).
   */
  digests: z.record(FileName, Sha256).optional(),
  /** Whether a firewall config is stored. */
  firewall: z.boolean(),
  /** `crash` (plain point in time) or `fs` (guest file systems frozen). */
  consistency: z.enum(['crash', 'fs', 'offline']).optional(),
  /** Warnings raised while backing up. */
  warnings: z.array(z.string()),
})

/** A backup's manifest. */
export type Manifest = z.infer<typeof ManifestSchema>

/** Digests of a disk in a manifest. */
export type ManifestDiskDigest = z.infer<typeof DiskDigestSchema>

/** Disk entry of a manifest. */
export type ManifestDisk = z.infer<typeof DiskSchema>

/**
 * Read and validate the manifest of the backup dir of `ref`: it must describe that backup (its
 * vmid, type and archive name), every disk file must be `<device>.qcow2`, every parent an older
 * backup of the same guest and type. `ARCHIVE_INVALID` if absent or broken.
 */
export const readManifest = async (dir: Dir, ref: VolumeRef): Promise<Manifest> => {
  let text: string
  try {
    text = await dir.readFile(MANIFEST, MANIFEST_MAX_BYTES)
  } catch (e) {
    throw new BackupError('ARCHIVE_INVALID', `backup ${dir.label} has no readable manifest`, {
      cause: e,
    })
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new BackupError('ARCHIVE_INVALID', `manifest of ${dir.label} is not JSON`, { cause: e })
  }
  const r = ManifestSchema.safeParse(json)
  if (!r.success) {
    throw new BackupError('ARCHIVE_INVALID', `manifest of ${dir.label} is invalid`, {
      cause: r.error,
    })
  }
  const m = r.data
  const why = manifestMismatch(m, ref) ?? missingDigest(m)
  if (why !== undefined) throw new BackupError('ARCHIVE_INVALID', `manifest of ${dir.label} ${why}`)
  return m
}

/**
 * Why a (possibly partial) manifest does not describe the backup `ref` (another vmid, type,
 * time or archive name, a disk file other than `<device>.qcow2`, a parent that is not an older
 * backup of the same guest and type), or undefined when it does.
 */
export const manifestMismatch = (
  m: Pick<Manifest, 'vmid' | 'type' | 'archiveName' | 'parent' | 'disks'>,
  ref: VolumeRef,
): string | undefined => {
  if (m.vmid !== ref.vmid || m.type !== ref.subtype || m.archiveName !== ref.archiveName) {
    return 'names another backup'
  }
  const sameGuest = (v: string): boolean =>
    // An older backup of the same guest and type (the fixed-width UTC times sort as text).
    v.startsWith(`backup/${ref.vmid}/${ref.subtype}-`) && v < ref.volname
  if (m.parent !== undefined && !sameGuest(m.parent)) return 'names a foreign parent'
  for (const [device, d] of Object.entries(m.disks ?? {})) {
    if (d.file !== `${device}.qcow2`) return `names file ${d.file} for ${device}`
    if (d.parent !== undefined && !sameGuest(d.parent)) return 'names a foreign parent'
  }
  return undefined
}

/** What a version 2 manifest lacks of the digests it must record, or undefined. */
const missingDigest = (m: Manifest): string | undefined => {
  if (m.version === 1) return undefined
  if (m.digests === undefined) return 'records no digests'
  for (const [device, d] of Object.entries(m.disks ?? {})) {
    if (d.digest === undefined) return `records no digest of ${device}`
    if (d.digest.blocks !== `${device}.blocks`) return `names digest file ${d.digest.blocks}`
  }
  if (m.container !== undefined && m.container.digest === undefined) {
    return 'records no digest of the archive'
  }
  const members = m.container?.digest?.members
  if (members !== undefined && members !== MEMBERS_FILE) return `names member list ${members}`
  const frames = m.container?.digest?.frames
  if (
    frames !== undefined &&
    (frames !== FRAMES_FILE || m.container?.file !== ARCHIVE_FILES.zstd)
  ) {
    return `names frame index ${frames}`
  }
  const acls = m.container?.acls
  if (acls !== undefined) {
    if (acls !== ACLS_FILE || m.container?.format !== 'squashfs') {
      return `names ACL record ${acls}`
    }
    if (m.digests[acls] === undefined) return `records no digest of ${acls}`
  }
  const c = m.container
  if (c !== undefined && (c.format === 'squashfs') !== (c.file === ARCHIVE_FILES.squashfs)) {
    return `stores a ${c.format} archive as ${c.file}`
  }
  return undefined
}

/** File holding the manifest's digest, in `sha256sum` format (`sha256sum -c` checks it). */
export const MANIFEST_DIGEST = 'manifest.sha256'

/**
 * Write the manifest (atomically and durably) into a backup dir, then its digest beside it. A
 * crash in between leaves a digest that does not match: only where the manifest is not yet
 * listed (a partial backup) or rewritten again (a removal journal, merge.ts).
 */
export const writeManifest = async (dir: Dir, m: Manifest): Promise<void> => {
  const text = `${JSON.stringify(m, null, 2)}\n`
  await dir.writeFileAtomic(MANIFEST, text)
  await dir.writeFileAtomic(MANIFEST_DIGEST, `${sha256Hex(text)}  ${MANIFEST}\n`)
}
