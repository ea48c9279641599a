/**
 * pve-container's `check_tar_archive`: basic checks of a potentially untrusted or bogus tar
 * archive before it is extracted, by listing it with `tar -tvf`.
 */
import { pipeline } from 'node:stream/promises'
import { BackupError } from '../errors.ts'
import { spawnTool } from '../io/spawn.ts'
import { Group, stdioOf } from './internal.ts'

/** Lines longer than this are cut (names of hostile archives can be huge). */
const MAX_LINE = 64 * 1024
/** At most this many unparseable lines are reported. */
const MAX_UNPARSED = 20

/** One `tar -tv --numeric-owner` line: type, mode, uid/gid, size (or `maj,min`), date, time, name. */
const LISTING_LINE = /^(.)[-rwxsStT]{9}\s+\d+\/\d+\s+\S+\s+\d{4,}-\d\d-\d\d\s+\d\d:\d\d\s(.*)$/

/**
 * tar's decompression option for an archive, derived from its name as pve-container does.
 * Throws `USAGE` for a name that is not a known tar archive name.
 */
export const compressionOption = (archive: string): string | undefined => {
  const table: readonly (readonly [RegExp, string | undefined])[] = [
    [/\.tar$/, undefined],
    [/\.(tar\.zst|tzst)$/, '--zstd'],
    [/\.(tar\.gz|tgz)$/, '--gzip'],
    [/\.(tar\.bz2|tbz2?)$/, '--bzip2'],
    [/\.(tar\.xz|txz)$/, '--xz'],
    [/\.tar\.lzo$/, '--lzop'],
  ]
  for (const [re, opt] of table) if (re.test(archive)) return opt
  throw new BackupError('USAGE', `${archive} does not look like a tar archive (by its name)`, {
    details: { archive },
  })
}

/** Result of {@link checkTarArchive}. */
export interface TarCheckResult {
  /** Number of members listed. */
  members: number
  /** Listing lines that could not be parsed (first 20), as Proxmox only prints them. */
  warnings: string[]
}

/**
 * List `archive` with `tar -tvf ARCHIVE [--zstd …] --numeric-owner`, streaming, and reject it
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
  const compression = compressionOption(archive)
  const group = new Group(opts.signal)
  const args = ['-tvf', archive, ...(compression === undefined ? [] : [compression])]
  const tar = spawnTool('tar', [...args, '--numeric-owner'], {
    stdin: 'ignore',
    errorCode: 'ARCHIVE_INVALID',
    signal: group.signal,
  })
  group.addTool(tar)
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
  await group.settle('ARCHIVE_INVALID')
  if (members === 0) {
    throw new BackupError('ARCHIVE_INVALID', `archive ${archive} has no members`, {
      details: { archive },
    })
  }
  return { members, warnings }
}
