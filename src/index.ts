/**
 * guestbackup as a library: the provider contracts, the directory provider, the host side that
 * drives providers, and the NBD and QMP clients.
 */
export * from './api/index.ts'
export { BackupError, NbdServerError, QmpCommandError, isBackupError } from './errors.ts'
export type { ErrorCode } from './errors.ts'
export { directoryPlugin } from './provider/directory/plugin.ts'
export { DirectoryStorage } from './provider/directory/storage.ts'
export { DirectoryProvider } from './provider/directory/provider.ts'
export { initStore, openStore } from './provider/directory/store.ts'
export { runBackupJob } from './host/runner.ts'
export type { Guest, GuestResult, JobOptions } from './host/runner.ts'
export { restoreBackup } from './host/restore.ts'
export { NbdClient } from './nbd/client.ts'
export { QmpClient } from './qmp/client.ts'
