/**
 * Freeing a backup that newer backups build on, crash-safe at every instant.
 *
 * A removed base P with a dependant C (C's qcow2 has P's image as backing) is merged without
 * ever changing the guest view of a listed backup:
 * 1. the plan is checked against the qcow2 headers (C's header must name P, P's must name P's
 *    parent G) and the free space, before anything is written;
 * 2. a journal naming P, every (C, device) to merge and the new parents is written durably
 *    into the guest directory; from now on the removal is completed by whoever runs next;
 * 3. P's manifest is removed: P is no longer listed (nothing reads P except through C);
 * 4. `qemu-img commit -d` writes C's clusters into P's image: C masks exactly those clusters,
 *    so C's view (and that of C's own dependants) is the same before, during and after;
 * 5. P's image, now holding C's view over G, is fsynced and renamed over C's image: one atomic
 *    step between two images with the same guest view (the relative backing `../G/…` resolves
 *    the same from both sibling directories);
 * 6. C's manifest is rewritten with its new parent, then P's directory and the journal go.
 * A kill at any point leaves the journal; the next command taking the guest lock resumes it:
 * step 4 is repeatable while P's image exists, and once it is gone C's header must already name
 * G, or the store is inconsistent and nothing is deleted. Only C's clusters are written, so the
 * merge needs at most C's size in free space (checked first).
 *
 * Why C goes into P and never P into C, even when P holds less than C: copying P's clusters not
 * masked by C into C writes C's file while C is listed. Its guest view would not change, but its
 * bytes would (its size and qcow2 metadata digest in its manifest, what `check` and `verify`
 * compare, and its header's backing name, rewritten in place without a rename), and a restore
 * that holds C open meanwhile would meet a writer on a listed image. Building that result in a
 * new file beside C instead (then rename over C) must copy C's clusters as well, so it writes
 * more than committing C into P, never less (no reflinks on ext4). And the common removal, prune
 * dropping the oldest backup (a full one) under its first incremental, is already the case where
 * C is the smaller side.
 */
import { BackupError, noSpaceIn, withSpaceIn } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { openChain } from '../../qemu/chain.ts'
import { readBackingName } from '../../qemu/qcow2-header.ts'
import { BACKUP_DIR_RE, JOURNAL, parseVolname } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import type { Manifest } from './manifest.ts'
import { backingOf, imageOf, inconsistent, readJournal, runJournal } from './merge-journal.ts'
import type { FreeOptions, Journal, Merge } from './merge-journal.ts'
import { listGuestBackups } from './scan.ts'

export type { FreeOptions } from './merge-journal.ts'

/**
 * Headroom demanded on top of the dependants' allocated bytes: none. Committing a dependant into
 * its base allocates at most the dependant's data clusters and L2 tables in the base; the
 * dependant's allocated size also counts its header, L1 table and refcount structures (at least
 * three clusters, https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/docs/interop/qcow2.txt),
 * which the base already has: more than the journal and the manifest rewrite take.
 */
const SPACE_MARGIN = 0

/** The removal pending in `guest` (a killed run's journal), if any. */
export const pendingRemoval = (guest: Dir): Promise<Journal | undefined> => readJournal(guest)

/**
 * The parent `manifest` will have once the pending removal `journal` is complete (what `list`
 * shows while a removal waits to be resumed).
 */
export const parentAfter = (
  journal: Journal | undefined,
  volname: string,
  manifest: Manifest,
): string | undefined => {
  if (journal === undefined || manifest.parent !== journal.volname) return manifest.parent
  const parents = Object.entries(manifest.disks ?? {}).map(([device, d]) =>
    d.parent === journal.volname
      ? (journal.merges.find((m) => m.child === volname && m.device === device)?.parent ??
        undefined)
      : d.parent,
  )
  return parents.find((p): p is string => typeof p === 'string')
}

/**
 * Complete a removal a killed run left in `guest` (its journal), if any. The caller holds the
 * guest lock. Returns the volume name that was removed, if there was one.
 */
export const resumeRemoval = async (
  layout: StoreLayout,
  guest: Dir,
  opts: FreeOptions = {},
): Promise<string | undefined> => {
  const journal = await readJournal(guest)
  if (journal === undefined) return undefined
  opts.log?.('info', `completing the interrupted removal of ${journal.volname}`)
  await withSpaceIn('store', layout.root, () => runJournal(layout, guest, journal, opts))
  return journal.volname
}

/**
 * One merge a removal would do, with the bytes it writes at most: the dependant's allocated
 * size, plus its data bytes when its clusters are compressed (they are written out whole).
 */
export interface PlannedMerge {
  child: string
  device: string
  parent: string | null
  bytes: number
}

/**
 * Plan the removal of `ref` from the guest directory `guest` without changing anything: the
 * merges into its dependants and what each writes, after checking the manifests against the
 * qcow2 headers. `NOT_FOUND`, `PROTECTED`, or `ARCHIVE_INVALID` for an inconsistent store.
 */
export const planRemoval = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
  opts: FreeOptions = {},
): Promise<PlannedMerge[]> => {
  // One reading of the guest's backups serves both the removed one and its dependants.
  const backups = await listGuestBackups(guest, ref.vmid, ref.subtype)
  const me = backups.find((b) => b.ref.volname === ref.volname)
  if (me === undefined) throw new BackupError('NOT_FOUND', `backup ${ref.volname} does not exist`)
  if ((await guest.lstat(layout.protectedName(ref))) !== undefined) {
    throw new BackupError('PROTECTED', `cannot remove protected backup ${ref.volname}`)
  }
  const merges: Merge[] = []
  /** Guest data bytes each dependant's image holds, by `child device`. */
  const dataBytes = new Map<string, number>()
  const seen = new Set<string>()
  for (const b of backups) {
    if (b.manifest === undefined && b.ref.ctime > ref.ctime) {
      throw inconsistent(`cannot tell whether ${b.ref.volname} (unreadable manifest) builds on it`)
    }
    for (const [device, disk] of Object.entries(b.manifest?.disks ?? {})) {
      if (disk.parent !== ref.volname) continue
      const own = me.manifest?.disks?.[device]
      if (own === undefined) {
        throw inconsistent(`${b.ref.volname} builds ${device} on ${ref.volname}, which lacks it`)
      }
      // guestbackup bases at most one backup on another per disk (the next incremental).
      if (seen.has(device)) {
        throw inconsistent(`several backups build ${device} on ${ref.volname}`)
      }
      seen.add(device)
      merges.push({ child: b.ref.volname, device, parent: own.parent ?? null })
      dataBytes.set(`${b.ref.volname} ${device}`, disk.dataBytes)
    }
  }
  await assertNoHiddenDependant(guest, ref, merges)
  const planned: PlannedMerge[] = []
  for (const m of merges) {
    await using chain = await openChain(guest, parseVolname(m.child).dirName, imageOf(m.device), {
      dirName: BACKUP_DIR_RE,
      signal: opts.signal,
    })
    const [top, base] = chain.links
    if (top === undefined || top.backing !== backingOf(ref.volname, m.device)) {
      throw inconsistent(`the image of ${m.child} ${m.device} does not build on ${ref.volname}`)
    }
    if (base?.backing !== backingOf(m.parent, m.device)) {
      throw inconsistent(`the image of ${ref.volname} ${m.device} does not match its manifest`)
    }
    // qemu-img commit writes a compressed image's clusters uncompressed: its data bytes (whole
    // clusters, see src/qemu/compress.ts) on top of the L2 tables its allocated size bounds.
    const compressed = top.compressionType === 'zstd'
    const data = compressed ? (dataBytes.get(`${m.child} ${m.device}`) ?? 0) : 0
    planned.push({ ...m, bytes: top.allocated + data })
  }
  return planned
}

/**
 * Free the backup `ref` of the locked guest directory `guest`, merging it first into the
 * backups that build on it. `NOT_FOUND` if it does not exist, `PROTECTED` if protected,
 * `NO_SPACE` (before anything is written) if the merge cannot fit. Returns the merges done (none
 * when it completed an interrupted removal of `ref`).
 */
export const freeBackup = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
  opts: FreeOptions = {},
): Promise<PlannedMerge[]> => {
  // A killed `remove` of this very backup, run again, finishes it: that is success.
  if ((await resumeRemoval(layout, guest, opts)) === ref.volname) return []
  const planned = await planRemoval(layout, guest, ref, opts)
  const need = planned.reduce((n, m) => n + m.bytes, 0)
  if (planned.length > 0) {
    const free = await (opts.freeBytes ?? ((g: Dir) => g.freeBytes()))(guest)
    if (free < need + SPACE_MARGIN) {
      throw noSpaceIn(
        'store',
        layout.root,
        undefined,
        `removing ${ref.volname} merges ${need} bytes into its dependants, but only ${free} bytes are free`,
      )
    }
  }
  for (const p of planned) {
    opts.onProgress?.({ item: `${p.child} ${p.device}`, done: 0, total: p.bytes })
  }
  const merges = planned.map(({ child, device, parent }) => ({ child, device, parent }))
  const journal: Journal = { version: 1, volname: ref.volname, merges }
  // The check above leaves a margin; should the file system still fill (another writer), the
  // journal stays and the next command completes the removal once there is room.
  await withSpaceIn('store', layout.root, async () => {
    await guest.writeFileAtomic(JOURNAL, `${JSON.stringify(journal, null, 2)}\n`)
    await runJournal(layout, guest, journal, opts)
  })
  return planned
}

/**
 * The manifests are not the only record of who builds on whom: refuse when any image of another
 * backup of the guest names `ref`'s directory in its qcow2 header without a planned merge (a
 * tampered or stale manifest), since deleting `ref` would break that chain.
 */
const assertNoHiddenDependant = async (
  guest: Dir,
  ref: VolumeRef,
  merges: readonly Merge[],
): Promise<void> => {
  const prefix = `../${ref.dirName}/`
  for (const e of await guest.list()) {
    if (!e.isDirectory() || !BACKUP_DIR_RE.test(e.name) || e.name === ref.dirName) continue
    await using dir = await guest.tryOpenDir(e.name).catch(() => undefined)
    if (dir === undefined) continue
    for (const f of await dir.list()) {
      if (!f.isFile() || !f.name.endsWith('.qcow2')) continue
      await using pin = await dir.pin(f.name)
      const backing = await readBackingName(pin.path)
      if (typeof backing !== 'string' || !backing.startsWith(prefix)) continue
      const planned = merges.some(
        (m) => parseVolname(m.child).dirName === e.name && imageOf(m.device) === f.name,
      )
      if (!planned) {
        throw inconsistent(`${e.name}/${f.name} builds on ${ref.volname} but its manifest says not`)
      }
    }
  }
}
