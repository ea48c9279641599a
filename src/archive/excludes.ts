/**
 * vzdump exclude patterns → GNU tar / mksquashfs arguments, with Proxmox's semantics
 * (pve-container `VZDump/LXC.pm`, DirectoryExample `backup_container`):
 *
 * - `lost+found` is always excluded, in every directory;
 * - a pattern starting with `/` is anchored at the root of the archived directory
 *   (`/var/log` excludes `./var/log` but not `./usr/var/log`);
 * - any other pattern matches in every directory (`*.tmp`, `cache`, `var/log`);
 * - a trailing `/` never matches anything, because tar compares member names without their
 *   trailing slash. Such patterns are passed to tar (as Proxmox does) with a warning.
 *
 * Wildcards are tar's (GNU tar is the reference: Proxmox archives every container with it):
 * `*`, `?` and brackets also match `/` (`--wildcards-match-slash` is tar's default for
 * exclusion), `**` is two `*`, and a pattern naming a directory leaves out its subtree.
 * mksquashfs' own `-wildcards` match per path component and skip leading dots, so they are not
 * used for patterns: squashfs mode walks the tree with tar's matcher (exclude-match.ts,
 * exclude-walk.ts) and hands mksquashfs the exact paths found ({@link squashfsExcludeArgs}).
 * Both modes leave out the same files; the one difference is a pattern that excludes the root
 * itself (`*`, `?`): tar then writes an empty archive, the image keeps an empty root directory.
 *
 * Pure functions; no I/O.
 */
import { BackupError } from '../errors.ts'
import type { TarPattern } from './exclude-match.ts'

/** The directory every container backup skips, in every directory of the tree. */
export const LOST_AND_FOUND = 'lost+found'

/** Validated exclude patterns, split by anchoring, in input order. */
export interface ExcludeRules {
  /** Patterns that match in every directory (input without leading `/`). */
  readonly unanchored: readonly string[]
  /** Patterns anchored at the root, **without** their leading `/`. */
  readonly anchored: readonly string[]
  /** Human-readable warnings (patterns that can never match). */
  readonly warnings: readonly string[]
}

/** Tool arguments produced from exclude patterns, plus warnings for the job log. */
export interface ExcludeArgs {
  readonly args: readonly string[]
  readonly warnings: readonly string[]
}

/**
 * Validate and classify vzdump exclude patterns (not including the implicit `lost+found`).
 * Throws `BackupError('USAGE')` for an empty pattern or one containing NUL or a newline.
 */
export const parseExcludes = (patterns: readonly string[]): ExcludeRules => {
  const unanchored: string[] = []
  const anchored: string[] = []
  const warnings: string[] = []
  for (const pattern of patterns) {
    if (pattern === '') throw new BackupError('USAGE', 'empty exclude pattern')
    if (/[\0\n]/.test(pattern)) {
      throw new BackupError(
        'USAGE',
        `exclude pattern ${JSON.stringify(pattern)} contains NUL or newline`,
        {
          details: { pattern },
        },
      )
    }
    if (pattern.endsWith('/')) {
      warnings.push(
        `exclude pattern '${pattern}' ends with '/' and will never match: tar compares names without a trailing slash`,
      )
    }
    if (pattern.startsWith('/')) anchored.push(pattern.slice(1))
    else unanchored.push(pattern)
  }
  return { unanchored, anchored, warnings }
}

/**
 * GNU tar arguments for `tar c`, exactly as Proxmox builds them:
 * `--no-anchored --exclude=lost+found [--exclude=PAT …] [--anchored --exclude=./PAT …]`.
 * Must precede the source names on the command line (tar's excludes are positional).
 */
export const tarExcludeArgs = (patterns: readonly string[]): ExcludeArgs => {
  const rules = parseExcludes(patterns)
  const args = ['--no-anchored', `--exclude=${LOST_AND_FOUND}`]
  for (const p of rules.unanchored) args.push(`--exclude=${p}`)
  if (rules.anchored.length > 0) {
    args.push('--anchored')
    for (const p of rules.anchored) args.push(`--exclude=./${p}`)
  }
  return { args, warnings: rules.warnings }
}

/**
 * The tar patterns of {@link tarExcludeArgs} (`lost+found`, the unanchored patterns, then the
 * anchored ones with `./`), for {@link tarExcluder}.
 */
export const tarPatterns = (patterns: readonly string[]): TarPattern[] => {
  const rules = parseExcludes(patterns)
  return [
    { pattern: LOST_AND_FOUND, anchored: false },
    ...rules.unanchored.map((pattern) => ({ pattern, anchored: false })),
    ...rules.anchored.map((p) => ({ pattern: `./${p}`, anchored: true })),
  ]
}

/** mksquashfs arguments and the exclude file they read from stdin. */
export interface SquashfsExcludes {
  readonly args: readonly string[]
  /** The `-ef` file, to be mksquashfs' stdin. */
  readonly input: Buffer
}

/**
 * A byte string as a mksquashfs `-wildcards` pattern that matches only itself: every ASCII
 * character but letters and digits escaped with a backslash (fnmatch(3); mksquashfs runs in the
 * C locale, so other bytes are themselves). Components stay split at `/`.
 */
const literalPattern = (rel: string): string =>
  rel
    .split('/')
    .map((part) => part.replace(/[^0-9A-Za-z\x80-\xff]/g, '\\$&'))
    .join('/')

/**
 * mksquashfs arguments that leave out exactly the given paths (relative to the source directory,
 * byte strings as {@link findExcluded} returns them) and nothing else:
 * `-wildcards -ef /dev/stdin [-e PAT …]`. Each path becomes a pattern matching only that name
 * ({@link literalPattern}), one a line of the exclude file; mksquashfs `process_exclude_file`
 * (squashfs-tools 4.5.1 `mksquashfs.c`) skips leading blanks and drops one leading backslash,
 * so each line starts with a backslash of its own. Names with a newline cannot be a line: they
 * go after `-e`, which takes every remaining argument, so these must come **last** on the
 * mksquashfs command line.
 *
 * @throws BackupError `UNSUPPORTED` for a path with a newline that is not UTF-8 (command line
 *   arguments are passed as UTF-8).
 */
export const squashfsExcludeArgs = (paths: readonly string[]): SquashfsExcludes => {
  const lines: string[] = []
  const rest: string[] = []
  for (const rel of paths) {
    const pat = literalPattern(rel)
    if (!rel.includes('\n')) {
      lines.push(`\\${pat}\n`)
      continue
    }
    const text = Buffer.from(pat, 'latin1').toString('utf8')
    if (Buffer.from(text, 'utf8').toString('latin1') !== pat) {
      throw new BackupError(
        'UNSUPPORTED',
        `cannot exclude ${JSON.stringify(rel)} from a squashfs image: a name with a newline that is not UTF-8`,
      )
    }
    rest.push(text)
  }
  const args = ['-wildcards', '-ef', '/dev/stdin']
  if (rest.length > 0) args.push('-e', ...rest)
  return { args, input: Buffer.from(lines.join(''), 'latin1') }
}
