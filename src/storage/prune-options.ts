/**
 * The `prune-backups` property string of a Proxmox VE storage and the `max-protected-backups`
 * setting, parsed and validated the way pve-storage does it.
 *
 * Sources (pve-storage `src/PVE/Storage/Plugin.pm`): the `$prune_backups_format` schema, the
 * format validator `validate_prune_backups`, and the `max-protected-backups` property. The string
 * syntax follows pve-common `PVE::JSONSchema::parse_property_string` (comma-separated `key=value`
 * parts, booleans through `parse_boolean`, integers matching `^[+-]?\d+$`).
 */

import { inspect } from 'node:util'
import type { KeepOptions } from '../api/storage.ts'
import { BackupError } from '../errors.ts'

export type { KeepOptions }

/** The count options, in the order `prune_mark_backup_group` processes them. */
export const KEEP_COUNT_KEYS = [
  'keep-last',
  'keep-hourly',
  'keep-daily',
  'keep-weekly',
  'keep-monthly',
  'keep-yearly',
] as const

/** One of {@link KEEP_COUNT_KEYS}. */
export type KeepCountKey = (typeof KEEP_COUNT_KEYS)[number]

/** Every key of {@link KeepOptions}, in canonical (printing) order. */
export const KEEP_OPTION_KEYS = ['keep-all', ...KEEP_COUNT_KEYS] as const

/** One of {@link KEEP_OPTION_KEYS}. */
export type KeepOptionKey = (typeof KEEP_OPTION_KEYS)[number]

/** The error `validate_prune_backups` dies with, word for word. */
export const KEEP_ALL_CONFLICT_MESSAGE = 'keep-all cannot be set together with other options.'

/** `max-protected-backups` value meaning "no limit". */
export const MAX_PROTECTED_UNLIMITED = -1

const isKeepOptionKey = (k: string): k is KeepOptionKey =>
  (KEEP_OPTION_KEYS as readonly string[]).includes(k)

// PVE::JSONSchema::is_integer
const INTEGER_RE = /^[+-]?\d+$/

const invalid = (message: string, details: Record<string, unknown>): BackupError =>
  new BackupError('CONFIG_INVALID', message, { details })

/**
 * Check that `keep` is structurally a {@link KeepOptions}: only known keys, counts are
 * non-negative safe integers, `keep-all` is a boolean. Keys whose value is `undefined` count as
 * missing. Unlike {@link validatePruneBackups} this does not reject `keep-all` together with
 * positive counts, because `prune_mark_backup_group` itself tolerates that (keep-all wins).
 *
 * Unknown keys are rejected on purpose: in Proxmox a misspelled key with a positive value
 * counts as "some option is set" and disables the keep-all fallback, while the algorithm never
 * reads it, so every backup would be removed.
 *
 * @throws BackupError `CONFIG_INVALID`
 */
export function assertKeepOptions(keep: KeepOptions): void {
  if (typeof keep !== 'object' || (keep as unknown) === null || Array.isArray(keep)) {
    throw invalid('prune-backups: retention options must be an object', { keep })
  }
  for (const [key, value] of Object.entries(keep as Record<string, unknown>)) {
    if (!isKeepOptionKey(key)) {
      throw invalid(
        `prune-backups: unknown option '${key}' (known: ${KEEP_OPTION_KEYS.join(', ')})`,
        { key },
      )
    }
    if (value === undefined) continue
    if (key === 'keep-all') {
      if (typeof value !== 'boolean') {
        throw invalid(`prune-backups: 'keep-all' must be a boolean, got ${inspect(value)}`, {
          key,
          value,
        })
      }
    } else if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw invalid(
        `prune-backups: '${key}' must be a non-negative integer, got ${inspect(value)}`,
        {
          key,
          value,
        },
      )
    }
  }
}

/**
 * Port of `validate_prune_backups` (pve-storage `Plugin.pm`), after a structural check with
 * {@link assertKeepOptions}:
 * - if no count option is positive (all 0 or missing), the result is `{ 'keep-all': true }`,
 *   whatever `keep-all` was (even `false`);
 * - otherwise `keep-all: true` is an error ({@link KEEP_ALL_CONFLICT_MESSAGE}), and the result
 *   is a copy of the count options (zero counts are kept, `keep-all` is dropped).
 *
 * @returns a new, normalized object; the input is not modified.
 * @throws BackupError `CONFIG_INVALID`
 */
export function validatePruneBackups(keep: KeepOptions): KeepOptions {
  assertKeepOptions(keep)
  const res: KeepOptions = {}
  let anyPositive = false
  for (const key of KEEP_COUNT_KEYS) {
    const n = keep[key]
    if (n === undefined) continue
    res[key] = n
    if (n > 0) anyPositive = true
  }
  if (!anyPositive) return { 'keep-all': true }
  if (keep['keep-all'] === true) {
    throw invalid(KEEP_ALL_CONFLICT_MESSAGE, { keep })
  }
  return res
}

// PVE::JSONSchema::parse_boolean
const parseBoolean = (v: string): boolean | undefined => {
  if (/^(?:1|on|yes|true)$/i.test(v)) return true
  if (/^(?:0|off|no|false)$/i.test(v)) return false
  return undefined
}

/**
 * Parse a `prune-backups` property string such as `keep-last=3,keep-daily=7` or `keep-all=1`,
 * like `PVE::JSONSchema::parse_property_string('prune-backups', s)` followed by the format
 * validator `validate_prune_backups`:
 * - parts are separated by `,`; empty or blank parts are skipped (so `""` means "nothing set");
 * - each part is `key=value` with a non-empty value; keys are not trimmed;
 * - only the keys of {@link KeepOptions} are allowed, each at most once;
 * - counts are integers `^[+-]?\d+$` that are ≥ 0 (so `+3`, `03` and `-0` are accepted, like
 *   Proxmox) and, in addition, safe JavaScript integers;
 * - `keep-all` takes Proxmox booleans: `1|on|yes|true` or `0|off|no|false`, case-insensitive;
 * - then {@link validatePruneBackups}: no positive count gives `{ 'keep-all': true }`, and
 *   `keep-all` with a positive count is an error.
 *
 * @throws BackupError `CONFIG_INVALID` with a message naming the offending part.
 */
export function parsePruneBackups(s: string): KeepOptions {
  const raw: KeepOptions = {}
  const seen = new Set<string>()
  for (const part of s.split(',')) {
    if (/^\s*$/.test(part)) continue
    const m = /^([^=]+)=(.+)$/.exec(part)
    if (m === null) {
      throw invalid(
        part.includes('=')
          ? `prune-backups: missing key or value in '${part}'`
          : `prune-backups: expected key=value, got '${part}'`,
        { input: s, part },
      )
    }
    const key = m[1] ?? ''
    const value = m[2] ?? ''
    if (seen.has(key)) {
      throw invalid(`prune-backups: duplicate option '${key}'`, { input: s, key })
    }
    seen.add(key)
    if (!isKeepOptionKey(key)) {
      throw invalid(
        `prune-backups: unknown option '${key}' (known: ${KEEP_OPTION_KEYS.join(', ')})`,
        { input: s, key },
      )
    }
    if (key === 'keep-all') {
      const b = parseBoolean(value)
      if (b === undefined) {
        throw invalid(`prune-backups: 'keep-all' must be a boolean (0 or 1), got '${value}'`, {
          input: s,
          key,
          value,
        })
      }
      raw[key] = b
    } else {
      const n = INTEGER_RE.test(value) ? Number(value) : Number.NaN
      if (!Number.isSafeInteger(n) || n < 0) {
        throw invalid(`prune-backups: '${key}' must be a non-negative integer, got '${value}'`, {
          input: s,
          key,
          value,
        })
      }
      // Number('-0') is -0; store a plain 0.
      raw[key] = n === 0 ? 0 : n
    }
  }
  return validatePruneBackups(raw)
}

/**
 * Print retention options as a `prune-backups` property string, the inverse of
 * {@link parsePruneBackups}. The options are normalized with {@link validatePruneBackups} first,
 * so the output is canonical: keys in {@link KEEP_OPTION_KEYS} order, zero counts kept, and
 * options without any positive count print as `keep-all=1`.
 * `parsePruneBackups(formatPruneBackups(k))` deep-equals `validatePruneBackups(k)`.
 *
 * @throws BackupError `CONFIG_INVALID` when `k` is not valid.
 */
export function formatPruneBackups(k: KeepOptions): string {
  const v = validatePruneBackups(k)
  const parts: string[] = []
  for (const key of KEEP_OPTION_KEYS) {
    const value = v[key]
    if (value === undefined) continue
    parts.push(`${key}=${typeof value === 'boolean' ? (value ? '1' : '0') : String(value)}`)
  }
  return parts.join(',')
}

/**
 * Parse the storage option `max-protected-backups` (pve-storage `Plugin.pm`): an integer ≥ -1,
 * where {@link MAX_PROTECTED_UNLIMITED} (-1) means unlimited. Proxmox's default when the option
 * is unset depends on the user's privileges (`get_max_protected_backups`: unlimited with
 * `Datastore.Allocate`, else 5) and is not decided here.
 *
 * @throws BackupError `CONFIG_INVALID`
 */
export function parseMaxProtected(s: string): number {
  const n = INTEGER_RE.test(s) ? Number(s) : Number.NaN
  if (!Number.isSafeInteger(n) || n < MAX_PROTECTED_UNLIMITED) {
    throw invalid(`max-protected-backups must be an integer >= -1 (-1: unlimited), got '${s}'`, {
      input: s,
    })
  }
  return n === 0 ? 0 : n
}
