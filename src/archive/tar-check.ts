/**
 * pve-container's `check_tar_archive`: basic checks of a potentially untrusted or bogus tar
 * archive before it is extracted, by listing it with `tar -tvf`.
 */
import { createReadStream, readlinkSync } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { BackupError } from '../errors.ts'
import type { ErrorCode } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import type { TokenBucket } from '../io/throttle.ts'
import { Group, stdioOf, toolStage } from './internal.ts'

/** Lines longer than this are cut (names of hostile archives can be huge). */
const MAX_LINE = 64 * 1024
/** At most this many unparseable lines are reported. */
const MAX_UNPARSED = 20

/** One `tar -tv --numeric-owner` line: type, mode, uid/gid, size (or `maj,min`), date, time, name. */
const LISTING_LINE = /^(.)[-rwxsStT]{9}\s+\d+\/\d+\s+\S+\s+\d{4,}-\d\d-\d\d\s+\d\d:\d\d\s(.*)$/

/**
 * The command that decompresses `archive` to stdout, chosen by its name as pve-container picks
 * tar's compression option: `undefined` for `.tar`, `zstd -d` for `.tar.zst`, also `.tar.gz`,
 * `.tar.bz2`, `.tar.xz`, `.tar.lzo`. Throws `USAGE` for any other name.
 *
 * We run the decompressor ourselves instead of passing `--zstd` to tar: tar would fork helper
 * processes that outlive a killed tar (and linger as zombies under a non-reaping init).
 */
export const decompressorFor = (archive: string): readonly string[] | undefined => {
  // A pinned file (`/proc/<pid>/fd/<n>`, see src/io/beneath.ts) is named by its link target.
  const name = /^\/proc\/\d+\/fd\/\d+$/.test(archive) ? readlinkSync(archive) : archive
  const table: readonly (readonly [RegExp, readonly string[] | undefined])[] = [
    [/\.tar$/, undefined],
    [/\.(tar\.zst|tzst)$/, ['zstd', '-d', '-c', '-q']],
    [/\.(tar\.gz|tgz)$/, ['gzip', '-d', '-c']],
    [/\.(tar\.bz2|tbz2?)$/, ['bzip2', '-d', '-c']],
    [/\.(tar\.xz|txz)$/, ['xz', '-d', '-c']],
    [/\.tar\.lzo$/, ['lzop', '-d', '-c']],
  ]
  for (const [re, cmd] of table) if (re.test(name)) return cmd
  throw new BackupError('USAGE', `${archive} does not look like a tar archive (by its name)`, {
    details: { archive },
  })
}

/**
 * The first stages of a pipeline that feeds the tar stream of `archive` to a tool: the file,
 * the bandwidth limit (on the file's bytes) and the decompressor, which joins `group`.
 */
export const archiveStages = (
  archive: string,
  group: Group,
  opts: { bandwidth?: TokenBucket | undefined; errorCode?: ErrorCode } = {},
): (NodeJS.ReadableStream | NodeJS.ReadWriteStream)[] => {
  const cmd = decompressorFor(archive)
  const stages: (NodeJS.ReadableStream | NodeJS.ReadWriteStream)[] = [createReadStream(archive)]
  if (opts.bandwidth?.limited === true) stages.push(opts.bandwidth.transform(group.signal))
  if (cmd !== undefined) {
    const [prog, ...args] = cmd as [string, ...string[]]
    const tool = spawnTool(prog, args, {
      signal: group.signal,
      ...(opts.errorCode === undefined ? {} : { errorCode: opts.errorCode }),
    })
    group.addTool(tool)
    stages.push(toolStage(tool, group))
  }
  return stages
}

/** Result of {@link checkTarArchive}. */
export interface TarCheckResult {
  /** Number of members listed. */
  members: number
  /** Listing lines that could not be parsed (first 20), as Proxmox only prints them. */
  warnings: string[]
}

/**
 * List `archive` with `tar -tvf - --numeric-owner` (decompressed by name), streaming, and reject it
 * (`ARCHIVE_INVALID`) when it has a multi-volume member (type `M`), has no member at all, or tar
 * cannot read it. Called by {@link extractTarArchive} before anything is written.
 *
 * Differences to Proxmox: we do **not** require a `sbin/` entry nor at least 10 members, because
 * the archived tree may be any directory (a single volume, a data disk), not a full root file
 * system. As in Proxmox, size limits and tar format details are not checked: tar itself strips
 * leading `/` and refuses `..` on extraction.
 */
export const checkTarArchive = async (
  archive: string,
  opts: { signal?: AbortSignal | undefined } = {},
): Promise<TarCheckResult> => {
  decompressorFor(archive) // USAGE before anything runs
  const group = new Group(opts.signal)
  const tar = spawnTool('tar', ['-tvf', '-', '--numeric-owner'], {
    errorCode: 'ARCHIVE_INVALID',
    signal: group.signal,
  })
  group.addTool(tar)
  const input = archiveStages(archive, group, { errorCode: 'ARCHIVE_INVALID' })
  group.add(pipeline([...input, stdioOf(tar.stdin, group)], { signal: group.signal }))
  let members = 0
  const warnings: string[] = []
  const onLine = (line: string): void => {
    const m = LISTING_LINE.exec(line)
    if (!m) {
      if (warnings.length < MAX_UNPARSED) warnings.push(`check tar: unexpected line: ${line}`)
      return
    }
    members++
    if (m[1] === 'M') {
      throw new BackupError('ARCHIVE_INVALID', `found multi-volume member in archive ${archive}`, {
        details: { archive, member: m[2] },
      })
    }
  }
  const stdout = stdioOf(tar.stdout, group)
  stdout.setEncoding('utf8')
  const consume = async (source: AsyncIterable<string>): Promise<void> => {
    let carry = ''
    for await (const chunk of source) {
      const parts = (carry + chunk).split('\n')
      carry = (parts.pop() ?? '').slice(0, MAX_LINE)
      for (const line of parts) onLine(line.slice(0, MAX_LINE))
    }
    if (carry !== '') onLine(carry)
  }
  group.add(pipeline(stdout, consume, { signal: group.signal }))
  await group.settle('ARCHIVE_INVALID', tar)
  if (members === 0) {
    throw new BackupError('ARCHIVE_INVALID', `archive ${archive} has no members`, {
      details: { archive },
    })
  }
  return { members, warnings }
}
