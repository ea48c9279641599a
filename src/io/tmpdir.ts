import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A private (0700) temporary directory removed on dispose. */
export interface TempDir extends AsyncDisposable {
  readonly path: string
  remove(): Promise<void>
}

/** Create a 0700 temporary directory (mkdtemp creates it with mode 0700). */
export const makeTempDir = async (prefix = 'guestbackup-', parent = tmpdir()): Promise<TempDir> => {
  const path = await mkdtemp(join(parent, prefix))
  const remove = (): Promise<void> => rm(path, { recursive: true, force: true })
  return { path, remove, [Symbol.asyncDispose]: remove }
}
