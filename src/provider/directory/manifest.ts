/**
 * `manifest.json`: the last file written into a backup. It describes every file of the backup
 * and is what `list`, restore and incrementals trust (after checking it against the files).
 */
import { readFile, writeFile, rename, open } from 'node:fs/promises'
import { join } from 'node:path'
import { z } from 'zod'
import { BackupError } from '../../errors.ts'
import { MANIFEST } from './layout.ts'

/** Format version of the manifest. */
export const MANIFEST_VERSION = 1

const DiskSchema = z.strictObject({
  /** File name inside the backup dir, `<device>.qcow2`. */
  file: z.string(),
  format: z.literal('qcow2'),
  /** Virtual size in bytes. */
  size: z.number().int().nonnegative(),
  /** Volume name of the backup whose image is the backing file, for incrementals. */
  parent: z.string().optional(),
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
})

/** Schema of `manifest.json`. */
export const ManifestSchema = z.strictObject({
  version: z.literal(MANIFEST_VERSION),
  vmid: z.number().int().positive(),
  type: z.enum(['qemu', 'lxc']),
  /** Backup time, Unix seconds. */
  ctime: z.number().int().nonnegative(),
  /** Archive name `<vmid>/<type>-<time>`. */
  archiveName: z.string(),
  /** When the backup was committed (ISO time). */
  completed: z.string(),
  /** Files of the backup with their sizes in bytes (apparent). */
  files: z.record(z.string(), z.number().int().nonnegative()),
  /** Volume name this backup depends on (any disk has it as backing), if any. */
  parent: z.string().optional(),
  /** VM disks keyed by device name. */
  disks: z.record(z.string(), DiskSchema).optional(),
  /** Container archive. */
  container: z
    .strictObject({
      file: z.string(),
      format: z.enum(['tar', 'squashfs']),
      excludes: z.array(z.string()),
    })
    .optional(),
  /** Whether a firewall config is stored. */
  firewall: z.boolean(),
  /** `crash` (plain point in time) or `fs` (guest file systems frozen). */
  consistency: z.enum(['crash', 'fs', 'offline']).optional(),
  /** Warnings raised while backing up. */
  warnings: z.array(z.string()),
})

/** A backup's manifest. */
export type Manifest = z.infer<typeof ManifestSchema>

/** Disk entry of a manifest. */
export type ManifestDisk = z.infer<typeof DiskSchema>

/** Read and validate the manifest of a backup dir; `ARCHIVE_INVALID` if absent or broken. */
export const readManifest = async (dir: string): Promise<Manifest> => {
  let text: string
  try {
    text = await readFile(join(dir, MANIFEST), 'utf8')
  } catch (e) {
    throw new BackupError('ARCHIVE_INVALID', `backup ${dir} has no manifest`, { cause: e })
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new BackupError('ARCHIVE_INVALID', `manifest of ${dir} is not JSON`, { cause: e })
  }
  const r = ManifestSchema.safeParse(json)
  if (!r.success) {
    throw new BackupError('ARCHIVE_INVALID', `manifest of ${dir} is invalid`, { cause: r.error })
  }
  return r.data
}

/** Write a file durably: temp file, fsync, rename. */
export const writeFileDurable = async (path: string, data: string): Promise<void> => {
  const tmp = `${path}.tmp`
  await writeFile(tmp, data, { mode: 0o600 })
  const fh = await open(tmp, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
}

/** Write the manifest (durably) into a backup dir. */
export const writeManifest = async (dir: string, m: Manifest): Promise<void> => {
  await writeFileDurable(join(dir, MANIFEST), `${JSON.stringify(m, null, 2)}\n`)
}
