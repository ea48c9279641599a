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
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { z } from 'zod'
import { DEVICE_NAME_RE } from '../../api/names.ts'
import type { ProgressEvent } from '../../api/progress.ts'
import type { ProviderLogFunction } from '../../api/provider.ts'
import { BackupError, noSpaceIn, withSpaceIn } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { openChain } from '../../qemu/chain.ts'
import { chainJson } from '../../qemu/chain.ts'
import { commitImage } from '../../qemu/img.ts'
import { readBackingName } from '../../qemu/qcow2-header.ts'
import { dropBitmapRecord } from './bitmap-record.ts'
import { imageMetadataDigest } from './digests.ts'
import { BACKUP_DIR_RE, JOURNAL, MANIFEST, parseVolname, VOLNAME_RE } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest, writeManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'
import { listGuestBackups, readBackup } from './scan.ts'

const Volname = z.string().regex(VOLNAME_RE)

const JournalSchema = z.strictObject({
  version: z.literal(1),
  /** The backup being removed. */
  volname: Volname,
  merges: z.array(
    z.strictObject({
      /** A dependant of the removed backup. */
      child: Volname,
      device: z.string().regex(DEVICE_NAME_RE),
      /** The removed backup's parent for this device, the child's new parent; null: none. */
      parent: Volname.nullable(),
    }),
  ),
})

type Journal = z.infer<typeof JournalSchema>
type Merge = Journal['merges'][number]

/** A journal is a few KiB; a larger one is not ours. */
const JOURNAL_MAX_BYTES = 1024 * 1024

/**
 * Headroom demanded on top of the dependants' allocated bytes: none. Committing a dependant into
 * its base allocates at most the dependant's data clusters and L2 tables in the base; the
 * dependant's allocated size also counts its header, L1 table and refcount structures (at least
 * three clusters, https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/docs/interop/qcow2.txt),
 * which the base already has: more than the journal and the manifest rewrite take.
 */
const SPACE_MARGIN = 0

const imageOf = (device: string): string => `${device}.qcow2`
const backingOf = (volname: string | null, device: string): string | undefined =>
  volname === null ? undefined : `../${parseVolname(volname).dirName}/${imageOf(device)}`

const inconsistent = (msg: string): BackupError =>
  new BackupError('ARCHIVE_INVALID', `${msg}: the store is inconsistent, nothing was deleted`)

/** Options of {@link freeBackup} and {@link resumeRemoval}. */
export interface FreeOptions {
  log?: ProviderLogFunction | undefined
  signal?: AbortSignal | undefined
  /** Free bytes of the store's file system (injected by tests); default: statfs. */
  freeBytes?: ((guest: Dir) => Promise<number>) | undefined
  /** How far each merge got (`FreeImageOptions.onProgress`). */
  onProgress?: ((ev: ProgressEvent) => void) | undefined
}

/** The removal pending in `guest` (a killed run's journal), if any. */
export const pendingRemoval = async (guest: Dir): Promise<Journal | undefined> => {
  const text = await guest.tryReadFile(JOURNAL, JOURNAL_MAX_BYTES)
  if (text === undefined) return undefined
  try {
    return JournalSchema.parse(JSON.parse(text))
  } catch (e) {
    throw new BackupError(
      'ARCHIVE_INVALID',
      `removal journal ${guest.labelOf(JOURNAL)} is invalid`,
      {
        cause: e,
      },
    )
  }
}

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
  const text = await guest.tryReadFile(JOURNAL, JOURNAL_MAX_BYTES)
  if (text === undefined) return undefined
  let journal: Journal
  try {
    journal = JournalSchema.parse(JSON.parse(text))
  } catch (e) {
    throw new BackupError(
      'ARCHIVE_INVALID',
      `removal journal ${guest.labelOf(JOURNAL)} is invalid`,
      {
        cause: e,
      },
    )
  }
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
  const me = await readBackup(guest, ref)
  if (me === undefined) throw new BackupError('NOT_FOUND', `backup ${ref.volname} does not exist`)
  if ((await guest.lstat(layout.protectedName(ref))) !== undefined) {
    throw new BackupError('PROTECTED', `cannot remove protected backup ${ref.volname}`)
  }
  const merges: Merge[] = []
  /** Guest data bytes each dependant's image holds, by `child device`. */
  const dataBytes = new Map<string, number>()
  const seen = new Set<string>()
  for (const b of await listGuestBackups(guest, ref.vmid, ref.subtype)) {
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

/** Carry out (or resume) a journaled removal; every step may be repeated. */
const runJournal = async (
  layout: StoreLayout,
  guest: Dir,
  journal: Journal,
  opts: FreeOptions,
): Promise<void> => {
  const ref = parseVolname(journal.volname)
  // Bitmaps that continue the doomed backup must not serve an incremental on an older one.
  await dropBitmapRecord(guest, journal.volname)
  {
    await using doomed = await guest.tryOpenDir(ref.dirName)
    if (doomed !== undefined && (await doomed.unlink(MANIFEST))) await doomed.sync()
  }
  for (const m of journal.merges) await mergeOne(guest, ref, m, opts)
  // The children's manifests follow their headers (idempotent).
  const children = [...new Set(journal.merges.map((m) => m.child))]
  for (const child of children) {
    const cref = parseVolname(child)
    await using dir = await guest.openDir(cref.dirName)
    const cm = await readManifest(dir, cref)
    const disks = { ...cm.disks }
    const files = { ...cm.files }
    for (const m of journal.merges.filter((x) => x.child === child)) {
      const disk = disks[m.device]
      if (disk === undefined) throw inconsistent(`${child} lost ${m.device}`)
      // Rewritten by an earlier run of this journal: what it recorded of the merged image
      // stands (recomputing it now would record any damage since as the truth).
      if (disk.parent !== ref.volname) continue
      const { parent: _old, ...rest } = disk
      // The image is the removed backup's, merged: same content, other metadata.
      const merged =
        rest.digest === undefined
          ? rest
          : {
              ...rest,
              digest: { ...rest.digest, metadata: await imageMetadataDigest(dir, disk.file) },
            }
      disks[m.device] = m.parent === null ? merged : { ...merged, parent: m.parent }
      // The merged image is larger than the child's was (it holds the removed backup's
      // clusters too): the manifest's size must follow, or verify fails every merged backup.
      const st = await dir.lstat(disk.file)
      if (st?.isFile() !== true) throw inconsistent(`${child} lost ${disk.file}`)
      files[disk.file] = st.size
    }
    const parents = Object.values(disks)
      .map((d) => d.parent)
      .filter((p): p is string => p !== undefined)
    const { parent: _p, ...rest } = cm
    await writeManifest(dir, {
      ...rest,
      disks,
      files,
      ...(parents[0] ? { parent: parents[0] } : {}),
    })
  }
  await guest.removeTree(ref.dirName)
  await guest.unlink(layout.notesName(ref))
  await guest.unlink(layout.verifyName(ref))
  await guest.removeTree(layout.failedName(ref))
  await guest.unlink(JOURNAL)
  await guest.sync()
}

/** Merge the removed backup's image of one device into its dependant (steps 4 and 5). */
const mergeOne = async (guest: Dir, ref: VolumeRef, m: Merge, opts: FreeOptions): Promise<void> => {
  const file = imageOf(m.device)
  const cref = parseVolname(m.child)
  await using child = await guest.openDir(cref.dirName)
  await using doomed = await guest.tryOpenDir(ref.dirName)
  const chainOpts = { dirName: BACKUP_DIR_RE, signal: opts.signal }
  if (doomed === undefined || (await doomed.lstat(file)) === undefined) {
    // Renamed already: the child's image must now build on the new parent.
    const chain = await openChain(guest, cref.dirName, file, chainOpts).catch((e: unknown) => {
      throw new BackupError(
        'ARCHIVE_INVALID',
        `the image of ${m.child} ${m.device} is neither merged nor mergeable: the store is inconsistent, nothing was deleted`,
        { cause: e },
      )
    })
    await using _chain = chain
    if (chain.links[0]?.backing !== backingOf(m.parent, m.device)) {
      throw inconsistent(`the image of ${m.child} ${m.device} is neither merged nor mergeable`)
    }
    return
  }
  {
    await using chain = await openChain(guest, cref.dirName, file, chainOpts)
    const [top, base] = chain.links
    if (
      top?.backing !== backingOf(ref.volname, m.device) ||
      base?.dirName !== ref.dirName ||
      base.backing !== backingOf(m.parent, m.device)
    ) {
      throw inconsistent(`the chain of ${m.child} ${m.device} does not match the removal`)
    }
    opts.log?.('info', `merging ${ref.volname} ${m.device} into ${m.child}`, {
      volname: ref.volname,
      device: m.device,
      child: m.child,
    })
    const { onProgress } = opts
    // What it writes at most: the top image's allocated bytes (see planRemoval).
    const total = top?.allocated ?? 0
    const item = `${m.child} ${m.device}`
    await commitImage(
      chainJson(chain.links),
      opts.signal,
      onProgress &&
        ((f) => {
          onProgress({ item, done: Math.round(f * total), total })
        }),
    )
    const fh = await open(base.path, constants.O_RDONLY)
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  }
  await doomed.rename(file, file, child)
  await child.sync()
  await doomed.sync()
}
