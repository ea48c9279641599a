/**
 * Proving a restored container tree, never following links: against the members of a tar
 * backup (`archive.members`), or against another tree (a squashfs archive mounted with
 * squashfuse). Only types, sizes, contents (SHA-256), link targets and hard links are compared;
 * owners, modes, times, xattrs and ACLs are not.
 */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { TarMember } from '../../archive/tar-members.ts'
import { throwIfAborted } from '../../errors.ts'

/** Read size of restored files. */
const READ = 4 * 1024 * 1024

/** A member's name as a path below the restored root ('' for the root itself). */
const relPath = (m: TarMember): Buffer => {
  let s = m.pathRaw === undefined ? Buffer.from(m.path, 'utf8') : Buffer.from(m.pathRaw, 'base64')
  for (;;) {
    if (s[0] === 0x2f) s = s.subarray(1)
    else if (s[0] === 0x2e && (s[1] === 0x2f || s.length === 1))
      s = s.subarray(s.length === 1 ? 1 : 2)
    else break
  }
  while (s.length > 0 && s[s.length - 1] === 0x2f) s = s.subarray(0, s.length - 1)
  return s
}

/** Below `./dev/`: not restored (`RESTORE_EXTRACT_ARGS`: `--anchored --exclude ./dev/*`). */
const notRestored = (m: TarMember): boolean => /^\.\/dev\/./s.test(m.path.replace(/\/+$/, ''))

const underDev = (rel: Buffer): boolean => rel.length > 4 && rel.subarray(0, 4).equals(DEV)
const DEV = Buffer.from('dev/')

/** 64-bit digest of a relative path, for the set of member paths. */
const pathKey = (rel: Buffer): bigint =>
  createHash('sha256').update(rel).digest().readBigUInt64LE(0)

/** SHA-256 of the regular file at `path` (never follows a link, never opens a FIFO). */
const hashRegular = async (path: Buffer | string, signal: AbortSignal): Promise<string> => {
  const flags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK
  await using fh = await open(path, flags)
  if (!(await fh.stat()).isFile()) return 'not a regular file'
  const h = createHash('sha256')
  const buf = Buffer.allocUnsafe(READ)
  for (let at = 0; ;) {
    throwIfAborted(signal)
    const { bytesRead } = await fh.read(buf, 0, READ, at)
    if (bytesRead === 0) break
    h.update(buf.subarray(0, bytesRead))
    at += bytesRead
  }
  return h.digest('hex')
}

type Stat = Awaited<ReturnType<typeof lstat>>

const typeOf = (st: Stat): TarMember['type'] =>
  st.isFile()
    ? 'file'
    : st.isDirectory()
      ? 'dir'
      : st.isSymbolicLink()
        ? 'symlink'
        : st.isCharacterDevice()
          ? 'char'
          : st.isBlockDevice()
            ? 'block'
            : st.isFIFO()
              ? 'fifo'
              : 'other'

const tryLstat = (p: Buffer): Promise<Stat | undefined> => lstat(p).catch(() => undefined)

const joinBuf = (root: Buffer, rel: Buffer): Buffer =>
  rel.length === 0 ? root : Buffer.concat([root, Buffer.from('/'), rel])

/** Why the restored entry at `p` is not member `m`, or undefined. */
const memberMismatch = async (
  root: Buffer,
  m: TarMember,
  p: Buffer,
  st: Stat,
  signal: AbortSignal,
): Promise<string | undefined> => {
  if (m.type === 'hardlink') {
    const target = await tryLstat(joinBuf(root, relPath({ ...m, path: m.link ?? '' })))
    if (!st.isFile() || target?.ino !== st.ino || target.dev !== st.dev) {
      return `${m.path} is not a hard link to ${m.link ?? '?'}`
    }
    return undefined
  }
  if (m.type === 'other') return undefined
  const type = typeOf(st)
  if (type !== m.type) return `${m.path} is a ${type}, the backup's a ${m.type}`
  if (type === 'symlink') {
    const want =
      m.linkRaw === undefined ? Buffer.from(m.link ?? '') : Buffer.from(m.linkRaw, 'base64')
    if (!(await readlink(p, { encoding: 'buffer' })).equals(want)) {
      return `${m.path} points elsewhere than in the backup`
    }
  }
  if (type !== 'file') return undefined
  if (st.size !== m.size) return `${m.path} has ${st.size} bytes, the backup ${m.size}`
  if ((await hashRegular(p, signal)) !== m.sha256) return `${m.path} differs from the backup`
  return undefined
}

/**
 * Prove the tree `restored` against the members of a tar backup: each member (none below
 * `./dev/`, which a restore skips) is there with its type, size, content, link target or hard
 * link, and the tree holds nothing else. A reason for the first difference, or undefined.
 */
export const proveMembers = async (
  members: AsyncGenerator<TarMember>,
  restored: string,
  signal: AbortSignal,
): Promise<string | undefined> => {
  const root = Buffer.from(restored)
  let keys = new BigUint64Array(1024)
  let count = 0
  for await (const m of members) {
    throwIfAborted(signal)
    if (notRestored(m)) continue
    const rel = relPath(m)
    if (count === keys.length) {
      const grown = new BigUint64Array(keys.length * 2)
      grown.set(keys)
      keys = grown
    }
    keys[count++] = pathKey(rel)
    const p = joinBuf(root, rel)
    const st = await tryLstat(p)
    if (st === undefined) return `${m.path} is missing from the restored tree`
    const why = await memberMismatch(root, m, p, st, signal)
    if (why !== undefined) return why
  }
  const sorted = keys.subarray(0, count).sort()
  const known = (k: bigint): boolean => {
    let lo = 0
    let hi = sorted.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((sorted[mid] ?? 0n) < k) lo = mid + 1
      else hi = mid
    }
    return sorted[lo] === k
  }
  // Every entry of the tree must be a member (below ./dev/ nothing was restored).
  const stack: Buffer[] = [Buffer.alloc(0)]
  for (let rel = stack.pop(); rel !== undefined; rel = stack.pop()) {
    throwIfAborted(signal)
    if (!known(pathKey(rel)))
      return `./${rel.toString('utf8')} is in the restored tree, not in the backup`
    const entries = await readdir(joinBuf(root, rel), {
      withFileTypes: true,
      encoding: 'buffer',
    }).catch(() => undefined)
    for (const e of entries ?? []) {
      const child = rel.length === 0 ? e.name : Buffer.concat([rel, Buffer.from('/'), e.name])
      if (underDev(child)) continue
      if (e.isDirectory()) stack.push(child)
      else if (!known(pathKey(child))) {
        return `./${child.toString('utf8')} is in the restored tree, not in the backup`
      }
    }
  }
  return undefined
}

/**
 * Compare the tree `restored` with `backup` (a mounted squashfs archive) entry by entry in name
 * order, the same way as {@link proveMembers}. A reason for the first difference, or undefined.
 */
export const compareTrees = async (
  backup: string,
  restored: string,
  signal: AbortSignal,
): Promise<string | undefined> => {
  const stack: string[] = ['']
  for (let rel = stack.pop(); rel !== undefined; rel = stack.pop()) {
    throwIfAborted(signal)
    const list = async (root: string): Promise<string[]> => (await readdir(join(root, rel))).sort()
    const [a, b] = [await list(backup), await list(restored)]
    const inB = new Set(b)
    for (const name of a) {
      const r = rel === '' ? name : `${rel}/${name}`
      if (!inB.has(name)) return `./${r} is missing from the restored tree`
      const [sa, sb] = [await lstat(join(backup, r)), await lstat(join(restored, r))]
      const [ta, tb] = [typeOf(sa), typeOf(sb)]
      if (ta !== tb) return `./${r} is a ${tb}, the backup's a ${ta}`
      if (
        ta === 'symlink' &&
        (await readlink(join(backup, r))) !== (await readlink(join(restored, r)))
      ) {
        return `./${r} points elsewhere than in the backup`
      }
      if (ta === 'file') {
        if (sa.size !== sb.size) return `./${r} has ${sb.size} bytes, the backup ${sa.size}`
        const [ha, hb] = [
          await hashRegular(join(backup, r), signal),
          await hashRegular(join(restored, r), signal),
        ]
        if (ha !== hb) return `./${r} differs from the backup`
      }
      // Below ./dev/ nothing is restored (RESTORE_EXTRACT_ARGS).
      if (ta === 'dir' && r !== 'dev') stack.push(r)
    }
    const inA = new Set(a)
    for (const name of b) {
      if (!inA.has(name))
        return `./${rel === '' ? name : `${rel}/${name}`} is in the restored tree, not in the backup`
    }
  }
  return undefined
}
