/**
 * Creating and opening a directory store. `guestbackup init` writes the store file; every other
 * command opens the store through it, so an uninitialised directory is refused clearly.
 */
import { mkdir } from 'node:fs/promises'
import { randomUUID } from 'node:crypto'
import { basename, resolve } from 'node:path'
import type * as z from 'zod'
import { BackupError } from '../../errors.ts'
import { Dir } from '../../io/beneath.ts'
import type { LockPolicy } from '../../io/lock.ts'
import { StoreLayout } from './layout.ts'
import {
  NEW_STORE_OPTIONS,
  parseStoreOptions,
  STORE_FILE,
  STORE_ID_RE,
  STORE_VERSION,
  StoreFileSchema,
} from './options.ts'
import type { StoreOptions, StoreOptionsInput } from './options.ts'
import { DirectoryStorage } from './storage.ts'

/**
 * Initialise a store at `path` (created if missing). Re-running `init` on an existing store
 * updates the given options and keeps the others.
 */
export const initStore = async (
  path: string,
  options: Omit<StoreOptionsInput, 'path'>,
  id?: string,
): Promise<{ id: string; uuid: string; options: StoreOptions }> => {
  const root = resolve(path)
  // A new store starts from NEW_STORE_OPTIONS; an existing one keeps what its file says.
  let previous: Partial<StoreOptionsInput> = NEW_STORE_OPTIONS
  let previousId: string | undefined
  let uuid: string = randomUUID()
  try {
    const file = await readStoreFile(root)
    previous = file.options
    previousId = file.id
    // The identity never changes; a store made before it existed keeps its first id as key.
    uuid = file.uuid ?? file.id
  } catch (e) {
    if (!(e instanceof BackupError && e.code === 'STORE_INVALID' && e.details?.['missing'])) {
      throw e
    }
  }
  const opts = parseStoreOptions({ ...previous, ...options, path: root })
  let dir: Dir
  try {
    await mkdir(root, { recursive: true, mode: 0o700 })
    dir = await Dir.open(root)
  } catch (e) {
    throw new BackupError('STORE_INVALID', `cannot create store directory ${root}`, { cause: e })
  }
  await using _dir = dir
  const storeId = id ?? previousId ?? defaultStoreId(root)
  if (!STORE_ID_RE.test(storeId)) {
    throw new BackupError('CONFIG_INVALID', `invalid store id '${storeId}' ([a-z][a-z0-9._-]*)`)
  }
  const file = { version: STORE_VERSION, type: 'dir' as const, id: storeId, uuid, options: opts }
  await dir.writeFileAtomic(STORE_FILE, `${JSON.stringify(file, null, 2)}\n`)
  return { id: storeId, uuid, options: opts }
}

/** True if `path` holds a store file (a readable one or not: `init` refuses to overwrite junk). */
export const isStore = async (path: string): Promise<boolean> => {
  try {
    await readStoreFile(resolve(path))
    return true
  } catch (e) {
    if (e instanceof BackupError && e.code === 'STORE_INVALID' && e.details?.['missing']) {
      return false
    }
    return true
  }
}

/** A store id from the directory name: `/srv/Backups 1` -> `backups-1`. */
export const defaultStoreId = (root: string): string => {
  const base = basename(root)
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .slice(0, 60)
  return /^[a-z]/.test(base) ? base : `store-${base}`.replace(/-+$/, '')
}

/** The store file is a few hundred bytes. */
const STORE_FILE_MAX_BYTES = 64 * 1024

const readStoreFile = async (root: string): Promise<z.infer<typeof StoreFileSchema>> => {
  const notStore = (e: unknown): BackupError =>
    new BackupError(
      'STORE_INVALID',
      `${root} is not a guestbackup store (run 'guestbackup init ${root}' first)`,
      { cause: e, details: { missing: true } },
    )
  let text: string | undefined
  try {
    await using dir = await Dir.open(root)
    text = await dir.tryReadFile(STORE_FILE, STORE_FILE_MAX_BYTES)
  } catch (e) {
    if (e instanceof BackupError && e.code === 'UNSAFE_PATH') {
      throw new BackupError('STORE_INVALID', `store file ${STORE_FILE} is unusable: ${e.message}`, {
        cause: e,
      })
    }
    throw notStore(e)
  }
  if (text === undefined) throw notStore(undefined)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new BackupError('STORE_INVALID', `store file ${STORE_FILE} is corrupt`, { cause: e })
  }
  const r = StoreFileSchema.safeParse(json)
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || 'file'}: ${i.message}`)
    throw new BackupError('STORE_INVALID', `store file is invalid: ${issues.join('; ')}`)
  }
  return r.data
}

/**
 * Open an initialised store; `STORE_INVALID` if `path` is not one. `lock`: how its commands
 * wait for guest locks (default: not at all).
 */
export const openStore = async (path: string, lock: LockPolicy = {}): Promise<DirectoryStorage> => {
  const root = resolve(path)
  const file = await readStoreFile(root)
  // The store may have been moved: its location is where it was opened, not where it was made.
  const options = { ...file.options, path: root }
  return new DirectoryStorage(new StoreLayout(root), options, file.id, file.uuid ?? file.id, lock)
}
