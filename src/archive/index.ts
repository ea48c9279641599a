/** The container archive layer: tar and squashfs archives, exclude patterns, FUSE mounts. */
export {
  LOST_AND_FOUND,
  parseExcludes,
  squashfsExcludeArgs,
  tarExcludeArgs,
  tarPatterns,
} from './excludes.ts'
export { findExcluded } from './exclude-walk.ts'
export type { ExcludeArgs, ExcludeRules, SquashfsExcludes } from './excludes.ts'
export { mountsAt, parseMountInfo, readMounts } from './mountinfo.ts'
export type { MountEntry } from './mountinfo.ts'
export { extractDirectory } from './directory.ts'
export type { ExtractDirectoryOptions } from './directory.ts'
export {
  MKSQUASHFS_MEM,
  SQUASHFS_ACL_WARNING,
  SquashfsMount,
  createSquashfs,
  mountSquashfs,
} from './squashfs.ts'
export type {
  CreateSquashfsOptions,
  CreateSquashfsResult,
  MountSquashfsOptions,
  SquashfuseProgram,
} from './squashfs.ts'
export { SquashfsListingCheck } from './squashfs-check.ts'
export type { SquashfsListingResult } from './squashfs-check.ts'
export { UNSQUASHFS_EXCLUDES, extractSquashfs } from './squashfs-extract.ts'
export type { ExtractSquashfsOptions, ExtractSquashfsResult } from './squashfs-extract.ts'
export { checkTarArchive, decompressorFor } from './tar-check.ts'
export type { TarCheckResult } from './tar-check.ts'
export {
  COMMON_TAR_FLAGS,
  RESTORE_EXTRACT_ARGS,
  RESTORE_TAR_FLAGS,
  createTarArchive,
} from './tar.ts'
export type { CreateTarOptions, CreateTarResult } from './tar.ts'
export { estimateTarBytes } from './tree-size.ts'
export type { TreeSizeOptions } from './tree-size.ts'
export { MemberGate, extractTarArchive } from './tar-extract.ts'
export type { ExtractTarOptions, ExtractTarResult } from './tar-extract.ts'
