/**
 * Backing up one VM disk into a qcow2 inside the backup dir: the target image is served by
 * qemu-nbd on a private unix socket and written through our own NBD client (never a kernel
 * NBD device), so qcow2 allocation, zero clusters and backing files are QEMU's business.
 */
import { join } from 'node:path'
import type { VmVolume } from '../../api/provider.ts'
import { copyBlocks } from '../../copy/copy.ts'
import type { CopySource, CopyStats } from '../../copy/copy.ts'
import { fileHandleSource } from '../../copy/file.ts'
import { BASE_ALLOCATION, dirtyContext, nbdSource, nbdTarget } from '../../copy/nbd.ts'
import { BackupError } from '../../errors.ts'
import type { TokenBucket } from '../../io/throttle.ts'
import { NbdClient } from '../../nbd/client.ts'
import { createImage } from '../../qemu/img.ts'
import { assertSampleClean, sampleCleanBlocks } from '../../copy/sample.ts'
import { startQemuNbd } from '../../qemu/nbd-server.ts'

/** Options of {@link backupDisk}. */
export interface BackupDiskOptions {
  /** Backup dir being written. */
  dir: string
  device: string
  volume: VmVolume
  /**
   * Backing file, relative to `dir` (e.g. `../qemu-…/drive-scsi0.qcow2`), for an incremental.
   * Only dirty regions are then copied, zero ranges as explicit zeroes.
   */
  backing?: string | undefined
  bucket?: TokenBucket | undefined
  onProgress?: ((done: number, total: number) => void) | undefined
  /** Clean blocks of an incremental to compare with the parent chain (0: none). */
  sampleBlocks?: number | undefined
  /** Receives a line about sampling. */
  log?: ((msg: string) => void) | undefined
  signal: AbortSignal
}

/** Back up one disk to `<dir>/<device>.qcow2`. */
export const backupDisk = async (opts: BackupDiskOptions): Promise<CopyStats> => {
  const { dir, device, volume, signal } = opts
  const file = `${device}.qcow2`
  const incremental = opts.backing !== undefined
  await createImage(file, {
    format: 'qcow2',
    size: volume.size,
    ...(opts.backing === undefined
      ? {}
      : { backingFile: opts.backing, backingFormat: 'qcow2' as const }),
    cwd: dir,
    signal,
  })
  // The target chain is our own, freshly validated by the caller: qemu-nbd may open it.
  const server = await startQemuNbd({
    image: join(dir, file),
    format: 'qcow2',
    discard: true,
    signal,
  })
  try {
    const target = await NbdClient.connect({ path: server.socketPath, signal })
    try {
      let source: CopySource
      let sourceClient: NbdClient | undefined
      if (volume.nbdPath !== undefined) {
        const bitmap = volume.bitmapMode === 'reuse' ? volume.bitmapName : undefined
        if (incremental && bitmap === undefined) {
          throw new BackupError('PROVIDER_FAILED', `incremental backup of ${device} has no bitmap`)
        }
        const contexts = [BASE_ALLOCATION, ...(bitmap === undefined ? [] : [dirtyContext(bitmap)])]
        sourceClient = await NbdClient.connect({
          path: volume.nbdPath,
          exportName: device,
          metaContexts: contexts,
          signal,
        })
        if (sourceClient.size !== volume.size) {
          throw new BackupError(
            'PROVIDER_FAILED',
            `export ${device} has ${sourceClient.size} bytes, expected ${volume.size}`,
          )
        }
        if (bitmap !== undefined && !sourceClient.metaContexts.has(dirtyContext(bitmap))) {
          throw new BackupError(
            'PROVIDER_FAILED',
            `export ${device} does not offer bitmap ${bitmap}`,
          )
        }
        source = nbdSource(sourceClient, {
          dirtyContext: bitmap === undefined ? undefined : dirtyContext(bitmap),
        })
      } else if (volume.fileHandle !== undefined) {
        source = fileHandleSource(volume)
      } else {
        throw new BackupError('PROVIDER_FAILED', `volume ${device} has neither NBD path nor handle`)
      }
      try {
        const stats = await copyBlocks(source, nbdTarget(target), {
          targetIsZero: !incremental,
          bucket: opts.bucket,
          onProgress: opts.onProgress,
          signal,
        })
        const bitmap = volume.bitmapName
        const count = opts.sampleBlocks ?? 0
        if (incremental && sourceClient !== undefined && bitmap !== undefined && count > 0) {
          const r = await sampleCleanBlocks({
            source: sourceClient,
            target,
            dirtyContext: dirtyContext(bitmap),
            count,
            signal,
          })
          opts.log?.(`${device}: ${r.checked} clean blocks compared with the previous backup`)
          assertSampleClean(device, r)
        } else if (incremental && count > 0) {
          opts.log?.(`${device}: clean-block sampling needs the nbd mechanism; skipped`)
        }
        return stats
      } finally {
        await sourceClient?.close()
      }
    } finally {
      await target.close()
    }
  } finally {
    // SIGTERM: qemu-nbd flushes and closes the qcow2 before exiting.
    await server.stop()
  }
}
