/** The directory store as a {@link BackupProviderPlugin}, the shape third-party plugins export. */
import type { BackupProviderPlugin } from '../../api/storage.ts'
import { StoreLayout } from './layout.ts'
import { parseStoreOptions } from './options.ts'
import type { StoreOptions } from './options.ts'
import { DirectoryStorage } from './storage.ts'

/** Plugin object of the directory store (type `dir`). */
export const directoryPlugin: BackupProviderPlugin<StoreOptions> = {
  type: 'dir',
  apiVersion: 1,
  parseOptions: (raw) => parseStoreOptions(raw),
  open: (storeId, options) => new DirectoryStorage(new StoreLayout(options.path), options, storeId),
}
