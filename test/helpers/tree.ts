/**
 * A container-rootfs-like test tree with the metadata edge cases a container backup must keep
 * (hard links, sparse files, ACLs, xattrs, device nodes, odd names), and a comparable manifest of
 * a tree: diff the manifests of a source and a restore to see what was lost.
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import {
  chmod,
  chown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  symlink,
  writeFile,
} from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { run } from '../../src/io/spawn.ts'

/** Exclude patterns used with {@link buildTree}: anchored, unanchored, wildcard, trailing `/`. */
export const TREE_EXCLUDES: readonly string[] = ['*.tmp', '/var/log', '/tmp/*', 'cache/']

/** Paths of {@link buildTree} that {@link TREE_EXCLUDES} (and `lost+found`) remove. */
export const TREE_EXCLUDED: readonly string[] = [
  'var/log',
  'var/cache/x.tmp',
  'a/b/c/deep.tmp',
  'tmp/session',
  'lost+found',
  'home/lost+found',
]

/** Relative path of the sparse file: 64 MiB apparent, 1 MiB of data at 32 MiB. */
export const SPARSE_FILE = 'var/lib/sparse.img'
/** Apparent size of {@link SPARSE_FILE}. */
export const SPARSE_SIZE = 64 * 1024 * 1024

const MiB = 1024 * 1024
const BASE_MTIME = 1_700_000_000

const file = async (root: string, rel: string, data: string | Buffer, mode = 0o644) => {
  const p = join(root, rel)
  await mkdir(dirname(p), { recursive: true })
  await writeFile(p, data, { mode })
  await chmod(p, mode)
  return p
}

const dir = async (root: string, rel: string, mode = 0o755) => {
  const p = join(root, rel)
  await mkdir(p, { recursive: true })
  await chmod(p, mode)
  return p
}

/**
 * Fill the existing, empty directory `root` with the test tree (≈ 1.3 MiB of data plus the
 * sparse file). Needs root (chown, mknod) and a file system with xattrs and ACLs. All mtimes are
 * fixed, so two builds have equal manifests except for random contents.
 */
export const buildTree = async (root: string): Promise<void> => {
  await file(root, 'etc/hostname', 'testhost\n')
  const x = await file(root, 'etc/with-xattr', 'x\n')
  await run('setfattr', ['-n', 'user.test', '-v', 'hello', x])
  const acl = await file(root, 'etc/acl-file', 'acl\n', 0o640)
  await run('setfacl', ['-m', 'u:1234:rwx', acl])
  await file(root, 'usr/bin/setuid-tool', '#!/bin/sh\n', 0o4755)
  const cap = await file(root, 'usr/bin/cap-tool', '#!/bin/sh\n', 0o755)
  // VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted, as setcap would write it.
  const capValue = '0x0100000200040000000000000000000000000000'
  await run('setfattr', ['-n', 'security.capability', '-v', capValue, cap])
  await file(root, 'usr/lib/data.bin', randomBytes(256 * 1024))
  await file(root, 'usr/var/log/kept.log', 'not anchored at the root\n')
  await file(root, 'usr/share/doc/readme.txt', 'lorem ipsum dolor sit amet\n'.repeat(4000))

  await dir(root, 'var/lib')
  const sparse = await open(join(root, SPARSE_FILE), 'w', 0o644)
  await sparse.write(randomBytes(MiB), 0, MiB, 32 * MiB)
  await sparse.truncate(SPARSE_SIZE)
  await sparse.close()
  await run('mknod', [join(root, 'var/lib/whiteout'), 'c', '0', '0'])
  await file(root, 'var/log/syslog', 'excluded: anchored /var/log\n')
  await file(root, 'var/cache/x.tmp', 'excluded: *.tmp\n')
  await file(root, 'var/cache/keep.bin', 'kept: cache/ never matches\n')
  await file(root, 'a/b/c/deep.tmp', 'excluded: *.tmp at depth\n')
  await file(root, 'a/b/c/deep.txt', 'kept\n')

  await dir(root, 'tmp', 0o1777)
  await file(root, 'tmp/session', 'excluded: /tmp/*\n')
  const home = await dir(root, 'home/user', 0o750)
  await chown(home, 1000, 1000)
  await chown(await file(root, 'home/user/notes.txt', 'notes\n', 0o640), 1000, 1000)
  const nobody = await dir(root, 'home/nobody', 0o700)
  await chown(nobody, 65534, 65534)
  await chown(await file(root, 'home/nobody/file', 'nobody\n', 0o600), 65534, 65534)
  await chown(await dir(root, 'srv', 0o2775), 0, 1000)
  await chmod(join(root, 'srv'), 0o2775)

  const original = await file(root, 'data/original', 'linked three times\n')
  await link(original, join(root, 'data/hardlink'))
  await dir(root, 'data/sub')
  await link(original, join(root, 'data/sub/third'))

  await dir(root, 'links')
  await symlink('../etc/hostname', join(root, 'links/rel'))
  await symlink('/etc/hostname', join(root, 'links/abs'))
  await symlink('/nonexistent/target', join(root, 'links/dangling'))
  await symlink('../usr', join(root, 'links/dir'))
  await dir(root, 'run')
  await run('mkfifo', ['-m', '0620', join(root, 'run/fifo')])

  const shared = await dir(root, 'shared', 0o775)
  await run('setfacl', ['-m', 'g:2345:rx', '-d', '-m', 'u:1234:rwx', shared])
  await run('setfacl', ['-m', 'g:2345:rx', shared])
  await dir(root, 'empty')
  await dir(root, 'lost+found', 0o700)
  await file(root, 'lost+found/#1234', 'excluded: lost+found\n')
  await dir(root, 'home/lost+found', 0o700)
  await file(root, 'home/lost+found/orphan', 'excluded: lost+found in any directory\n')
  await file(root, 'dev/placeholder', 'not restored: ./dev/* is excluded on extraction\n')
  await file(root, 'names/with space.txt', 'space\n')
  await file(root, 'names/ünïcødé.txt', 'unicode\n')
  await file(root, `names/${'long-name-'.repeat(20)}.txt`, 'a name longer than 100 bytes\n')

  // Fixed mtimes, children before parents (writing into a directory changes its mtime).
  let i = 0
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p)
    if (st.isDirectory()) {
      for (const e of (await readdir(p)).sort()) await walk(join(p, e))
    }
    const t = BASE_MTIME + 100 * i++
    await lutimes(p, t, t)
  }
  await walk(root)
}

/** One entry of a {@link Manifest}. Optional fields are present only where they apply. */
export interface ManifestEntry {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket'
  /** Permission bits including setuid/setgid/sticky, in octal (`'4755'`). */
  mode: string
  uid: number
  gid: number
  /** Bytes for files, target length for symlinks, else 0. */
  size: number
  /** Whole seconds. */
  mtime: number
  /** sha256 of a regular file's content. */
  sha256?: string
  /** Symlink target. */
  target?: string
  /** Device number `major:minor` of a device node. */
  rdev?: string
  /** For files with several links: the first (sorted) path of the same inode in the tree. */
  hardlink?: string
  /** Extended attributes: hex values, POSIX ACLs decoded to text (`user::rw-,user:1234:rwx,…`). */
  xattrs: Record<string, string>
}

/** Path (relative, `.` for the root) → entry. Compare two with `assert.deepStrictEqual`. */
export type Manifest = Record<string, ManifestEntry>

const typeOf = (st: Awaited<ReturnType<typeof lstat>>): ManifestEntry['type'] => {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  return 'socket'
}

const sha256 = async (path: string): Promise<string> => {
  const h = createHash('sha256')
  await pipeline(createReadStream(path), h)
  return h.digest('hex')
}

/** Decode a `system.posix_acl_*` value (`0x…`: u32 version 2, then {u16 tag, u16 perm, u32 id}). */
export const decodeAcl = (hex: string): string => {
  const b = Buffer.from(hex.replace(/^0x/, ''), 'hex')
  const tags: Record<number, string> = {
    1: 'user:',
    2: 'user:',
    4: 'group:',
    8: 'group:',
    16: 'mask:',
    32: 'other:',
  }
  const out: string[] = []
  for (let off = 4; off + 8 <= b.length; off += 8) {
    const tag = b.readUInt16LE(off)
    const perm = b.readUInt16LE(off + 2)
    const id = tag === 2 || tag === 8 ? String(b.readUInt32LE(off + 4)) : ''
    const rwx = (perm & 4 ? 'r' : '-') + (perm & 2 ? 'w' : '-') + (perm & 1 ? 'x' : '-')
    out.push(`${tags[tag] ?? `tag${tag}:`}${id}:${rwx}`)
  }
  return out.join(',')
}

const unescapeName = (s: string): string =>
  Buffer.from(
    s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))),
    'latin1',
  ).toString('utf8')

/** All xattrs (including `system.posix_acl_*`) of every entry below `root`, by relative path. */
const readXattrs = async (root: string): Promise<Map<string, Record<string, string>>> => {
  const args = ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]
  const { stdout } = await run('getfattr', args)
  const result = new Map<string, Record<string, string>>()
  let current: Record<string, string> | undefined
  for (const line of Buffer.from(stdout, 'utf8').toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      current = {}
      result.set(relative(root, unescapeName(line.slice(8))) || '.', current)
    } else if (current && line.includes('=')) {
      const eq = line.indexOf('=')
      const name = line.slice(0, eq)
      const value = line.slice(eq + 1)
      current[name] = name.startsWith('system.posix_acl_') ? decodeAcl(value) : value
    }
  }
  return result
}

/** Describe every entry below (and including) `root`. */
export const treeManifest = async (root: string): Promise<Manifest> => {
  const xattrs = await readXattrs(root)
  const manifest: Manifest = {}
  const inodes = new Map<string, string>()
  const walk = async (rel: string): Promise<void> => {
    const p = join(root, rel)
    const st = await lstat(p)
    const type = typeOf(st)
    const entry: ManifestEntry = {
      type,
      mode: (st.mode & 0o7777).toString(8).padStart(4, '0'),
      uid: st.uid,
      gid: st.gid,
      size: type === 'file' || type === 'symlink' ? st.size : 0,
      mtime: Math.floor(st.mtimeMs / 1000),
      xattrs: xattrs.get(rel) ?? {},
    }
    if (type === 'file') entry.sha256 = await sha256(p)
    if (type === 'symlink') entry.target = await readlink(p)
    if (type === 'char' || type === 'block') {
      entry.rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`
    }
    if (type === 'file' && st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`
      const first = inodes.get(key) ?? rel
      inodes.set(key, first)
      entry.hardlink = first
    }
    manifest[rel] = entry
    if (type === 'dir') {
      for (const name of (await readdir(p)).sort()) await walk(rel === '.' ? name : join(rel, name))
    }
  }
  await walk('.')
  // `first` above is the first path in walk order; make it the smallest path of the group.
  const groups = new Map<string, string>()
  for (const [rel, e] of Object.entries(manifest)) {
    if (e.hardlink === undefined) continue
    const min = groups.get(e.hardlink)
    if (min === undefined || rel < min) groups.set(e.hardlink, rel)
  }
  for (const e of Object.values(manifest)) {
    if (e.hardlink !== undefined) e.hardlink = groups.get(e.hardlink) ?? e.hardlink
  }
  return manifest
}

/** A copy of `m` without `paths` and everything below them. */
export const withoutPaths = (m: Manifest, paths: readonly string[]): Manifest =>
  Object.fromEntries(
    Object.entries(m).filter(([p]) => !paths.some((x) => p === x || p.startsWith(`${x}/`))),
  )

/** A copy of `m` without POSIX ACL xattrs (what squashfs loses). */
export const withoutAcls = (m: Manifest): Manifest =>
  Object.fromEntries(
    Object.entries(m).map(([p, e]) => [
      p,
      {
        ...e,
        xattrs: Object.fromEntries(
          Object.entries(e.xattrs).filter(([k]) => !k.startsWith('system.posix_acl_')),
        ),
      },
    ]),
  )

/** Bytes allocated on disk for `path` (st_blocks × 512). */
export const allocatedBytes = async (path: string): Promise<number> =>
  (await lstat(path)).blocks * 512
