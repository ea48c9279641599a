/**
 * The archive of a container backup: a tar archive (uncompressed, or compressed as vzdump's
 * `compress` names it) with its members file, or a squashfs image, with their digests.
 */
import type {
  CompressionType,
  ContainerBackupInfo,
  ProviderLogFunction,
} from '../../api/provider.ts'
import type { ProgressInfo } from '../../api/progress.ts'
import { SQUASHFS_ACL_WARNING, createSquashfs } from '../../archive/squashfs.ts'
import { dumpPosixAcls } from '../../archive/squashfs-acls.ts'
import { createTarArchive } from '../../archive/tar.ts'
import { zstdThreads } from '../../archive/zstd-frames.ts'
import { sha256Hex } from '../../digest/blocks.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { TokenBucket } from '../../io/throttle.ts'
import { UserNamespace } from '../../io/userns.ts'
import { startArchiveWalk } from './ct-walk.ts'
import { ACLS_FILE, FRAMES_FILE, MEMBERS_FILE, archiveFileOf } from './archive-files.ts'
import type { ArchiveFileName } from './archive-files.ts'
import { digestOf } from './digests.ts'

/** What {@link writeContainerArchive} wrote. */
export interface ContainerArchive {
  /** The archive's file name. */
  file: ArchiveFileName
  /** The archiver's warnings. */
  warnings: string[]
  /**
   * SHA-256 of the files written, by name: the archive (tar: hashed in the relay's pass;
   * squashfs: read back once, mksquashfs writes the file itself) and, for tar, the members file
   * (and the frame index of a zstd archive), for squashfs the ACL record.
   */
  digests: Record<string, string>
  /** tar: the members file's name. */
  members?: string
  /** squashfs: the ACL record's name ({@link ACLS_FILE}). */
  acls?: string
  /** zstd: the frame index's name. */
  frames?: string
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`

/**
 * Write the container's archive into `dir`, with its digests (see {@link ContainerArchive}).
 * `compress` applies to tar; squashfs compresses with zstd by itself.
 */
export const writeContainerArchive = async (
  dir: Dir,
  mode: 'tar' | 'squashfs',
  compress: { type: CompressionType; zstdThreads: number },
  excludes: readonly string[],
  info: ContainerBackupInfo & ProgressInfo,
  log: ProviderLogFunction,
): Promise<ContainerArchive> => {
  const file = archiveFileOf(mode, compress.type)
  const output = dir.at(file)
  // As the container's mapped root (pve-container VZDump/LXC.pm runs backup_container in its
  // user namespace): absent on Proxmox, which is in the namespace already.
  await using namespace =
    info.idMap === undefined ? undefined : await UserNamespace.open(info.idMap, info.signal)
  // The walk starts once the archiver runs (its set-up first).
  let archiverStarted = (): void => undefined
  const progress = startArchiveWalk(
    info,
    excludes,
    log,
    new Promise<void>((resolve) => (archiverStarted = resolve)),
  )
  if (mode === 'squashfs') {
    archiverStarted()
    const r = await createSquashfs({
      directory: info.directory,
      excludes,
      output,
      signal: info.signal,
      namespace,
      ...(progress === undefined ? {} : { onBytesRead: progress.update }),
    })
    await progress?.end()
    // As getfacl ran where mksquashfs ran: in the namespace, the ids are the container's view.
    const acls = await dumpPosixAcls({
      directory: info.directory,
      image: output,
      output: dir.at(ACLS_FILE),
      namespace,
      signal: info.signal,
    })
    log('info', `${ACLS_FILE}: POSIX ACLs of ${acls.records} file(s) recorded beside ${file}`)
    return {
      file,
      // The ACLs mksquashfs dropped are in the record.
      warnings: [...r.warnings.filter((w) => w !== SQUASHFS_ACL_WARNING), ...acls.warnings],
      digests: {
        [file]: await digestOf(dir, file, info.signal),
        [ACLS_FILE]: await digestOf(dir, ACLS_FILE, info.signal),
      },
      acls: ACLS_FILE,
    }
  }
  const threads = compress.type === 'zstd' ? zstdThreads(compress.zstdThreads) : 1
  const started = performance.now()
  const r = await createTarArchive({
    directory: info.directory,
    sources: info.sources,
    excludes,
    output,
    members: dir.at(MEMBERS_FILE),
    bandwidth: new TokenBucket({ bytesPerSecond: info.bandwidthLimit }),
    signal: info.signal,
    onBytes: progress?.update,
    onStarted: archiverStarted,
    namespace,
    ...(compress.type === 'none' ? {} : { compress: { type: compress.type, threads } }),
  })
  await progress?.end(r.tarBytes)
  if (r.members === undefined) throw new BackupError('INTERNAL', 'the tar relay wrote no members')
  const digests: Record<string, string> = {
    [file]: r.digest,
    [MEMBERS_FILE]: r.members.digest,
  }
  if (compress.type !== 'none') {
    // vzdump reports the archive's size and the time; a ratio tells what compression bought.
    const secs = (performance.now() - started) / 1000
    const ratio = r.bytes === 0 ? 0 : r.tarBytes / r.bytes
    const how =
      compress.type === 'zstd'
        ? `zstd, ${threads} thread${threads === 1 ? '' : 's'}`
        : compress.type
    log(
      'info',
      `compressed ${mib(r.tarBytes)} to ${mib(r.bytes)} (${how}): ratio ${ratio.toFixed(2)} in ${secs.toFixed(1)}s`,
      {
        tarBytes: r.tarBytes,
        bytes: r.bytes,
        ratio,
      },
    )
  }
  if (r.frames !== undefined) {
    const text = `${JSON.stringify(r.frames)}\n`
    await dir.writeFileAtomic(FRAMES_FILE, text)
    digests[FRAMES_FILE] = sha256Hex(text)
  }
  return {
    file,
    warnings: [...r.warnings],
    digests,
    members: MEMBERS_FILE,
    ...(r.frames === undefined ? {} : { frames: FRAMES_FILE }),
  }
}
