/**
 * A dump of every attribute of a tree that a container restore must keep, to compare two trees
 * with `assert.deepEqual`: names as bytes (latin1 strings, so non-UTF-8 names compare exactly),
 * lstat fields, xattrs (`getfattr -d -m -`, getfattr(1)), POSIX ACLs (`getfacl`, getfacl(1)),
 * hard link groups and sparseness. Nothing is followed through a symlink.
 */
import { execFileSync } from 'node:child_process'
import { lstat, readdir, readlink } from 'node:fs/promises'
import type { Stats } from 'node:fs'

/** One entry of an {@link AttrDump}. */
export interface AttrEntry {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket'
  /** Permission bits with setuid/setgid/sticky, octal. */
  mode: string
  uid: number
  gid: number
  /** Regular files and symlinks: st_size; else 0 (directory sizes depend on the file system). */
  size: number
  /** Whole seconds (squashfs stores no more). */
  mtime: number
  /** Device nodes: `major:minor`. */
  rdev?: string
  /** Symlinks: the target's bytes (latin1). */
  target?: string
  /** xattrs but POSIX ACLs, hex values. */
  xattrs: Record<string, string>
  /** `getfacl -n -E` entries (access and `default:`), only for files with more than the base. */
  acls?: string[]
  /** Regular files with several links: the smallest name of the group. */
  hardlinkGroup?: string
  /** Regular files: fewer bytes allocated (st_blocks × 512) than their size. */
  sparse?: boolean
}

/** Name (latin1 bytes, relative; `.` the root) → entry. */
export type AttrDump = Record<string, AttrEntry>

const typeOf = (st: Stats): AttrEntry['type'] => {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  return 'socket'
}

/** A tool's stdout as latin1 (one character per byte), run in `cwd`. */
const output = (cmd: string, args: string[], cwd: string): string =>
  execFileSync(cmd, args, {
    cwd,
    maxBuffer: 256 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
  }).toString('latin1')

/** getfattr/getfacl quote some bytes as `\ooo`; names are otherwise their bytes. */
const unquote = (s: string): string =>
  s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))

/** `./a/b` or `a/b` → `a/b`; `.` stays. */
const rel = (name: string): string => (name === '.' ? '.' : name.replace(/^\.\//, ''))

/** Records of `# file: NAME` followed by lines, up to a blank line. */
const records = (text: string): Map<string, string[]> => {
  const out = new Map<string, string[]>()
  let current: string[] | undefined
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = []
      out.set(rel(unquote(line.slice(8))), current)
    } else if (line === '') current = undefined
    else if (!line.startsWith('#')) current?.push(line)
  }
  return out
}

/** Dump every entry below and including `root` (see the module comment). */
export const attrDump = async (root: string): Promise<AttrDump> => {
  const xattrs = records(
    output('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '.'], root),
  )
  const acls = records(output('getfacl', ['-R', '-P', '-n', '-E', '--skip-base', '.'], root))
  const dump: AttrDump = {}
  const inodes = new Map<string, string[]>()
  const walk = async (name: Buffer): Promise<void> => {
    const path = Buffer.concat([Buffer.from(`${root}/`), name])
    const st = await lstat(path)
    const type = typeOf(st)
    const key = name.toString('latin1')
    const x: Record<string, string> = {}
    for (const line of xattrs.get(key) ?? []) {
      const eq = line.indexOf('=')
      const n = line.slice(0, eq)
      if (!n.startsWith('system.posix_acl_')) x[n] = line.slice(eq + 1)
    }
    const e: AttrEntry = {
      type,
      mode: (st.mode & 0o7777).toString(8).padStart(4, '0'),
      uid: st.uid,
      gid: st.gid,
      size: type === 'file' || type === 'symlink' ? st.size : 0,
      mtime: Math.floor(st.mtimeMs / 1000),
      xattrs: x,
    }
    const a = acls.get(key)
    if (a !== undefined) e.acls = a
    if (type === 'char' || type === 'block') {
      e.rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`
    }
    if (type === 'symlink') {
      e.target = (await readlink(path, { encoding: 'buffer' })).toString('latin1')
    }
    if (type === 'file') {
      e.sparse = st.blocks * 512 < st.size
      if (st.nlink > 1) {
        const ino = `${st.dev}:${st.ino}`
        inodes.set(ino, [...(inodes.get(ino) ?? []), key])
      }
    }
    dump[key] = e
    if (type === 'dir') {
      const names = await readdir(path, { encoding: 'buffer' })
      names.sort((a, b) => Buffer.compare(a, b))
      for (const n of names) {
        await walk(key === '.' ? n : Buffer.concat([name, Buffer.from('/'), n]))
      }
    }
  }
  await walk(Buffer.from('.'))
  for (const group of inodes.values()) {
    const first = [...group].sort()[0]
    for (const k of group) {
      const e = dump[k]
      if (e !== undefined && first !== undefined) e.hardlinkGroup = first
    }
  }
  return dump
}

/** `dump` without the entries `drop` selects (and everything below them). */
export const dropEntries = (
  dump: AttrDump,
  drop: (name: string, e: AttrEntry) => boolean,
): AttrDump => {
  const gone = Object.entries(dump)
    .filter(([k, e]) => drop(k, e))
    .map(([k]) => k)
  return Object.fromEntries(
    Object.entries(dump).filter(([k]) => !gone.some((g) => k === g || k.startsWith(`${g}/`))),
  )
}
