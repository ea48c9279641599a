/**
 * The removal journal of a guest directory (`merge.ts` explains the protocol): its schema, and
 * carrying it out step by step, each step repeatable, so that whoever runs next after a kill
 * completes it.
 */
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import * as z from 'zod'
import { DEVICE_NAME_RE } from '../../api/names.ts'
import type { ProgressEvent } from '../../api/progress.ts'
import type { ProviderLogFunction } from '../../api/provider.ts'
import { BackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { chainJson, openChain } from '../../qemu/chain.ts'
import { commitImage } from '../../qemu/img.ts'
import { dropBitmapRecord } from './bitmap-record.ts'
import { imageMetadataDigest } from './digests.ts'
import { BACKUP_DIR_RE, JOURNAL, MANIFEST, parseVolname, VOLNAME_RE } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { readManifest, writeManifest } from './manifest.ts'

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

/** A removal journal. */
export type Journal = z.infer<typeof JournalSchema>
/** One merge of a journal: a dependant and device of the removed backup. */
export type Merge = Journal['merges'][number]

/** A journal is a few KiB; a larger one is not ours. */
const JOURNAL_MAX_BYTES = 1024 * 1024

/** The image file of a device in a backup directory. */
export const imageOf = (device: string): string => `${device}.qcow2`
/** The backing name an image of `device` has on the backup `volname` (null: none). */
export const backingOf = (volname: string | null, device: string): string | undefined =>
  volname === null ? undefined : `../${parseVolname(volname).dirName}/${imageOf(device)}`

/** The error of a store whose records disagree; nothing was deleted. */
export const inconsistent = (msg: string): BackupError =>
  new BackupError('ARCHIVE_INVALID', `${msg}: the store is inconsistent, nothing was deleted`)

/** Options of `freeBackup` and `resumeRemoval` (merge.ts). */
export interface FreeOptions {
  log?: ProviderLogFunction | undefined
  signal?: AbortSignal | undefined
  /** Free bytes of the store's file system (injected by tests); default: statfs. */
  freeBytes?: ((guest: Dir) => Promise<number>) | undefined
  /** How far each merge got (`FreeImageOptions.onProgress`). */
  onProgress?: ((ev: ProgressEvent) => void) | undefined
}

/** The journal in `guest`, if any; `ARCHIVE_INVALID` when it is not one of ours. */
export const readJournal = async (guest: Dir): Promise<Journal | undefined> => {
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

/** Carry out (or resume) a journaled removal; every step may be repeated. */
export const runJournal = async (
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
