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

/**
 * A VM device name as it becomes a file name in a backup (`drive-scsi0`, `drive-efidisk0`):
 * what Proxmox device names and QEMU qdev ids use, never a path.
 */
export const DEVICE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/

/** True if `name` is a valid device name (see {@link DEVICE_NAME_RE}). */
export const isValidDeviceName = (name: string): boolean => DEVICE_NAME_RE.test(name)

/** A file name inside a backup: one plain component, no leading dot, no `/`. */
export const BACKUP_FILE_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$/
