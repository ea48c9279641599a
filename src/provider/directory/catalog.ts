/**
 * The files of a container backup without restoring it (PBS's catalog shell is the model):
 * `ls` and `find` answer from the catalog, and `get` extracts only the members asked for.
 *
 * - tar: the catalog is the members file (`archive.members`, one record per member with its
 *   offset in the tar stream, type, size, mode, owner, mtime), checked against the manifest's
 *   digest before anything is answered. `get` reads only the asked members' byte ranges: of the
 *   file when uncompressed, of the zstd frames holding them (`archive.frames`), or the whole
 *   stream for gzip and lzo, which cannot seek (tar-select.ts).
 * - squashfs: the image mounted with squashfuse; its directory tree is the catalog, and `get`
 *   copies the asked paths out of the mount.
 * Either way the members go through the whole-tree restore's checks into `tar x` in the target.
 */
import { lstat, mkdir, readdir, readlink, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import { mountSquashfs } from '../../archive/squashfs.ts'
import { extractTarMembers, extractTreePaths } from '../../archive/tar-select.ts'
import type { StreamRange } from '../../archive/tar-select.ts'
import type { TarMember, TarMemberType } from '../../archive/tar-members.ts'
import { FrameIndexSchema } from '../../archive/zstd-frames.ts'
import type { FrameIndex } from '../../archive/zstd-frames.ts'
import { BackupError, toBackupError } from '../../errors.ts'
import type { Dir, PinnedFile } from '../../io/beneath.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import { FRAMES_FILE } from './archive-files.ts'
import { digestOf } from './digests.ts'
import { MANIFEST, parseVolname } from './layout.ts'
import type { StoreLayout } from './layout.ts'
import { readManifest } from './manifest.ts'
import type { Manifest } from './manifest.ts'
import { Found, membersFile, readMembers } from './verify-archive.ts'

/** One file of a backup, as `files ls` and `find` show it. */
export interface CatalogEntry {
  /** Relative to the container's root, without `./` (`etc/passwd`). */
  path: string
  type: TarMemberType | 'socket'
  size: number
  mode?: number | undefined
  uid?: number | undefined
  gid?: number | undefined
  mtime?: number | undefined
  link?: string | undefined
}

/** A member's path as the catalog shows it: no leading `./`, no trailing `/`; `''` the root. */
export const catalogPath = (stored: string): string =>
  stored
    .replace(/^(\.\/)+/, '')
    .replace(/\/+$/, '')
    .replace(/^\.$/, '')

/** A path the user gives, normalized like {@link catalogPath}; `USAGE` for `..`. */
export const userPath = (p: string): string => {
  const n = catalogPath(p.replace(/^\/+/, '')).replace(/\/{2,}/g, '/')
  if (n.split('/').includes('..')) throw new BackupError('USAGE', `path ${p} contains ..`)
  return n
}

const parentOf = (p: string): string => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '')

const within = (p: string, dir: string): boolean =>
  dir === '' || p === dir || p.startsWith(`${dir}/`)

/**
 * A `find` glob as a test of catalog paths: `*` and `?` match any characters but `/`, `**`
 * any characters, `[...]` a class; a glob without `/` is matched against the last component
 * (as `find -name`), one with `/` against the whole path.
 */
export const globTest = (glob: string): ((path: string) => boolean) => {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i] ?? ''
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*'
      i++
    } else if (c === '*') re += '[^/]*'
    else if (c === '?') re += '[^/]'
    else if (c === '[') {
      const close = glob.indexOf(']', i + 2)
      if (close < 0) re += '\\['
      else {
        const body = glob
          .slice(i + 1, close)
          .replace(/^!/, '^')
          .replace(/\\/g, '\\\\')
        re += `[${body}]`
        i = close
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, '\\$&')
  }
  const rx = new RegExp(`^${re}$`, 'u')
  const base = !userPath(glob).includes('/')
  return (p) => rx.test(base ? p.slice(p.lastIndexOf('/') + 1) : p)
}

const toEntry = (m: TarMember): CatalogEntry => ({
  path: catalogPath(m.path),
  type: m.type,
  size: m.size,
  mode: m.mode,
  uid: m.uid,
  gid: m.gid,
  mtime: m.mtime,
  link: m.link === undefined ? undefined : m.type === 'hardlink' ? catalogPath(m.link) : m.link,
})

const typeOf = (st: Awaited<ReturnType<typeof lstat>>): CatalogEntry['type'] => {
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'socket'
  return 'file'
}

/** What `get` did. */
export interface GetResult {
  /** Members extracted (directories and their contents count one each). */
  members: number
  /** tar: bytes read from the archive file, and its size. squashfs: not known. */
  bytesRead?: number
  archiveBytes?: number
  archive: string
}

/** An opened container backup's files; `await using` releases the mount of a squashfs. */
export class BackupFiles implements AsyncDisposable {
  readonly #dir: Dir
  readonly #m: Manifest
  readonly #signal: AbortSignal
  /** The squashfs image's mount point, once mounted. */
  #mounted: string | undefined
  /** Releases, last first: mounts, pins, temp dirs. */
  readonly #held: (() => Promise<void>)[] = []

  private constructor(dir: Dir, m: Manifest, signal: AbortSignal) {
    this.#dir = dir
    this.#m = m
    this.#signal = signal
  }

  /**
   * The files of the committed backup `volname` of the store at `layout`: `NOT_FOUND` when there
   * is none, `USAGE` for a VM backup; its manifest is read and checked (`readManifest`).
   */
  static async open(
    layout: StoreLayout,
    volname: string,
    signal: AbortSignal,
  ): Promise<BackupFiles> {
    const ref = parseVolname(volname)
    const missing = (): BackupError =>
      new BackupError('NOT_FOUND', `backup ${volname} does not exist`)
    await using root = await layout.openRoot()
    const guest = await root.tryOpenDir(String(ref.vmid))
    if (guest === undefined) throw missing()
    const dir = await guest.tryOpenDir(ref.dirName).catch(async (e: unknown) => {
      await guest.close()
      throw e
    })
    const close = async (): Promise<void> => {
      await dir?.close()
      await guest.close()
    }
    try {
      if (dir === undefined || (await dir.lstat(MANIFEST)) === undefined) throw missing()
      const m = await readManifest(dir, ref)
      if (m.type !== 'lxc' || m.container === undefined) {
        throw new BackupError(
          'USAGE',
          `${volname} is a VM backup: files works on container backups`,
        )
      }
      const files = new BackupFiles(dir, m, signal)
      files.#held.push(close)
      return files
    } catch (e) {
      await close()
      throw e
    }
  }

  get #c(): NonNullable<Manifest['container']> {
    const c = this.#m.container
    if (c === undefined) throw new BackupError('INTERNAL', 'no container')
    return c
  }

  /** Every entry, in archive order (tar) or depth-first name order (squashfs). */
  async *entries(): AsyncGenerator<CatalogEntry> {
    if (this.#c.format === 'squashfs') {
      yield* this.#walk(await this.#root(), '')
      return
    }
    for await (const m of this.#members()) {
      const e = toEntry(m)
      if (e.path !== '') yield e
    }
  }

  /** The entries directly in `dir` (`''` the root); `NOT_FOUND` when it is no directory. */
  async ls(dir: string): Promise<CatalogEntry[]> {
    const d = userPath(dir)
    const out: CatalogEntry[] = []
    let self: CatalogEntry | undefined
    for await (const e of this.entries()) {
      if (e.path === d) self = e
      else if (parentOf(e.path) === d) out.push(e)
    }
    if (d !== '' && self === undefined)
      throw new BackupError('NOT_FOUND', `${dir}: not in the backup`)
    if (self !== undefined && self.type !== 'dir') return [self]
    return out.sort((a, b) => (a.path < b.path ? -1 : 1))
  }

  /** The entries whose path matches `glob` ({@link globTest}). */
  async find(glob: string): Promise<CatalogEntry[]> {
    const test = globTest(glob)
    const out: CatalogEntry[] = []
    for await (const e of this.entries()) if (test(e.path)) out.push(e)
    return out
  }

  /**
   * Extract `paths` (files, or directories with everything below them) into the existing,
   * empty directory `to`. `NOT_FOUND` (before anything is written) for a path not in the backup.
   */
  async get(paths: readonly string[], to: string): Promise<GetResult> {
    const want = [...new Set(paths.map(userPath))]
    if (want.length === 0 || want.includes('')) {
      throw new BackupError('USAGE', 'name the files to get (the whole tree: use restore)')
    }
    const c = this.#c
    if (c.format === 'squashfs') {
      const root = await this.#root()
      for (const p of want) {
        if ((await lstat(join(root, p)).catch(() => undefined)) === undefined) {
          throw new BackupError('NOT_FOUND', `${p}: not in the backup`)
        }
      }
      const r = await extractTreePaths({ root, paths: want, target: to, signal: this.#signal })
      return { members: r.members, archive: c.file }
    }
    const ranges = await this.#ranges(want)
    await using pin = await this.#dir.pin(c.file)
    const r = await extractTarMembers({
      archive: await this.#named(pin),
      frames: await this.#frames(),
      ranges,
      target: to,
      signal: this.#signal,
    })
    return {
      members: r.members,
      bytesRead: r.bytesRead,
      archiveBytes: r.archiveBytes,
      archive: c.file,
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    let first: unknown
    for (const release of this.#held.splice(0).reverse()) {
      await release().catch((e: unknown) => (first ??= e))
    }
    this.#mounted = undefined
    if (first !== undefined) throw toBackupError(first)
  }

  /** The members file's records, after its digest matched the manifest's. */
  async *#members(): AsyncGenerator<TarMember> {
    const f = await membersFile(this.#dir, this.#m, this.#signal)
    if (f === undefined)
      throw new BackupError('UNSUPPORTED', 'this backup has no catalog (no archive.members)')
    if ('reason' in f)
      throw new BackupError('VERIFY_FAILED', `the catalog cannot be trusted: ${f.reason}`)
    await using pin = await this.#dir.pin(f.name)
    try {
      yield* readMembers(pin.path, f.name)
    } catch (e) {
      if (e instanceof Found) throw new BackupError('ARCHIVE_INVALID', e.message)
      throw e
    }
  }

  /**
   * The byte ranges of the members below `want` and of the targets of their hard links (tar
   * needs the first copy to link to): a member runs to the next member's offset.
   */
  async #ranges(want: readonly string[]): Promise<StreamRange[]> {
    const ranges: StreamRange[] = []
    const found = new Set<string>()
    const targets = new Set<string>()
    const scan = async (pick: (p: string) => boolean): Promise<void> => {
      let open: StreamRange | undefined
      for await (const m of this.#members()) {
        if (open !== undefined) {
          open.end = m.offset
          open = undefined
        }
        const p = catalogPath(m.path)
        if (!pick(p)) continue
        open = { start: m.offset }
        ranges.push(open)
        if (m.type === 'hardlink' && m.link !== undefined) targets.add(catalogPath(m.link))
      }
    }
    await scan((p) => {
      const hit = want.find((w) => within(p, w))
      if (hit !== undefined) found.add(hit)
      return hit !== undefined
    })
    const missing = want.filter((w) => !found.has(w))
    if (missing.length > 0) {
      throw new BackupError('NOT_FOUND', `${missing.join(', ')}: not in the backup`)
    }
    const outside = [...targets].filter((t) => !want.some((w) => within(t, w)))
    if (outside.length > 0) {
      const need = new Set(outside)
      await scan((p) => need.has(p))
    }
    return ranges
  }

  /** The frame index of a seekable zstd archive, checked against the manifest; else undefined. */
  async #frames(): Promise<FrameIndex | undefined> {
    const name = this.#c.digest?.frames
    if (name === undefined) return undefined
    if (name !== FRAMES_FILE) throw new BackupError('ARCHIVE_INVALID', `the manifest names ${name}`)
    const want = this.#m.digests?.[name]
    if (want === undefined || (await digestOf(this.#dir, name, this.#signal)) !== want) {
      throw new BackupError('VERIFY_FAILED', `${name} differs from the backup`)
    }
    const parsed = FrameIndexSchema.safeParse(JSON.parse(await this.#dir.readFile(name, 16 << 20)))
    if (!parsed.success) throw new BackupError('ARCHIVE_INVALID', `${name} is damaged`)
    return parsed.data
  }

  /**
   * The pinned archive under its own name (a private symlink to the pinned file): the
   * decompressor is chosen by the name's suffix.
   */
  async #named(pin: PinnedFile): Promise<string> {
    const tmp = await makeTempDir('guestbackup-files-')
    this.#held.push(() => tmp.remove())
    const link = join(tmp.path, this.#c.file)
    await symlink(pin.path, link)
    return link
  }

  /** The squashfs image mounted (once) with squashfuse: its root. */
  async #root(): Promise<string> {
    if (this.#mounted !== undefined) return this.#mounted
    const pin = await this.#dir.pin(this.#c.file)
    this.#held.push(async () => {
      await pin[Symbol.asyncDispose]()
    })
    const tmp = await makeTempDir('guestbackup-files-')
    this.#held.push(() => tmp.remove())
    const root = join(tmp.path, 'root')
    await mkdir(root)
    const mount = await mountSquashfs(pin.path, root, { signal: this.#signal })
    this.#held.push(async () => {
      await mount[Symbol.asyncDispose]()
    })
    this.#mounted = root
    return root
  }

  /** Depth-first, names sorted; links never followed. */
  async *#walk(root: string, rel: string): AsyncGenerator<CatalogEntry> {
    const names = (await readdir(join(root, rel))).sort()
    for (const name of names) {
      const path = rel === '' ? name : `${rel}/${name}`
      const st = await lstat(join(root, path))
      const type = typeOf(st)
      yield {
        path,
        type,
        size: type === 'file' ? st.size : 0,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: Math.floor(st.mtimeMs / 1000),
        link: type === 'symlink' ? await readlink(join(root, path)) : undefined,
      }
      if (type === 'dir') yield* this.#walk(root, path)
    }
  }
}
