/**
 * vzdump exclude patterns → GNU tar / mksquashfs arguments, with Proxmox's semantics
 * (pve-container `VZDump/LXC.pm`, DirectoryExample `backup_container`):
 *
 * - `lost+found` is always excluded, in every directory;
 * - a pattern starting with `/` is anchored at the root of the archived directory
 *   (`/var/log` excludes `./var/log` but not `./usr/var/log`);
 * - any other pattern matches in every directory (`*.tmp`, `cache`, `var/log`);
 * - a trailing `/` never matches anything, because tar compares member names without their
 *   trailing slash. Such patterns are passed to tar (as Proxmox does) with a warning. mksquashfs
 *   *would* match them against directories, so they are left out of its arguments: the same
 *   excludes give the same tree in both modes.
 *
 * Wildcards follow each tool: tar's `*` also matches `/` in excludes (`--wildcards-match-slash`
 * is tar's default for exclusion), mksquashfs's does not. Keep patterns to one path component per
 * `*` for identical results in both modes.
 *
 * Pure functions; no I/O.
 */
import { BackupError } from '../errors.ts'

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
 * mksquashfs arguments with the same meaning: `-wildcards -e '... lost+found' ['... PAT' …]
 * [PAT …]` (`... ` matches at any depth; anchored patterns lose their `/`). Patterns with a
 * trailing `/` are left out, since tar never matches them. `-e` takes every remaining argument,
 * so these must come **last** on the mksquashfs command line.
 */
export const squashfsExcludeArgs = (patterns: readonly string[]): ExcludeArgs => {
  const rules = parseExcludes(patterns)
  const args = ['-wildcards', '-e', `... ${LOST_AND_FOUND}`]
  const matching = (p: string): boolean => !p.endsWith('/')
  for (const p of rules.unanchored.filter(matching)) args.push(`... ${p}`)
  for (const p of rules.anchored.filter(matching)) args.push(p)
  return { args, warnings: rules.warnings }
}
