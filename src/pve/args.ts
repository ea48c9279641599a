/**
 * Perl-shaped values as the shim forwards them (docs/pve-protocol.md "Request"), and the store
 * a request's `scfg` describes. Perl's JSON encoder writes a scalar that was last used as a
 * string as a JSON string ("100"), so integers are accepted as numbers or decimal strings, and
 * booleans as Perl truth values (0/1, "0"/"1", "", true/false).
 */
import { resolve } from 'node:path'
import * as z from 'zod'
import { BackupError } from '../errors.ts'
import type { LockPolicy } from '../io/lock.ts'
import { StoreLayout } from '../provider/directory/layout.ts'
import { parseStoreOptions } from '../provider/directory/options.ts'
import { DirectoryStorage } from '../provider/directory/storage.ts'
import { parsePruneBackups } from '../storage/prune-options.ts'
import type { KeepOptions } from '../storage/prune-options.ts'

/** An integer, as a JSON number or a decimal string. */
export const PerlInt = z
  .union([z.number(), z.string().regex(/^[+-]?\d{1,16}$/, 'not an integer')])
  .transform(Number)
  .pipe(z.number().int())

/** A Perl truth value: 0/1, "0"/"1", "", true/false, or undef (false). */
export const PerlBool = z
  .union([
    z.boolean(),
    z.literal(0),
    z.literal(1),
    z.literal('0'),
    z.literal('1'),
    z.literal(''),
    z.null(),
  ])
  .transform((v) => v === true || v === 1 || v === '1')

/** A guest id. */
export const Vmid = PerlInt.pipe(z.number().min(1).max(999_999_999))

/** A guest type. */
export const VmType = z.enum(['qemu', 'lxc'])

/** A Perl string argument. */
export const PerlString = z.string()

/**
 * `prune-backups` as Proxmox hands it: the property string of storage.cfg, or the parsed hash
 * (`{ "keep-last": 3 }`) that `prune_backups` receives. Both go through Proxmox's own parser
 * and validator (`parsePruneBackups`).
 */
export const PruneBackups = z
  .union([z.string(), z.record(z.string(), z.union([z.string(), z.number(), z.boolean()]))])
  .transform((v) =>
    typeof v === 'string'
      ? v
      : Object.entries(v)
          .map(([k, x]) => `${k}=${typeof x === 'boolean' ? (x ? 1 : 0) : x}`)
          .join(','),
  )

/** Parse a `prune-backups` value into retention options. @throws `CONFIG_INVALID` */
export const keepOptions = (spec: string): KeepOptions => parsePruneBackups(spec)

/**
 * The storage.cfg keys guestbackup reads. Proxmox's own (`path`, `prune-backups`,
 * `max-protected-backups`) keep their names; guestbackup's are prefixed `gb-`, since storage.cfg
 * properties share one namespace across every plugin. Other keys (`type`, `content`, `nodes`,
 * `shared`, `disable` …) are Proxmox's business and ignored.
 */
const ScfgSchema = z.object({
  path: z.string().startsWith('/', 'path must be absolute'),
  'prune-backups': PruneBackups.optional(),
  'max-protected-backups': PerlInt.optional(),
  'gb-vm-backup-mode': z.enum(['full', 'incremental']).optional(),
  'gb-lxc-backup-mode': z.enum(['tar', 'squashfs']).optional(),
  'gb-incremental-sample': PerlInt.optional(),
  'gb-verify-after-backup': z.enum(['first', 'always', 'never']).optional(),
  'gb-vm-compress': z.enum(['zstd', 'none']).optional(),
  'gb-lxc-compress': z.enum(['zstd', 'gzip', 'lzo', 'none']).optional(),
})

/**
 * The directory store of a Proxmox storage: `scfg.path` is the store directory and storage.cfg
 * is the store's configuration (the store file `init` writes is not read). VM disks are always
 * read over NBD: Proxmox cannot forward a `file-handle` mechanism's callbacks. `lock`: how
 * its calls wait for guest locks (service.ts `PVE_LOCK_WAIT_MS`).
 * @throws BackupError `CONFIG_INVALID`
 */
export const storageFromScfg = (
  storeid: string,
  scfg: unknown,
  lock: LockPolicy = {},
): DirectoryStorage => {
  const r = ScfgSchema.safeParse(scfg)
  if (!r.success) {
    const i = r.error.issues[0]
    const where = i === undefined ? 'scfg' : i.path.join('.') || 'scfg'
    throw new BackupError(
      'CONFIG_INVALID',
      `invalid storage '${storeid}' configuration: ${where}: ${i?.message ?? 'invalid'}`,
    )
  }
  const c = r.data
  const root = resolve(c.path)
  const input = {
    path: root,
    'vm-backup-mechanism': 'nbd',
    'prune-backups': c['prune-backups'],
    'max-protected-backups': c['max-protected-backups'],
    'vm-backup-mode': c['gb-vm-backup-mode'],
    'lxc-backup-mode': c['gb-lxc-backup-mode'],
    'incremental-sample': c['gb-incremental-sample'],
    'verify-after-backup': c['gb-verify-after-backup'],
    'vm-compress': c['gb-vm-compress'],
    'lxc-compress': c['gb-lxc-compress'],
  }
  const options = parseStoreOptions(
    Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)),
  )
  return new DirectoryStorage(new StoreLayout(root), options, storeid, storeid, lock)
}

/**
 * Parse `args` against a tuple of schemas: missing trailing arguments are `null` (Perl's
 * undef), extra ones (caller quirks such as pve-container's `$storeid`) are ignored.
 * @throws BackupError `PVE_ARGS`
 */
export const parseArgs = <const T extends readonly [z.ZodType, ...z.ZodType[]]>(
  method: string,
  schemas: T,
  args: readonly unknown[],
): { [K in keyof T]: z.output<T[K]> } => {
  const out: unknown[] = []
  for (const [i, schema] of schemas.entries()) {
    const r = schema.safeParse(args[i] ?? null)
    if (!r.success) {
      const issue = r.error.issues[0]
      const at = issue?.path.length ? `.${issue.path.join('.')}` : ''
      throw new BackupError(
        'PVE_ARGS',
        `bad arguments to ${method}: argument ${i + 1}${at}: ${issue?.message ?? 'invalid'}`,
      )
    }
    out.push(r.data)
  }
  return out as { [K in keyof T]: z.output<T[K]> }
}

/** The store directory of a storage.cfg section ('' when it names none). */
export const scfgPath = (scfg: Readonly<Record<string, unknown>>): string => {
  const p = scfg['path']
  return typeof p === 'string' ? p : ''
}
