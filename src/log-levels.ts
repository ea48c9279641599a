/**
 * pino's level labels in Proxmox's words, the levels of the provider API's log function and of
 * a vzdump task log (`info`, `warn`, `err`; pve-backup-provider-api.md §2.2); debug and trace
 * stay as they are. Apart from log.ts so that the CLI's error line needs no pino.
 */
const PROXMOX_LEVELS: Record<string, string> = { error: 'err', fatal: 'err' }

/** The level word of a `--log-json` line for pino's label `label`. */
export const jsonLevel = (label: string): string => PROXMOX_LEVELS[label] ?? label
