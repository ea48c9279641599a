/**
 * Progress reporting, a guestbackup extension of the provider API: the host passes
 * {@link ProgressInfo} along with `BackupInfo`, and a provider reports through it how far
 * each disk or archive got. Proxmox's API has no such hook (vzdump only reads the task log).
 */
/** Progress of one disk or archive, reported through {@link ProgressInfo.onProgress}. */
export interface ProgressEvent {
  /** Device name (e.g. `drive-scsi0`) or `archive`. */
  item: string
  /** Bytes done so far. */
  done: number
  /** Bytes in total; `done` reaches it when the item is finished. */
  total: number
}

/** Optional extension of `BackupInfo`: a progress callback. */
export interface ProgressInfo {
  /** Called as work advances; may be called often, must return quickly and not throw. */
  onProgress?: (ev: ProgressEvent) => void
}
