/**
 * The public contracts of guestbackup for third-party providers: import from
 * `guestbackup/api`.
 */
export type * from './progress.ts'
export type * from './provider.ts'
export type * from './storage.ts'
export type * from './idmap.ts'
export { GUEST_TYPES } from './provider.ts'
export { ARCHIVE_NAME_RE, isValidArchiveName } from './names.ts'
