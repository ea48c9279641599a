/**
 * The guest-directory half of `check` (check.ts): classify every entry of a guest directory,
 * check its backups oldest first (so a backup building on an unusable one is found unusable
 * too), then the attributes, the bitmap record and the files no manifest lists.
 */
import { revokeAll } from '../../io/acl.ts'
import type { Dir } from '../../io/beneath.ts'
import { readBackingName } from '../../qemu/qcow2-header.ts'
import { BITMAP_RECORD, dropBitmapRecord, readBitmapRecord } from './bitmap-record.ts'
import { checkBackup, QUARANTINE_RE, quarantine, unlisted } from './check-backup.ts'
import {
  ATTR_RE,
  DATA_RE,
  FAILED_RE,
  FORCE_FULL,
  found,
  LOCK,
  PARTIAL_PREFIX,
} from './check-report.ts'
import { REPORT_ONLY, strayEntry } from './check-report.ts'
import type { Ctx } from './check-report.ts'
import { BACKUP_DIR_RE, JOURNAL, MANIFEST } from './layout.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'
import { refOf } from './scan.ts'

/** Work directories of the guest lock protocol (src/io/lock.ts `LEFTOVER`). */
const LOCK_WORK_RE = /^\.lock\.(?:new|stale|released|break)-[0-9a-z.-]+$/

/** Everything in a guest directory but its lock and journal. */
export const checkEntries = async (
  ctx: Ctx,
  layout: StoreLayout,
  guest: Dir,
  vmid: number,
  involved: ReadonlySet<string>,
): Promise<void> => {
  const backups: VolumeRef[] = []
  const attrs: { name: string; dirName: string }[] = []
  let inPlaceLeft = false
  for (const e of await guest.list()) {
    const { name } = e
    const ref = e.isDirectory() ? refOf(vmid, name) : undefined
    const attr = e.isFile() ? ATTR_RE.exec(name) : null
    const failed = e.isDirectory() ? FAILED_RE.exec(name) : null
    if (name === LOCK || name === JOURNAL || (name === FORCE_FULL && e.isFile())) continue
    if (name === BITMAP_RECORD && !e.isDirectory()) continue
    if (ref !== undefined) backups.push(ref)
    else if (e.isDirectory() && QUARANTINE_RE.test(name)) continue
    else if (e.isDirectory() && LOCK_WORK_RE.test(name)) {
      // A lock being built, broken or released (src/io/lock.ts); the next holder removes it.
      await found(
        ctx,
        {
          kind: 'stale-lock',
          path: guest.labelOf(name),
          vmid,
          detail: 'a lock being taken, broken or released, or left so by a killed run',
          repair: 'remove it when nobody holds the guest lock',
        },
        () => guest.removeTree(name),
      )
    } else if (
      e.isDirectory() &&
      name.startsWith(PARTIAL_PREFIX) &&
      refOf(vmid, name.slice(PARTIAL_PREFIX.length))
    ) {
      await found(
        ctx,
        {
          kind: 'stale-work-dir',
          path: guest.labelOf(name),
          vmid,
          detail: 'the work directory of a backup in progress, or of a killed one',
          repair: 'remove it when nobody holds the guest lock',
        },
        () => guest.removeTree(name),
      )
    } else if (failed?.[1] !== undefined && refOf(vmid, failed[1]) !== undefined) {
      await using dir = await guest.openDir(name)
      for (const f of await dir.list()) {
        if (f.name !== 'backup.log' || !f.isFile())
          await strayEntry(ctx, dir, f.name, f.isFile(), vmid)
      }
    } else if (attr?.[1] !== undefined && refOf(vmid, attr[1]) !== undefined) {
      attrs.push({ name, dirName: attr[1] })
    } else if (e.isFile() && name.endsWith('.qcow2')) {
      await found(ctx, {
        kind: 'orphan-image',
        path: guest.labelOf(name),
        vmid,
        detail: 'an image outside any backup',
        repair: REPORT_ONLY,
      })
    } else {
      await strayEntry(ctx, guest, name, e.isFile(), vmid)
    }
  }
  const usable = new Map<string, boolean>()
  const orphans: { dir: string; name: string }[] = []
  for (const ref of backups.sort((a, b) => a.ctime - b.ctime)) {
    ctx.signal?.throwIfAborted()
    if (involved.has(ref.volname)) {
      usable.set(ref.volname, true) // the pending removal's own business
      continue
    }
    const r = await checkOne(ctx, layout, guest, ref, usable)
    usable.set(ref.volname, r.ok)
    if (r.ok) orphans.push(...r.orphans.map((name) => ({ dir: ref.dirName, name })))
    inPlaceLeft ||= r.inPlaceRemoved
  }
  if (inPlaceLeft) await revokeAll(guest.path)
  for (const a of attrs) {
    if ((await guest.lstat(a.dirName)) !== undefined || (await guest.lstat(a.name)) === undefined)
      continue
    await found(
      ctx,
      {
        kind: 'orphan-file',
        path: guest.labelOf(a.name),
        vmid,
        detail: `an attribute of ${a.dirName}, which does not exist`,
        repair: 'remove it',
      },
      () => guest.unlink(a.name),
    )
  }
  await checkBitmapRecord(ctx, guest, vmid, usable)
  await checkOrphans(ctx, guest, vmid, orphans)
}

/** One backup directory: incomplete, mismatching or broken (set aside), with its extra files. */
const checkOne = async (
  ctx: Ctx,
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
  usable: ReadonlyMap<string, boolean>,
): Promise<{ ok: boolean; orphans: string[]; inPlaceRemoved: boolean }> => {
  const path = guest.labelOf(ref.dirName)
  const base = { path, vmid: ref.vmid, volname: ref.volname }
  const aside = `set it aside as ${ref.dirName}.broken (not listed, nothing deleted)${ref.subtype === 'qemu' ? '; the next backup of the guest is full' : ''}`
  let orphans: string[] = []
  let problems
  {
    await using dir = await guest.openDir(ref.dirName)
    if ((await dir.lstat(MANIFEST)) === undefined) {
      // Container backups written in place get their final name first: the next container
      // backup of the guest removes such a leftover (in-place.ts sweepLeftovers); so does this.
      const lxc = ref.subtype === 'lxc'
      const detail =
        'a backup directory without manifest, left incomplete by a killed run (or a manifest deleted by hand)'
      const removed = await found(
        ctx,
        {
          kind: 'incomplete-backup',
          ...base,
          detail,
          repair: lxc ? 'remove it, as the next container backup would' : aside,
        },
        () => (lxc ? guest.removeTree(ref.dirName) : quarantine(layout, guest, ref, 'incomplete')),
      )
      return { ok: false, orphans: [], inPlaceRemoved: lxc && removed }
    }
    problems = await checkBackup(guest, dir, ref, usable, ctx.signal)
    if (problems.manifest !== undefined) orphans = await unlisted(dir, problems.manifest)
  }
  const all = [...problems.mismatch, ...problems.chain]
  if (all.length === 0) return { ok: true, orphans, inPlaceRemoved: false }
  let fixed: boolean | undefined
  const fix = async (): Promise<void> => {
    fixed ??= await quarantine(layout, guest, ref, all.join('; ')).then(() => true)
  }
  if (problems.mismatch.length > 0) {
    await found(
      ctx,
      { kind: 'manifest-mismatch', ...base, detail: problems.mismatch.join('; '), repair: aside },
      fix,
    )
  }
  if (problems.chain.length > 0) {
    await found(
      ctx,
      { kind: 'broken-chain', ...base, detail: problems.chain.join('; '), repair: aside },
      fix,
    )
  }
  return { ok: false, orphans: [], inPlaceRemoved: false }
}

/** Bitmap record entries naming backups that are not (or no longer) usable. */
const checkBitmapRecord = async (
  ctx: Ctx,
  guest: Dir,
  vmid: number,
  usable: ReadonlyMap<string, boolean>,
): Promise<void> => {
  const path = guest.labelOf(BITMAP_RECORD)
  const state = await readBitmapRecord(guest)
  if (state.kind === 'missing') return
  if (state.kind === 'invalid') {
    await found(
      ctx,
      {
        kind: 'stale-bitmap-record',
        path,
        vmid,
        detail: `the bitmap record is unusable (${state.reason}): the next backups are full`,
        repair: 'remove it (the same: the next backup is full)',
      },
      () => guest.unlink(BITMAP_RECORD),
    )
    return
  }
  const stale = new Map<string, string[]>()
  for (const [device, d] of Object.entries(state.record.devices)) {
    if (usable.get(d.volname) !== true)
      stale.set(d.volname, [...(stale.get(d.volname) ?? []), device])
  }
  for (const [volname, devices] of stale) {
    const why = usable.has(volname) ? 'is unusable' : 'no longer exists'
    await found(
      ctx,
      {
        kind: 'stale-bitmap-record',
        path,
        vmid,
        volname,
        detail: `the bitmaps of ${devices.join(', ')} are recorded for ${volname}, which ${why}`,
        repair: 'drop the record (the next backup of the guest is full)',
      },
      () => dropBitmapRecord(guest, volname),
    )
  }
}

/**
 * Files of committed backups that their manifest does not list: removed when guestbackup wrote
 * them and no image of the guest builds on them; anything else is reported only.
 */
const checkOrphans = async (
  ctx: Ctx,
  guest: Dir,
  vmid: number,
  orphans: readonly { dir: string; name: string }[],
): Promise<void> => {
  if (orphans.length === 0) return
  const backings = await backingNames(guest)
  for (const o of orphans) {
    await using dir = await guest.openDir(o.dir)
    const st = await dir.lstat(o.name)
    if (st === undefined) continue
    const path = dir.labelOf(o.name)
    if (!st.isFile() || !DATA_RE.test(o.name)) {
      await strayEntry(ctx, dir, o.name, st.isFile(), vmid)
      continue
    }
    const user = backings.get(`../${o.dir}/${o.name}`)
    const image = o.name.endsWith('.qcow2')
    await found(
      ctx,
      {
        kind: image ? 'orphan-image' : 'orphan-file',
        path,
        vmid,
        detail: `not listed by the manifest of ${o.dir}${user === undefined ? '' : ` (but ${user} builds on it)`}`,
        repair:
          user === undefined
            ? 'remove it'
            : 'none: an image builds on it (check that backup by hand)',
      },
      user === undefined ? () => dir.unlink(o.name) : undefined,
    )
  }
}

/** Backing names in the headers of every image of the guest's backups (set aside ones too). */
const backingNames = async (guest: Dir): Promise<Map<string, string>> => {
  const out = new Map<string, string>()
  for (const e of await guest.list()) {
    if (!e.isDirectory() || !(BACKUP_DIR_RE.test(e.name) || QUARANTINE_RE.test(e.name))) continue
    await using dir = await guest.openDir(e.name)
    for (const f of await dir.list()) {
      if (!f.isFile() || !f.name.endsWith('.qcow2')) continue
      await using pin = await dir.pin(f.name)
      const backing = await readBackingName(pin.path)
      if (typeof backing === 'string') out.set(backing, `${e.name}/${f.name}`)
    }
  }
  return out
}
