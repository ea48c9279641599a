/**
 * Progress reporting, a guestbackup extension of the provider API: the host passes
 * {@link ProgressInfo} along with `BackupInfo`, and a provider reports through it how far
 * each disk or archive got. Proxmox's API has no such hook (vzdump only reads the task log).
 */
/** Progress of one disk or archive, reported through {@link ProgressInfo.onProgress}. */
export interface ProgressEvent {
  /** Device name (e.g. `drive-scsi0`) or `archive`. */
  item: string
  /**
   * How far the item got, in bytes: for a disk, the position of the copy over it (everything
   * before it is copied or clean, so an incremental passes clean stretches at once); for an
   * archive, bytes written.
   */
  done: number
  /** The disk's size, or the archive's expected size; `done` reaches it when finished. */
  total: number
  /**
   * Of `done`, the bytes read and written as data; the rest was skipped (holes, zero ranges,
   * clean areas of an incremental). Absent: not known (an archive's bytes are all data).
   */
  copied?: number
  /** Of the skipped bytes, those of zero ranges and holes (the rest were clean). */
  zero?: number
}

/** Optional extension of `BackupInfo`: a progress callback. */
export interface ProgressInfo {
  /** Called as work advances; may be called often, must return quickly and not throw. */
  onProgress?: (ev: ProgressEvent) => void
}
