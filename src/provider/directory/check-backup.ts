/**
 * The per-backup half of `check` (check.ts): whether a committed backup's files match its
 * manifest, and whether each disk's image chain is what the manifest says and still opens
 * (openChain: never by header names). Cheap by design: the manifest's own digest and the small
 * files' digests are checked, images and archives are not read (that is `verify`).
 */
import { toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { openChain } from '../../qemu/chain.ts'
import { digestOf, isDigested, manifestDigestMismatch, readDiskDigests } from './digests.ts'
import { forceFull } from './incremental.ts'
import { BACKUP_DIR_RE, MANIFEST, parseVolname } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { MANIFEST_DIGEST, readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'

/** What is wrong with one backup, by finding kind. */
export interface BackupProblems {
  /** Undefined when the backup has no manifest at all (incomplete). */
  manifest: Manifest | undefined
  mismatch: string[]
  chain: string[]
}

/** Quarantine names: `<type>-<time>.broken[.<n>]`, never listed (not a backup directory). */
export const QUARANTINE_RE = /^(qemu|lxc)-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\.broken(\.\d+)?$/

/** Entries a committed backup directory holds beside the files its manifest lists. */
const OWN = new Set([MANIFEST, MANIFEST_DIGEST, 'backup.log'])

/**
 * Check the committed backup `ref` (its directory is `dir`) against its manifest; `usable` maps
 * the backups already checked (older ones) to true when they passed, false when they did not.
 */
export const checkBackup = async (
  guest: Dir,
  dir: Dir,
  ref: VolumeRef,
  usable: ReadonlyMap<string, boolean>,
  signal: AbortSignal | undefined,
): Promise<BackupProblems> => {
  const out: BackupProblems = { manifest: undefined, mismatch: [], chain: [] }
  try {
    out.manifest = await readManifest(dir, ref)
  } catch (e) {
    out.mismatch.push(toBackupError(e).message)
    return out
  }
  const m = out.manifest
  const digestWhy = await manifestDigestMismatch(dir, m.version === 1).catch(
    (e: unknown) => `${MANIFEST_DIGEST} is unreadable (${toBackupError(e).message})`,
  )
  if (digestWhy !== undefined) out.mismatch.push(digestWhy)
  out.mismatch.push(...(await fileProblems(dir, m, signal)))
  for (const [device, disk] of Object.entries(m.disks ?? {})) {
    if (disk.digest !== undefined && (await dir.lstat(disk.digest.blocks))?.isFile() === true) {
      try {
        await readDiskDigests(dir, disk)
      } catch (e) {
        out.mismatch.push(toBackupError(e).message)
      }
    }
    out.chain.push(...(await chainProblems(guest, ref, device, disk, usable, signal)))
    if (signal?.aborted === true) signal.throwIfAborted()
  }
  if (m.parent !== undefined && usable.get(m.parent) !== true && out.chain.length === 0) {
    out.chain.push(parentGone(m.parent, usable))
  }
  return out
}

const parentGone = (parent: string, usable: ReadonlyMap<string, boolean>): string =>
  usable.has(parent)
    ? `it builds on ${parent}, which is unusable`
    : `it builds on ${parent}, which no longer exists`

/** Files listed but missing, of another size or digest, and digests of unlisted files. */
const fileProblems = async (
  dir: Dir,
  m: Manifest,
  signal: AbortSignal | undefined,
): Promise<string[]> => {
  const out: string[] = []
  const images = new Set(Object.values(m.disks ?? {}).map((d) => d.file))
  for (const [name, size] of Object.entries(m.files)) {
    const st = await dir.lstat(name)
    if (st === undefined) out.push(`${name} is listed by the manifest but missing`)
    else if (!st.isFile()) out.push(`${name} is not a regular file`)
    // A merge replaces an image by its base's (same content): its size is not the recorded one.
    else if (!images.has(name) && st.size !== size) {
      out.push(`${name} has ${st.size} bytes, the manifest says ${size}`)
    }
  }
  for (const file of images) {
    if (m.files[file] === undefined) out.push(`the manifest's disk image ${file} is not listed`)
  }
  if (m.digests === undefined) return out
  const blocks = new Set(Object.values(m.disks ?? {}).map((d) => d.digest?.blocks))
  for (const name of Object.keys(m.files)) {
    if (isDigested(name) && m.digests[name] === undefined) out.push(`${name} has no digest`)
  }
  for (const [name, digest] of Object.entries(m.digests)) {
    if (m.files[name] === undefined) {
      out.push(`the manifest has a digest of ${name}, which it does not list`)
      continue
    }
    // Archives are read in full by `verify`, not here; block digests are checked with the disk.
    if (name === m.container?.file || blocks.has(name)) continue
    if ((await dir.lstat(name))?.isFile() !== true) continue
    const actual = await digestOf(dir, name, signal).catch(() => undefined)
    if (actual !== digest) out.push(`${name} does not match its digest`)
  }
  return out
}

/** Why the image of `device` does not build on what the manifest says, or cannot be opened. */
const chainProblems = async (
  guest: Dir,
  ref: VolumeRef,
  device: string,
  { parent, file }: { parent?: string | undefined; file: string },
  usable: ReadonlyMap<string, boolean>,
  signal: AbortSignal | undefined,
): Promise<string[]> => {
  if (parent !== undefined && usable.get(parent) !== true) {
    return [`${device}: ${parentGone(parent, usable)}`]
  }
  const expected = parent === undefined ? undefined : `../${parseVolname(parent).dirName}/${file}`
  try {
    await using chain = await openChain(guest, ref.dirName, file, {
      dirName: BACKUP_DIR_RE,
      signal,
    })
    const backing = chain.links[0]?.backing
    if (backing !== expected) {
      return [
        `${device}: the image builds on ${backing ?? 'nothing'}, the manifest says ${expected ?? 'nothing'}`,
      ]
    }
  } catch (e) {
    return [`${device}: ${toBackupError(e).message}`]
  }
  return []
}

/** Files of a committed backup directory that its manifest does not account for. */
export const unlisted = async (dir: Dir, m: Manifest): Promise<string[]> =>
  (await dir.list())
    .map((e) => e.name)
    .filter((name) => !OWN.has(name) && m.files[name] === undefined)

/**
 * Set the backup `ref` aside: its directory is renamed to `<dir>.broken` (or `.broken.<n>`),
 * which `list`, restore and incrementals never see, with its notes and protection moved into
 * it; nothing is deleted. A VM's next backup is forced full. Returns the new name.
 */
export const quarantine = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
  why: string,
): Promise<string> => {
  let name = `${ref.dirName}.broken`
  for (let n = 2; (await guest.lstat(name)) !== undefined; n++) name = `${ref.dirName}.broken.${n}`
  await guest.rename(ref.dirName, name)
  {
    await using q = await guest.openDir(name)
    for (const attr of [layout.notesName(ref), layout.protectedName(ref)]) {
      if ((await guest.lstat(attr))?.isFile() === true) await guest.rename(attr, attr, q)
    }
    await q.sync()
  }
  if (ref.subtype === 'qemu') await forceFull(guest, `${ref.volname} was set aside: ${why}`)
  await guest.sync()
  return name
}
