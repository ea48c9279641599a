/** The names of a container backup's archive files (no I/O). */
import type { CompressionType } from '../../api/provider.ts'
import { FRAMES_FILE } from '../../archive/zstd-frames.ts'

export { FRAMES_FILE }

/** The archive file of each container backup mode and compression. */
export const ARCHIVE_FILES = {
  tar: 'archive.tar',
  zstd: 'archive.tar.zst',
  gzip: 'archive.tar.gz',
  lzo: 'archive.tar.lzo',
  squashfs: 'archive.sqfs',
} as const

/** A container archive's file name. */
export type ArchiveFileName = (typeof ARCHIVE_FILES)[keyof typeof ARCHIVE_FILES]

/** Every name a container archive has. */
export const ARCHIVE_FILE_NAMES = Object.values(ARCHIVE_FILES)

/** The members file beside a tar archive (one JSON line per member, see `tar-members.ts`). */
export const MEMBERS_FILE = 'archive.members'

/**
 * The POSIX ACLs of the tree beside a squashfs archive (`getfacl` text, see
 * `archive/squashfs-acls.ts`): squashfs cannot store them.
 */
export const ACLS_FILE = 'archive.acls'

/** The file name of an archive of `mode`, compressed as `compress` (tar only). */
export const archiveFileOf = (
  mode: 'tar' | 'squashfs',
  compress: CompressionType,
): ArchiveFileName =>
  mode === 'squashfs'
    ? ARCHIVE_FILES.squashfs
    : ARCHIVE_FILES[compress === 'none' ? 'tar' : compress]
