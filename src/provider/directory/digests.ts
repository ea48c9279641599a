/**
 * Reading and writing the digests of a backup: each disk's block digests (`<device>.blocks`,
 * see `src/digest/blocks.ts`), the digest of its image's qcow2 metadata, and the SHA-256 of the
 * backup's other files, recorded in the manifest; the manifest's own digest beside it in
 * `manifest.sha256` (`sha256sum` format, so `sha256sum -c manifest.sha256` checks it by hand).
 */
import { BlockDigests, sha256Hex } from '../../digest/blocks.ts'
import { hashFile } from '../../digest/file.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { qcow2MetadataDigest } from '../../qemu/qcow2-meta.ts'
import { MANIFEST } from './layout.ts'
import { MANIFEST_DIGEST } from './manifest.ts'
import type { ManifestDisk, ManifestDiskDigest } from './manifest.ts'

/** Largest block digest file read: 64 Ti of disk at 4 MiB blocks. */
const MAX_BLOCKS_BYTES = 512 * 1024 * 1024

/** The name of a device's block digest file. */
export const blocksFile = (device: string): string => `${device}.blocks`

/**
 * Store the block digests of `device` in `dir` and return its manifest entry, with the digest
 * of the metadata of the device's image in `dir`.
 */
export const writeDiskDigests = async (
  dir: Dir,
  device: string,
  digests: BlockDigests,
): Promise<ManifestDiskDigest> => {
  const blocks = blocksFile(device)
  await dir.writeFileAtomic(blocks, digests.bytes())
  return {
    algorithm: 'sha256',
    blockSize: digests.blockSize,
    blocks,
    content: digests.content(),
    metadata: await imageMetadataDigest(dir, `${device}.qcow2`),
  }
}

/** SHA-256 of the qcow2 metadata of the image `name` in `dir` (`src/qemu/qcow2-meta.ts`). */
export const imageMetadataDigest = async (dir: Dir, name: string): Promise<string> => {
  await using image = await dir.pin(name)
  return await qcow2MetadataDigest(image.path, image.label)
}

/**
 * The block digests a disk entry records, read from `dir` and checked against the manifest's
 * digest of the whole disk: `VERIFY_FAILED` when they differ, `ARCHIVE_INVALID` when the disk
 * records none or they do not fit its size.
 */
export const readDiskDigests = async (dir: Dir, disk: ManifestDisk): Promise<BlockDigests> => {
  const d = disk.digest
  if (d === undefined) {
    throw new BackupError('ARCHIVE_INVALID', `${dir.label} records no digests of ${disk.file}`)
  }
  const what = dir.labelOf(d.blocks)
  const data = await dir.readBytes(d.blocks, MAX_BLOCKS_BYTES)
  if (sha256Hex(data) !== d.content) {
    throw new BackupError('VERIFY_FAILED', `${what} does not match the manifest's digest`)
  }
  return BlockDigests.from(disk.size, d.blockSize, data, what)
}

/** SHA-256 of the regular file `name` in `dir` (streamed; archives may be large). */
export const digestOf = async (dir: Dir, name: string, signal?: AbortSignal): Promise<string> => {
  await using file = await dir.pin(name)
  return (await hashFile(file.path, signal)).digest
}

/**
 * Why the manifest of `dir` does not match `manifest.sha256`, or undefined when it does (or the
 * backup predates manifest digests: `legacy`).
 */
export const manifestDigestMismatch = async (
  dir: Dir,
  legacy: boolean,
): Promise<string | undefined> => {
  const line = await dir.tryReadFile(MANIFEST_DIGEST, 4096)
  if (line === undefined) return legacy ? undefined : `${MANIFEST_DIGEST} is missing`
  const want = /^([0-9a-f]{64}) {2}manifest\.json\n?$/.exec(line)?.[1]
  if (want === undefined) return `${MANIFEST_DIGEST} is not a digest line`
  const text = await dir.readBytes(MANIFEST, 4 * 1024 * 1024)
  return sha256Hex(text) === want ? undefined : `${MANIFEST} does not match ${MANIFEST_DIGEST}`
}

/**
 * The files of a backup the manifest's `digests` covers: all but the images (proven through
 * their block digests), the manifest and its digest, and the task log (added after the commit).
 */
export const isDigested = (name: string): boolean =>
  !name.endsWith('.qcow2') &&
  name !== MANIFEST &&
  name !== MANIFEST_DIGEST &&
  name !== 'backup.log' &&
  !name.startsWith('.')

/**
 * SHA-256 of each file of `names` in `dir` that {@link isDigested}. `known`: digests already
 * taken from the bytes as they were written (a container archive hashed in the relay's pass),
 * used instead of reading those files again.
 */
export const fileDigests = async (
  dir: Dir,
  names: readonly string[],
  signal?: AbortSignal,
  known: Readonly<Record<string, string>> = {},
): Promise<Record<string, string>> => {
  const out: Record<string, string> = {}
  for (const name of [...names].sort()) {
    if (isDigested(name)) out[name] = known[name] ?? (await digestOf(dir, name, signal))
  }
  return out
}
