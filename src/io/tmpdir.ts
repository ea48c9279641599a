import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { withSpaceIn } from '../errors.ts'
import type { SpacePlace } from '../errors.ts'
import { processAlive } from './daemon.ts'

/** A private (0700) temporary directory removed on dispose. */
export interface TempDir extends AsyncDisposable {
  readonly path: string
  remove(): Promise<void>
}

/**
 * Create a 0700 temporary directory (mkdtemp creates it with mode 0700), named
 * `<prefix><pid>-XXXXXX` so {@link sweepStaleTempDirs} can tell when its owner is gone. A full
 * `parent` fails with `NO_SPACE` naming it as `place` (default: the temp dir).
 */
export const makeTempDir = async (
  prefix = 'guestbackup-',
  parent = tmpdir(),
  place: SpacePlace = 'temp dir',
): Promise<TempDir> => {
  const path = await withSpaceIn(place, parent, () =>
    mkdtemp(join(parent, `${prefix}${process.pid}-`)),
  )
  const remove = (): Promise<void> => rm(path, { recursive: true, force: true })
  return { path, remove, [Symbol.asyncDispose]: remove }
}

/**
 * Remove `guestbackup-*` temp dirs whose creating process no longer runs (a run killed with
 * SIGKILL cannot clean up after itself). Returns the names removed.
 */
export const sweepStaleTempDirs = async (parent = tmpdir()): Promise<string[]> => {
  const removed: string[] = []
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    const m = /^guestbackup-[a-z]+-(?:\d+-)?(\d+)-[A-Za-z0-9]{6}$/.exec(name)
    const pid = Number(m?.[1])
    if (m === null || !Number.isSafeInteger(pid) || pid === process.pid || processAlive(pid))
      continue
    try {
      await rm(join(parent, name), { recursive: true, force: true })
      removed.push(name)
    } catch {
      // Still in use (e.g. a FUSE mount a dead run left): leave it for a later sweep.
    }
  }
  return removed
}
