/**
 * The root-side metadata walk of a container backup (archive/tree-size.ts: lstat only, never
 * opens a file), run beside the archiver: the progress total of the archive, and, for an
 * unprivileged container, the entries owned by ids outside its map.
 */
import type { IdMap } from '../../api/idmap.ts'
import { mapToCt } from '../../api/idmap-parse.ts'
import type { ProgressInfo } from '../../api/progress.ts'
import type { ContainerBackupInfo, ProviderLogFunction } from '../../api/provider.ts'
import { estimateTarBytes } from '../../archive/tree-size.ts'

/** The owner a kernel shows for an id outside a user namespace's map (user_namespaces(7)). */
export const OVERFLOW_ID = 65534

/** Entries owned outside the map: how many, and the first one seen. */
export interface OutsideMap {
  count: number
  first?: { path: string; uid: number; gid: number }
}

/** The warning for {@link OutsideMap} entries, or `undefined` when there are none. */
export const outsideMapWarning = (o: OutsideMap): string | undefined =>
  o.first === undefined
    ? undefined
    : `${o.count} entries are owned by ids outside the container's id map (first: ` +
      `${o.first.path === '' ? '.' : `./${o.first.path}`} uid ${o.first.uid} gid ${o.first.gid}): ` +
      `archived as owned by nobody (${OVERFLOW_ID}), as the container sees them`

/** The walk, started; `end` reports the archive's final size. */
export interface ArchiveWalk {
  /** Bytes of the archive written so far (reported once the walk's total is known). */
  update: (done: number) => void
  /** Waits for the walk, reports `size` (default: the best known) as done and total. */
  end: (size?: number) => Promise<void>
  /** The walk's result (settles when it ends; never rejects). */
  outside: Promise<OutsideMap>
}

/** Whether host ids `uid`, `gid` both appear inside the namespace of `map`. */
const inside = (map: IdMap, uid: number, gid: number): boolean =>
  mapToCt(map, 'u', uid) !== undefined && mapToCt(map, 'g', gid) !== undefined

/**
 * Start the walk when the host asked for progress or the container is unprivileged; without
 * either, `undefined`. Progress is the item `archive`: nothing is reported until the walk's
 * total is known, then the bytes written against it.
 */
export const startArchiveWalk = (
  info: ContainerBackupInfo & ProgressInfo,
  excludes: readonly string[],
  log: ProviderLogFunction,
  begin: Promise<unknown> = Promise.resolve(),
): ArchiveWalk | undefined => {
  const onProgress = info.onProgress
  const map = info.idMap
  if (onProgress === undefined && map === undefined) return undefined
  const outside: OutsideMap = { count: 0 }
  let total: number | undefined
  let last = 0
  // After `begin`: the walk's synchronous slices would hold up the archiver's set-up otherwise.
  const walked = begin
    .then(() =>
      estimateTarBytes({
        directory: info.directory,
        sources: info.sources,
        excludes,
        signal: info.signal,
        ...(map === undefined
          ? {}
          : {
              onEntry: (path: string, st: { uid: number; gid: number }) => {
                if (inside(map, st.uid, st.gid)) return
                outside.count++
                outside.first ??= { path, uid: st.uid, gid: st.gid }
              },
            }),
      }),
    )
    .then(
      (t) => {
        total = t
        onProgress?.({ item: 'archive', done: last, total: Math.max(t, last) })
        const w = outsideMapWarning(outside)
        if (w !== undefined) log('warn', w)
        return outside
      },
      // The walk only estimates: tar reports what it could not read.
      () => outside,
    )
  return {
    update: (done) => {
      last = done
      if (total !== undefined) onProgress?.({ item: 'archive', done, total: Math.max(total, done) })
    },
    end: async (size) => {
      await walked
      const s = size ?? Math.max(total ?? 0, last)
      onProgress?.({ item: 'archive', done: s, total: s })
    },
    outside: walked,
  }
}
