/**
 * Proxmox accepts archive names matching `$PVE::Storage::SAFE_CHAR_CLASS_RE` plus `/` and `:`
 * (pve-manager `VZDump.pm`). We also refuse `..` path segments and a leading `/`, since the name
 * becomes a path below the store.
 */
export const ARCHIVE_NAME_RE = /^[A-Za-z0-9._+=/:-]+$/

/** True if `name` is a safe archive name (see {@link ARCHIVE_NAME_RE}). */
export const isValidArchiveName = (name: string): boolean =>
  ARCHIVE_NAME_RE.test(name) &&
  !name.startsWith('/') &&
  !name.split('/').some((seg) => seg === '..' || seg === '.' || seg === '')
