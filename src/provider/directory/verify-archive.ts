/**
 * Verifying a container backup: its archive against the digests recorded at backup time
 * ({@link verifyArchive}), and a restored tree against the backup ({@link proveRestoredTree}).
 * For tar, the members file (`archive.members`, one `TarMember` per line, checked against the
 * manifest before it is trusted) locates a damaged member and lists what a restore must hold.
 * Memory: a read buffer, one member at a time, and 8 bytes per member when proving a tree.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Transform } from 'node:stream'
import type { Duplex } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Group, toolStage } from '../../archive/internal.ts'
import { mountSquashfs } from '../../archive/squashfs.ts'
import { decompressorFor } from '../../archive/tar-check.ts'
import { TarMemberParser, TarParseError } from '../../archive/tar-members.ts'
import type { TarMember } from '../../archive/tar-members.ts'
import { BackupError, throwIfAborted } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { spawnTool } from '../../io/spawn.ts'
import { makeTempDir } from '../../io/tmpdir.ts'
import { compareTrees, proveMembers } from './prove-tree.ts'
import { MEMBERS_FILE } from './archive-files.ts'
import { digestOf } from './digests.ts'
import type { Manifest } from './manifest.ts'

/** Read size of the archive: large reads keep the hash, not the system calls, the cost. */
const READ = 4 * 1024 * 1024

type Container = NonNullable<Manifest['container']>

const containerOf = (dir: Dir, m: Manifest): Container => {
  if (m.container === undefined) {
    throw new BackupError('USAGE', `${dir.label} is not a container backup`)
  }
  return m.container
}

/** Found a difference: stops reading (thrown through the pipeline). */
class Found extends Error {}

/**
 * The members file of a tar backup, checked against the manifest: its name, or why it cannot be
 * trusted (`{ reason }`). `undefined`: squashfs, or a backup that recorded none.
 */
const membersFile = async (
  dir: Dir,
  m: Manifest,
  signal: AbortSignal,
): Promise<{ name: string } | { reason: string } | undefined> => {
  const name = m.container?.digest?.members
  if (m.container?.format !== 'tar' || name === undefined) return undefined
  if (name !== MEMBERS_FILE) return { reason: `the manifest names the members file ${name}` }
  const want = m.digests?.[name]
  if (want === undefined) return { reason: `the manifest records no digest of ${name}` }
  const have = await digestOf(dir, name, signal).catch((e: unknown) => {
    if (e instanceof BackupError && e.code === 'NOT_FOUND') return undefined
    throw e
  })
  if (have === undefined) return { reason: `${name} is missing` }
  return have === want ? { name } : { reason: `${name} differs from the backup` }
}

const isMember = (v: unknown): v is TarMember => {
  const r = v as Partial<TarMember> | null
  return (
    typeof r === 'object' &&
    r !== null &&
    Number.isSafeInteger(r.offset) &&
    typeof r.path === 'string' &&
    typeof r.type === 'string' &&
    Number.isSafeInteger(r.size) &&
    typeof r.header === 'string'
  )
}

/** The records of a members file (`path`: a pinned file), one at a time. */
async function* readMembers(path: string, what: string): AsyncGenerator<TarMember> {
  const lines = createInterface({ input: createReadStream(path), crlfDelay: Infinity })
  let n = 0
  for await (const line of lines) {
    n++
    let v: unknown
    try {
      v = JSON.parse(line)
    } catch {
      v = undefined
    }
    if (!isMember(v)) throw new Found(`${what} is damaged at line ${n}`)
    yield v
  }
}

const sameMember = (a: TarMember, b: TarMember): boolean =>
  a.offset === b.offset &&
  a.path === b.path &&
  a.pathRaw === b.pathRaw &&
  a.type === b.type &&
  a.size === b.size &&
  a.link === b.link &&
  a.linkRaw === b.linkRaw &&
  a.sha256 === b.sha256

const where = (m: TarMember): string => `member ${m.path} (at byte ${m.offset} of the tar stream)`

/**
 * Compare the tar stream of `source` with the members file record by record; throws
 * {@link Found} with the first difference.
 */
const compareMembers = async (
  source: AsyncIterable<Buffer>,
  members: AsyncGenerator<TarMember>,
): Promise<void> => {
  const parser = new TarMemberParser()
  let last: TarMember | undefined
  const check = async (got: TarMember): Promise<void> => {
    const want = await members.next()
    if (want.done === true) throw new Found(`the archive has a ${where(got)} the backup has not`)
    if (!sameMember(got, want.value))
      throw new Found(`${where(want.value)} differs from the backup`)
    if (got.header !== want.value.header) {
      throw new Found(`the header of ${where(want.value)} differs from the backup`)
    }
    last = got
  }
  try {
    for await (const chunk of source) for (const got of parser.push(chunk)) await check(got)
    parser.end()
  } catch (e) {
    if (!(e instanceof TarParseError)) throw e
    throw new Found(`${e.message}${last === undefined ? '' : ` (after ${where(last)})`}`)
  }
  const extra = await members.next()
  if (extra.done !== true) throw new Found(`${where(extra.value)} is missing from the archive`)
  if (parser.strayByte !== undefined) {
    throw new Found(`byte ${parser.strayByte} of the tar stream (padding, in no member) differs`)
  }
}

/**
 * Recompute the SHA-256 of the container archive of the backup in `dir` (one streamed read in
 * large reads; `onProgress` gets bytes read and the file's size) and compare it with the
 * manifest's. For tar the members file is checked first, and the archive is parsed in the same
 * read and compared with it member by member, so a damaged archive is refused naming the first
 * member that differs (or the damaged header's offset). Returns undefined when the archive is
 * intact, else a one-line reason. Call after the manifest itself was checked
 * (`manifestDigestMismatch`).
 *
 * @throws BackupError `USAGE` (no container backup), `ABORTED`, `IO` (unreadable files).
 */
export const verifyArchive = async (
  dir: Dir,
  manifest: Manifest,
  opts: { signal: AbortSignal; onProgress?: (done: number, total: number) => void },
): Promise<string | undefined> => {
  const c = containerOf(dir, manifest)
  const want = manifest.digests?.[c.file]
  if (want === undefined) return `the manifest records no digest of ${c.file}`
  const members = await membersFile(dir, manifest, opts.signal)
  if (members !== undefined && 'reason' in members) return members.reason
  await using pin = await dir.tryPin(c.file)
  if (pin === undefined) return `${c.file} is missing`
  await using list = members === undefined ? undefined : await dir.pin(members.name)
  const total = pin.stat.size
  const hash = createHash('sha256')
  let done = 0
  const tap = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      hash.update(chunk)
      done += chunk.length
      opts.onProgress?.(done, total)
      cb(null, chunk)
    },
  })
  const group = new Group(opts.signal)
  const cmd = members === undefined ? undefined : decompressorFor(c.file)
  let unpack: Duplex | undefined
  if (cmd !== undefined) {
    const [prog, ...args] = cmd as [string, ...string[]]
    const tool = spawnTool(prog, args, { signal: group.signal, errorCode: 'ARCHIVE_INVALID' })
    group.addTool(tool)
    unpack = toolStage(tool, group)
  }
  let found: string | undefined
  const consume = async (source: AsyncIterable<Buffer>): Promise<void> => {
    if (members === undefined || list === undefined) {
      for await (const _ of source) throwIfAborted(opts.signal)
      return
    }
    try {
      await compareMembers(source, readMembers(list.path, members.name))
    } catch (e) {
      // Stopping at the first difference: the pipeline may report that as an abort.
      if (e instanceof Found) found = e.message
      throw e
    }
  }
  const input = createReadStream(pin.path, { highWaterMark: READ })
  const signal = group.signal
  const piped =
    unpack === undefined
      ? pipeline(input, tap, consume, { signal })
      : pipeline(input, tap, unpack, consume, { signal })
  group.add(
    piped.catch((e: unknown) => {
      if (found === undefined) throw e
    }),
  )
  try {
    await group.settle('IO')
  } catch (e) {
    // Stopping at a difference breaks the decompressor's pipe.
    if (found !== undefined) return found
    // A compressed archive its decompressor cannot read.
    if (e instanceof BackupError && e.code === 'ARCHIVE_INVALID') return `${c.file}: ${e.message}`
    throw e
  }
  if (found !== undefined) return found
  if (hash.digest('hex') === want) return undefined
  if (c.format === 'squashfs') {
    return `${c.file} differs from the backup (first 4 MiB block that differs: unknown)`
  }
  return `${c.file} differs from the backup`
}

/**
 * Prove that `restored`, the root of a restored container (`DIR/rootfs` of `guestbackup
 * restore`), holds what the backup in `dir` holds: every member (below `./dev/` nothing is
 * restored) with its type, size, content (SHA-256), link target, and hard links as such, and
 * nothing else; links are never followed. tar: against the members file (checked against the
 * manifest first); squashfs: against the archive itself, mounted with squashfuse (the archive's
 * own digest is {@link verifyArchive}'s business). Owners, modes, times, xattrs and ACLs are not
 * compared. Returns undefined when proven, else a one-line reason naming the first missing,
 * extra or differing path.
 *
 * @throws BackupError `USAGE` (no container backup), `ARCHIVE_TOOL_FAILED` (squashfuse),
 *   `ABORTED`, `IO`.
 */
export const proveRestoredTree = async (
  dir: Dir,
  manifest: Manifest,
  restored: string,
  opts: { signal: AbortSignal },
): Promise<string | undefined> => {
  const c = containerOf(dir, manifest)
  const st = await lstat(restored).catch(() => undefined)
  if (st?.isDirectory() !== true) return `${restored} is not a directory`
  if (c.format === 'tar') {
    const members = await membersFile(dir, manifest, opts.signal)
    if (members === undefined) return `the backup records no members of ${c.file}`
    if ('reason' in members) return members.reason
    await using pin = await dir.pin(members.name)
    try {
      return await proveMembers(readMembers(pin.path, members.name), restored, opts.signal)
    } catch (e) {
      if (e instanceof Found) return e.message
      throw e
    }
  }
  await using pin = await dir.tryPin(c.file)
  if (pin === undefined) return `${c.file} is missing`
  await using tmp = await makeTempDir('guestbackup-sqfs-')
  const mnt = join(tmp.path, 'root')
  await mkdir(mnt)
  await using mount = await mountSquashfs(pin.path, mnt, { signal: opts.signal })
  return await compareTrees(mount.path, restored, opts.signal)
}
