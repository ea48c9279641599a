/**
 * Verifying a backup against the digests recorded when it was taken: the manifest against
 * `manifest.sha256`, every digested file (configs, block digest files, archives) against the
 * manifest, every disk image's qcow2 metadata against its digest, and every disk's content,
 * read through its validated chain (qemu-nbd over the pinned images, never following what
 * the headers say), against its block digests. The first difference is reported: a disk and
 * offset, a file, or why the image cannot be read at all.
 */
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import type { ProviderLogFunction } from '../../api/provider.ts'
import type { Verification } from '../../api/storage.ts'
import { firstDifference, hashDisk } from '../../copy/hash.ts'
import { BASE_ALLOCATION, nbdSource } from '../../copy/nbd.ts'
import { rawFileSource } from '../../copy/raw-file.ts'
import type { BlockDigests } from '../../digest/blocks.ts'
import { BackupError, toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { NbdClient } from '../../nbd/client.ts'
import { walkExtents } from '../../nbd/extents.ts'
import { chainJson, openChain } from '../../qemu/chain.ts'
import { startQemuNbd } from '../../qemu/nbd-server.ts'
import {
  digestOf,
  imageMetadataDigest,
  manifestDigestMismatch,
  readDiskDigests,
} from './digests.ts'
import { BACKUP_DIR_RE, parseVolname } from './layout.ts'
import { proveRestoredTree, verifyArchive } from './verify-archive.ts'
import type { VolumeRef } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest, ManifestDisk } from './manifest.ts'

/** Options of {@link verifyBackup}. */
export interface VerifyOptions {
  signal: AbortSignal
  log?: ProviderLogFunction | undefined
  /** Progress of the disk being read: its name, the position and its size. */
  onProgress?: ((item: string, done: number, total: number) => void) | undefined
  /**
   * Digests of disks verified in this run, by `<volname> <device>`: a disk whose parent is
   * among them is read only where its own image holds data (`qemu:allocation-depth` 1), the
   * rest is its parent's verified content. Disks verified here are added.
   */
  verified?: Map<string, BlockDigests> | undefined
}

/** What {@link verifyBackup} found, and how many bytes it read to find it. */
export type VerifyOutcome =
  (Verification & { bytes: number }) | { state: 'none'; time: string; detail: string; bytes: 0 }

/** Connections reading a disk (as a backup's). */
const READERS = 4

/**
 * Verify the backup `ref` of the guest dir `guest`; the caller holds the guest lock. Never
 * throws for what it finds (that is a `failed` outcome); throws `ABORTED` and errors of the
 * store itself (the guest dir unreadable).
 */
export const verifyBackup = async (
  guest: Dir,
  ref: VolumeRef,
  opts: VerifyOptions,
): Promise<VerifyOutcome> => {
  const time = (): string => new Date().toISOString()
  let bytes = 0
  const failed = (detail: string): VerifyOutcome => ({
    state: 'failed',
    time: time(),
    detail,
    bytes,
  })
  let dir: Dir | undefined
  try {
    dir = await guest.openDir(ref.dirName)
  } catch (e) {
    return failed(`the backup directory cannot be opened: ${toBackupError(e).message}`)
  }
  await using _dir = dir
  let m: Manifest
  try {
    m = await readManifest(dir, ref)
  } catch (e) {
    return failed(toBackupError(e).message)
  }
  if (m.version === 1) {
    // A manifest digest beside a version 1 manifest means it was written since: a version
    // changed by damage must not pass for an old backup.
    const why = await manifestDigestMismatch(dir, true).catch(
      (e: unknown) => toBackupError(e).message,
    )
    if (why !== undefined) return failed(why)
    return { state: 'none', time: time(), detail: 'made before digests were recorded', bytes: 0 }
  }
  try {
    const why = await manifestDigestMismatch(dir, false)
    if (why !== undefined) return failed(why)
    for (const [name, size] of Object.entries(m.files)) {
      const st = await dir.lstat(name)
      if (st?.isFile() !== true) return failed(`${name} is missing`)
      if (st.size !== size) return failed(`${name} has ${st.size} bytes, not ${size}`)
    }
    // The container's archive and member list are checked by verifyArchive, in one read that
    // names the first damaged member.
    const archiveFiles = new Set(
      m.container === undefined ? [] : [m.container.file, m.container.digest?.members],
    )
    for (const [name, want] of Object.entries(m.digests ?? {})) {
      if (archiveFiles.has(name)) continue
      if ((await digestOf(dir, name, opts.signal)) !== want) {
        return failed(`${name} differs from its digest`)
      }
      bytes += m.files[name] ?? 0
    }
    for (const [device, disk] of Object.entries(m.disks ?? {})) {
      const r = await verifyDisk(guest, dir, ref, device, disk, opts)
      bytes += r.bytes
      if (r.detail !== undefined) return failed(r.detail)
    }
    if (m.container !== undefined) {
      const file = m.container.file
      const why = await verifyArchive(dir, m, {
        signal: opts.signal,
        onProgress: (done, total) => opts.onProgress?.(file, done, total),
      })
      if (why !== undefined) return failed(why)
      for (const f of archiveFiles) if (f !== undefined) bytes += m.files[f] ?? 0
    }
  } catch (e) {
    const err = toBackupError(e)
    if (err.code === 'ABORTED') throw err
    return failed(err.message)
  }
  return { state: 'ok', time: time(), bytes }
}

/** Verify one disk: the image's qcow2 metadata, then its content through the chain. */
const verifyDisk = async (
  guest: Dir,
  dir: Dir,
  ref: VolumeRef,
  device: string,
  disk: ManifestDisk,
  opts: VerifyOptions,
): Promise<{ bytes: number; detail?: string }> => {
  const d = disk.digest
  if (d === undefined) return { bytes: 0, detail: `${device} records no digests` }
  let metadata: string
  try {
    metadata = await imageMetadataDigest(dir, disk.file)
  } catch (e) {
    return { bytes: 0, detail: toBackupError(e).message }
  }
  if (metadata !== d.metadata) {
    return { bytes: 0, detail: `${disk.file}: its qcow2 metadata differs from the backup's` }
  }
  const expected = await readDiskDigests(dir, disk)
  const base =
    disk.parent === undefined ? undefined : opts.verified?.get(`${disk.parent} ${device}`)
  let stored: BlockDigests
  let read: number
  try {
    ;({ digests: stored, read } = await hashChain(
      guest,
      ref,
      disk,
      expected.blockSize,
      opts,
      device,
      base,
    ))
  } catch (e) {
    const err = toBackupError(e)
    if (err.code === 'ABORTED') throw err
    return { bytes: 0, detail: `${device}: the image cannot be read: ${err.message}` }
  }
  const bad = firstDifference(expected, stored)
  if (bad === undefined) {
    opts.verified?.set(`${ref.volname} ${device}`, expected)
    return { bytes: read }
  }
  return { bytes: read, detail: blockDetail(device, bad, expected.blockSize) }
}

/** Meta context of QEMU's allocation depth: 1 where the top image holds the data. */
const ALLOCATION_DEPTH = 'qemu:allocation-depth'

const blockDetail = (device: string, block: number, blockSize: number): string =>
  `${device}: the block at offset ${block * blockSize} (${blockSize / (1024 * 1024)} MiB) differs from the backup`

/** The block digests of the disk as its validated chain reads now. */
const hashChain = async (
  guest: Dir,
  ref: VolumeRef,
  disk: ManifestDisk,
  blockSize: number,
  opts: VerifyOptions,
  device: string,
  verifiedParent: BlockDigests | undefined,
): Promise<{ digests: BlockDigests; read: number }> => {
  await using chain = await openChain(guest, ref.dirName, disk.file, {
    dirName: BACKUP_DIR_RE,
    signal: opts.signal,
  })
  // The parent's verified content stands for what this image does not hold only when the
  // chain below it is the parent's own.
  const parentDir = disk.parent === undefined ? undefined : parseVolname(disk.parent).dirName
  const base = chain.links[1]?.dirName === parentDir ? verifiedParent : undefined
  await using server = await startQemuNbd({
    image: chainJson(chain.links),
    readOnly: true,
    shared: READERS + 1,
    allocationDepth: base !== undefined,
    signal: opts.signal,
  })
  const open: NbdClient[] = []
  try {
    const first = await NbdClient.connect({
      path: server.socketPath,
      metaContexts: base === undefined ? [BASE_ALLOCATION] : [BASE_ALLOCATION, ALLOCATION_DEPTH],
      signal: opts.signal,
    })
    open.push(first)
    for (let i = 1; i < READERS; i++) {
      open.push(await NbdClient.connect({ path: server.socketPath, signal: opts.signal }))
    }
    if (first.size !== disk.size) {
      throw new Error(`the image has ${first.size} bytes, the backup ${disk.size}`)
    }
    const source = nbdSource(first, { readers: open })
    let read = 0
    const readData = source.read.bind(source)
    source.read = (offset, length, signal, into) => {
      read += length
      return readData(offset, length, signal, into)
    }
    if (base !== undefined) {
      source.regions = async function* (signal) {
        for await (const e of walkExtents(first, ALLOCATION_DEPTH, { signal })) {
          if (e.flags === 1) yield [e.offset, e.length] as const
        }
      }
    }
    const digests = await hashDisk(source, {
      blockSize,
      base,
      onProgress: (done, total) => opts.onProgress?.(device, done, total),
      signal: opts.signal,
    })
    return { digests, read }
  } finally {
    for (const c of open) await c.close()
  }
}

/**
 * Prove a restored raw disk (a file or block device at `path`) against the backup's digests of
 * `device`: undefined when every block matches, else the first difference.
 */
export const proveRestoredDisk = async (
  dir: Dir,
  device: string,
  disk: ManifestDisk,
  path: string,
  signal: AbortSignal,
): Promise<string | undefined> => {
  const expected = await readDiskDigests(dir, disk)
  await using fh = await open(path, 'r').catch((e: unknown) => {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read'
    throw new BackupError(
      'USAGE',
      `the restored disk ${path} ${why} (--restored names the directory restore --target wrote)`,
      { cause: e },
    )
  })
  const st = await fh.stat()
  const size = st.isBlockDevice() ? disk.size : st.size
  if (size !== disk.size) return `${path} has ${size} bytes, the backup's ${device} ${disk.size}`
  const got = await hashDisk(rawFileSource(fh, size), { blockSize: expected.blockSize, signal })
  const bad = firstDifference(expected, got)
  return bad === undefined ? undefined : blockDetail(device, bad, expected.blockSize)
}

/**
 * Prove a restore of the backup `ref` at `restored` (as the CLI's `restore` writes it: VM disks
 * as `<device>.raw`, a container's tree as `rootfs`) against its digests: undefined when
 * proven, else the first difference.
 */
export const proveRestored = async (
  guest: Dir,
  ref: VolumeRef,
  restored: string,
  signal: AbortSignal,
): Promise<string | undefined> => {
  await using dir = await guest.openDir(ref.dirName)
  const m = await readManifest(dir, ref)
  if (m.version === 1) {
    throw new BackupError('UNSUPPORTED', `${ref.volname} was made before digests were recorded`)
  }
  for (const [device, disk] of Object.entries(m.disks ?? {})) {
    const why = await proveRestoredDisk(dir, device, disk, join(restored, `${device}.raw`), signal)
    if (why !== undefined) return why
  }
  if (m.container !== undefined) {
    // The tree is proven against the member list (tar) or the archive itself (squashfs): both
    // must be intact first.
    const why = await verifyArchive(dir, m, { signal })
    if (why !== undefined) return `the backup itself failed verification: ${why}`
    return await proveRestoredTree(dir, m, join(restored, 'rootfs'), { signal })
  }
  return undefined
}
