/**
 * Parsers of the `backup` options that follow vzdump's (vzdump(1); the schema is pve-guest-common
 * `src/PVE/VZDump/Common.pm`, applied by pve-manager `PVE/VZDump.pm`).
 */
import { InvalidArgumentError } from 'commander'
import { BackupError } from '../errors.ts'

/** A Proxmox boolean (pve-common `PVE::JSONSchema::parse_boolean`): 1/on/yes/true, 0/off/no/false. */
export const parseBool = (v: string): boolean => {
  if (/^(?:1|on|yes|true)$/i.test(v)) return true
  if (/^(?:0|off|no|false)$/i.test(v)) return false
  throw new InvalidArgumentError('expected 0 or 1')
}

/**
 * `--exclude` is refused: vzdump's `--exclude` lists guest ids to skip, so a path given there
 * must not quietly become an exclude pattern (paths are `--exclude-path`).
 */
export const refuseExclude = (): never => {
  throw new BackupError(
    'USAGE',
    "--exclude is vzdump's list of guests to skip; give container paths with --exclude-path",
  )
}

/**
 * vzdump's standard excludes, added after the `exclude-path` patterns when `stdexcludes` is on
 * (its default): pve-manager `PVE/VZDump.pm`, `sub new`, `push @$findexcl, '/tmp/?*',
 * '/var/tmp/?*', '/var/run/?*.pid'`.
 */
export const STD_EXCLUDES: readonly string[] = ['/tmp/?*', '/var/tmp/?*', '/var/run/?*.pid']

/**
 * The `notes-template` check of pve-manager `PVE/VZDump.pm` (`$verify_notes_template`): one
 * line, escapes `\n` and `\\` only, variables `{{cluster}}`, `{{guestname}}`, `{{node}}` and
 * `{{vmid}}` only. Returns the template.
 */
export const parseNotesTemplate = (template: string): string => {
  if (template.includes('\n')) throw new InvalidArgumentError('contains a line feed')
  const problems: string[] = []
  for (const m of template.matchAll(/\\(.)/gs)) {
    if (!/^[n\\]$/.test(m[1] ?? '')) problems.push(`escape sequence '${m[0]}' at char ${m.index}`)
  }
  for (const m of template.matchAll(/\{\{([^\s{}]+)\}\}/g)) {
    const name = m[1] ?? ''
    if (!/^(?:cluster|guestname|node|vmid)$/.test(name)) {
      // Proxmox's position, `pos($template) - length($var)`: 4 past the opening braces.
      problems.push(`variable '${name}' at char ${m.index + 4}`)
    }
  }
  if (problems.length > 0) throw new InvalidArgumentError(`found unknown: ${problems.join(', ')}`)
  return template
}

/** What the variables of a notes template stand for. */
export interface NotesValues {
  cluster: string
  guestname: string
  node: string
  vmid: number
}

/**
 * Expand a checked notes template as pve-manager `PVE/VZDump.pm` `$generate_notes` does: the
 * escapes first (`\\` -> `\`, `\n` -> a line feed), then the variables.
 */
export const generateNotes = (template: string, v: NotesValues): string => {
  const unescaped = template.replace(/\\(.)/gs, (_, c: string) => (c === 'n' ? '\n' : c))
  return unescaped.replace(/\{\{(cluster|guestname|node|vmid)\}\}/g, (_, k: keyof NotesValues) =>
    String(v[k]),
  )
}
