/**
 * POSIX ACLs beside a squashfs image. mksquashfs cannot store them (squashfs has no `system.`
 * xattr prefix, see squashfs.ts), so a squashfs backup records them in a side file, the text
 * `getfacl -R -P -n -E --skip-base .` writes (getfacl(1)), and the restore applies it with
 * `setfacl --restore=-` (setfacl(1)) once the tree is unpacked. `--skip-base` leaves out every
 * file whose ACL is only its mode bits; a directory with a default ACL is kept. Record parsing
 * and checks: acl-record.ts.
 */
import { createReadStream, createWriteStream } from 'node:fs'
import { lstat } from 'node:fs/promises'
import type { Stats } from 'node:fs'
import { resolve } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { BackupError, throwIfAborted } from '../errors.ts'
import { writeAtomically } from '../io/fs.ts'
import { spawnTool } from '../io/spawn.ts'
import type { ToolNamespace } from '../io/userns.ts'
import { AclRecordParser, nameComponents, restoreText } from './acl-record.ts'
import type { AclRecord } from './acl-record.ts'
import { Group, stderrLines, stdioOf } from './internal.ts'
import { LISTING_LINE, LISTING_ROOT } from './squashfs-check.ts'

/**
 * getfacl's arguments: recursive, never following symlinks (`-P`), numeric ids (`-n`), no
 * `#effective:` notes (`-E`), only files with more than the base entries (`--skip-base`), run
 * in the archived directory on `.` so that every name is relative to it.
 */
export const GETFACL_ARGS: readonly string[] = ['-R', '-P', '-n', '-E', '--skip-base', '.']

/** The records of a stream of getfacl text, one at a time. */
async function* recordsOf(source: Readable, label: string): AsyncGenerator<AclRecord> {
  source.setEncoding('latin1') // names are bytes; latin1 keeps each one
  const parser = new AclRecordParser(label)
  let carry = ''
  for await (const chunk of source as AsyncIterable<string>) {
    const parts = (carry + chunk).split('\n')
    carry = parts.pop() ?? ''
    for (const line of parts) {
      const r = parser.line(line)
      if (r !== undefined) yield r
    }
  }
  if (carry !== '') {
    const r = parser.line(carry)
    if (r !== undefined) yield r
  }
  const last = parser.end()
  if (last !== undefined) yield last
}

/** `root/components…` as one path of bytes. */
const below = (root: string, parts: readonly Buffer[]): Buffer =>
  Buffer.concat([Buffer.from(root), ...parts.flatMap((p) => [Buffer.from('/'), p])])

const lstatOrUndefined = async (path: Buffer): Promise<Stats | undefined> => {
  try {
    return await lstat(path)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
}

/** Options of {@link dumpPosixAcls}. */
export interface DumpPosixAclsOptions {
  /** The archived directory (the image's source). */
  directory: string
  /** The image made of it: names it lacks (excluded) are left out of the record. */
  image: string
  /** The record file; written as `output + '.partial'` first. Must not exist. */
  output: string
  /** Run getfacl in this user namespace, as mksquashfs ran: ids are the container's view. */
  namespace?: ToolNamespace | undefined
  signal?: AbortSignal | undefined
}

/** Result of {@link dumpPosixAcls}. */
export interface DumpPosixAclsResult {
  /** Files recorded. */
  records: number
  /** getfacl's complaints (a directory it could not read: its ACLs are not recorded). */
  warnings: string[]
}

/** The records of `getfacl` run as {@link GETFACL_ARGS} in `directory`, and its stderr. */
const readAcls = async (
  o: DumpPosixAclsOptions,
): Promise<{ records: AclRecord[]; stderr: string }> => {
  const group = new Group(o.signal)
  const tool = spawnTool('getfacl', GETFACL_ARGS, {
    cwd: resolve(o.directory),
    stdin: 'ignore',
    okExitCodes: [0, 1],
    signal: group.signal,
    namespace: o.namespace,
  })
  group.addTool(tool)
  const records: AclRecord[] = []
  const collect = async (source: Readable): Promise<void> => {
    for await (const r of recordsOf(source, o.output)) records.push(r)
  }
  group.add(collect(stdioOf(tool.stdout, group)))
  await group.settle('ARCHIVE_TOOL_FAILED', tool)
  return { records, stderr: tool.stderr() }
}

/**
 * Which of `wanted` (names below the root, latin1) the image lists (`unsquashfs -lln`,
 * squashfs-check.ts). Symlinks have no ACLs and are skipped. A line that is no listing line
 * continues the name before it (a name with a newline).
 */
const listedOf = async (
  image: string,
  wanted: ReadonlySet<string>,
  signal: AbortSignal | undefined,
): Promise<Set<string>> => {
  const group = new Group(signal)
  const lister = spawnTool('unsquashfs', ['-lln', '-UTC', resolve(image)], {
    stdin: 'ignore',
    signal: group.signal,
  })
  group.addTool(lister)
  const found = new Set<string>()
  let last: string | undefined
  const see = (line: string): void => {
    const m = LISTING_LINE.exec(line)
    if (m === null) {
      if (last === undefined) return
      last = `${last}\n${line}`
    } else if (m[1] === 'l') {
      last = undefined
      return
    } else {
      const path = m[3] ?? ''
      last = path === LISTING_ROOT ? '.' : path.slice(LISTING_ROOT.length + 1)
    }
    if (wanted.has(last)) found.add(last)
  }
  const consume = async (source: Readable): Promise<void> => {
    source.setEncoding('latin1')
    let carry = ''
    for await (const chunk of source as AsyncIterable<string>) {
      const parts = (carry + chunk).split('\n')
      carry = parts.pop() ?? ''
      for (const line of parts) see(line)
    }
    if (carry !== '') see(carry)
  }
  group.add(consume(stdioOf(lister.stdout, group)))
  await group.settle('ARCHIVE_TOOL_FAILED', lister)
  return found
}

/**
 * Record the POSIX ACLs of `directory` in `output` ({@link GETFACL_ARGS}, run with the
 * directory as cwd), keeping only the records of names the image lists, so the record excludes
 * exactly what mksquashfs excluded. The image is listed, not mounted: on Proxmox an
 * unprivileged container's backup runs in its user namespace, where FUSE cannot mount.
 * getfacl's exit code 1 (some file unreadable) is a warning.
 *
 * @throws BackupError `ARCHIVE_TOOL_FAILED` (getfacl or unsquashfs failed), `USAGE` (output
 *   exists), `ABORTED`. No output or partial file is left behind.
 */
export const dumpPosixAcls = async (o: DumpPosixAclsOptions): Promise<DumpPosixAclsResult> => {
  throwIfAborted(o.signal)
  const got = await readAcls(o)
  const name = (r: AclRecord): string => r.path.toString('latin1')
  for (const r of got.records) nameComponents(r.path, o.output) // getfacl wrote no such name
  const listed = await listedOf(o.image, new Set(got.records.map(name)), o.signal)
  const kept = got.records.filter((r) => listed.has(name(r)))
  await writeAtomically(o.output, async (partial) => {
    const text = kept.map((r) => `${r.lines.join('\n')}\n\n`).join('')
    await pipeline([Buffer.from(text, 'latin1')], createWriteStream(partial))
  })
  const warnings = stderrLines(got.stderr).map((l) => `recording POSIX ACLs: ${l}`)
  return { records: kept.length, warnings }
}

/** Options of {@link applyPosixAcls}. */
export interface ApplyPosixAclsOptions {
  /** The record file (a pinned `/proc/<pid>/fd/<n>` path works). */
  record: string
  /** The restored tree the names are relative to. */
  target: string
  /** Run setfacl in this user namespace (as the tree was restored): ids are the container's. */
  namespace?: ToolNamespace | undefined
  signal?: AbortSignal | undefined
}

/**
 * Resolve a record's name beneath `target` without following any symlink: every component is
 * looked up with lstat, each but the last must be a directory, the last must not be a symlink.
 * Returns the last one's lstat, or undefined when a component is missing. `checked` caches
 * directories found sound.
 */
const resolveBeneath = async (
  target: string,
  r: AclRecord,
  label: string,
  checked: Set<string>,
): Promise<Stats | undefined> => {
  const parts = nameComponents(r.path, label)
  if (parts.length === 0) return await lstat(target)
  const name = r.path.toString('latin1')
  for (let i = 1; i <= parts.length; i++) {
    const prefix = parts.slice(0, i)
    const key = Buffer.concat(prefix.flatMap((p) => [p, Buffer.from('/')])).toString('latin1')
    if (i < parts.length && checked.has(key)) continue
    const st = await lstatOrUndefined(below(target, prefix))
    if (st === undefined) return undefined
    if (st.isSymbolicLink()) {
      throw new BackupError(
        'ARCHIVE_INVALID',
        `ACL record ${label}: ${JSON.stringify(name)} goes through or names a symbolic link`,
        { details: { name } },
      )
    }
    if (i === parts.length) return st
    if (!st.isDirectory()) return undefined
    checked.add(key)
  }
  return undefined
}

/** Result of {@link applyPosixAcls}. */
export interface ApplyPosixAclsResult {
  /** Files whose ACLs were set. */
  applied: number
  /** Names recorded but absent from the tree, and setfacl's complaints. */
  warnings: string[]
}

/**
 * Set the ACLs recorded in `record` on the restored tree `target`: the record is read twice,
 * first to check every name (acl-record.ts `nameComponents`: no absolute name, no `.` or `..`;
 * then {@link resolveBeneath}: no symlink on the way or at the end), then to feed setfacl the
 * names, the files' own special mode bits and the entries only (`restoreText`) with `target` as its cwd. A name below `dev/` that is
 * absent is skipped silently (`./dev/*` is not restored, squashfs-extract.ts); any other absent
 * name is a warning.
 *
 * @throws BackupError `ARCHIVE_INVALID` (a record refused: nothing was applied),
 *   `ARCHIVE_TOOL_FAILED` (setfacl failed), `ABORTED`.
 */
export const applyPosixAcls = async (o: ApplyPosixAclsOptions): Promise<ApplyPosixAclsResult> => {
  throwIfAborted(o.signal)
  const label = 'archive.acls'
  const target = resolve(o.target)
  const checked = new Set<string>()
  const warnings: string[] = []
  let applied = 0
  for await (const r of recordsOf(createReadStream(o.record), label)) {
    if ((await resolveBeneath(target, r, label, checked)) !== undefined) continue
    const name = r.path.toString('latin1')
    if (!name.startsWith('dev/')) warnings.push(`ACLs of ${JSON.stringify(name)}: not restored`)
  }
  const group = new Group(o.signal)
  const tool = spawnTool('setfacl', ['--restore=-'], {
    cwd: target,
    stdout: 'ignore',
    signal: group.signal,
    namespace: o.namespace,
  })
  group.addTool(tool)
  const feed = async function* (source: Readable): AsyncGenerator<Buffer> {
    for await (const r of recordsOf(source, label)) {
      const st = await resolveBeneath(target, r, label, checked)
      if (st === undefined) continue
      applied++
      yield Buffer.from(restoreText(r, st.mode), 'latin1')
    }
  }
  const source = createReadStream(o.record)
  group.add(pipeline(source, feed, stdioOf(tool.stdin, group), { signal: group.signal }))
  await group.settle('ARCHIVE_TOOL_FAILED', tool)
  warnings.push(...stderrLines(tool.stderr()).map((l) => `restoring POSIX ACLs: ${l}`))
  return { applied, warnings }
}
