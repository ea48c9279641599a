/**
 * Backing up one VM disk into a qcow2 inside the backup dir: the target image is served by
 * qemu-nbd on a private unix socket and written through our own NBD client (never a kernel
 * NBD device), so qcow2 allocation, zero clusters and backing files are QEMU's business.
 */
import type { VmVolume } from '../../api/provider.ts'
import { copyBlocks } from '../../copy/copy.ts'
import type { CopyOptions, CopySource, CopyStats } from '../../copy/copy.ts'
import { fileHandleSource } from '../../copy/file.ts'
import { firstDifference, hashDisk } from '../../copy/hash.ts'
import type { BlockDigests } from '../../digest/blocks.ts'
import { DiskHasher } from '../../digest/hasher.ts'
import { BASE_ALLOCATION, dirtyContext, nbdSource, nbdTarget } from '../../copy/nbd.ts'
import { BackupError } from '../../errors.ts'
import type { TokenBucket } from '../../io/throttle.ts'
import { NbdClient } from '../../nbd/client.ts'
import type { Dir } from '../../io/beneath.ts'
import { chainSpec, openChain, specJson } from '../../qemu/chain.ts'
import type { Chain, Qcow2Spec } from '../../qemu/chain.ts'
import { compressedClusterSize, compressSpec } from '../../qemu/compress.ts'
import type { CompressSpec } from '../../qemu/compress.ts'
import { createImage } from '../../qemu/img.ts'
import { BACKUP_DIR_RE } from './layout.ts'
import { assertSampleClean, BlockChecker, CleanBlockSampler } from '../../copy/sample.ts'
import { startQemuNbd } from '../../qemu/nbd-server.ts'

/** Options of {@link backupDisk}. */
export interface BackupDiskOptions {
  /** Backup dir being written. */
  dir: Dir
  device: string
  volume: VmVolume
  /**
   * The base of an incremental: its image `guest/<dirName>/<file>`, recorded in the new image's
   * header as `relativePath` (`../<dirName>/<file>`). Only dirty regions are then copied, zero
   * ranges as explicit zeroes.
   */
  base?: { guest: Dir; dirName: string; file: string; relativePath: string } | undefined
  bucket?: TokenBucket | undefined
  /** Position of the copy over the disk, the disk size and the counts so far (`CopyOptions.onProgress`). */
  onProgress?: CopyOptions['onProgress']
  /** Clean blocks of an incremental to compare with the parent chain (0: none). */
  sampleBlocks?: number | undefined
  /** Receives a line about sampling. */
  log?: ((msg: string) => void) | undefined
  /**
   * The disk's block digests to complete: empty for a full backup, the parent's for an
   * incremental (its dirty blocks are hashed again, the others carried forward); undefined
   * only for the benchmark's baseline without digests.
   */
  digests: BlockDigests | undefined
  /** Read the stored image back before returning and compare it with the digests. */
  verifyAfter?: boolean | undefined
  /**
   * Store the image's clusters zstd-compressed (store option `vm-compress`), see
   * `src/qemu/compress.ts`. A disk whose size is no multiple of 4 KiB is stored uncompressed.
   * Default: uncompressed.
   */
  compress?: 'zstd' | undefined
  signal: AbortSignal
}

/** What {@link backupDisk} did. */
export interface DiskBackup {
  stats: CopyStats
  /** The block digests of the disk at the backup's instant (see `BackupDiskOptions`). */
  digests: BlockDigests | undefined
}

/** Back up one disk to `<dir>/<device>.qcow2`. */
export const backupDisk = async (opts: BackupDiskOptions): Promise<DiskBackup> => {
  const { dir, device, volume, signal } = opts
  const { base } = opts
  const incremental = base !== undefined
  await using image = await dir.createFile(`${device}.qcow2`)
  // The base chain is validated again and pinned: the target is opened through an explicit
  // spec over it, never through the names in the headers.
  await using chain =
    base === undefined
      ? undefined
      : await openChain(base.guest, base.dirName, base.file, { dirName: BACKUP_DIR_RE, signal })
  const cluster = opts.compress === 'zstd' ? compressedClusterSize(volume.size) : undefined
  if (opts.compress === 'zstd' && cluster === undefined) {
    opts.log?.(`${device}: stored uncompressed (its size is not a multiple of 4 KiB)`)
  }
  await createImage(image.path, {
    format: 'qcow2',
    size: volume.size,
    clusterSize: cluster,
    compressionType: cluster === undefined ? undefined : 'zstd',
    ...(base === undefined
      ? {}
      : { backingFile: base.relativePath, backingFormat: 'qcow2' as const }),
    signal,
  })
  const target = {
    image: specJson(targetSpec(image.path, chain, cluster !== undefined)),
    discard: true,
    signal,
  }
  // O_DIRECT (cache=none) writes the backup ~30 % faster than through the page cache (measured
  // in bench/); file systems without O_DIRECT get the page cache instead. Not for a compressed
  // image: its compressed clusters are packed back to back at any byte offset (qcow2_alloc_bytes,
  // block/qcow2-refcount.c), and under O_DIRECT QEMU pads each such write to the file's
  // alignment by reading its first and last block (bdrv_co_pwritev_part, block/io.c): measured
  // here on 1 GiB of mixed data, +1.3 CPU-s and +1.5 s. The copy's final flush makes both durable.
  const server = await startQemuNbd({
    ...target,
    cache: cluster === undefined ? 'none' : 'writeback',
    cacheFallback: 'writeback',
    log: opts.log,
  })
  const open: NbdClient[] = []
  try {
    // Several connections keep qemu-nbd's write side busy (nbdcopy does the same); every one is
    // flushed at the end, so durability does not depend on the server's multi-conn promise.
    const targets = await connectPool(CONNECTIONS, open, { path: server.socketPath, signal })
    const targetClient = targets[0]
    if (targetClient === undefined) throw new BackupError('IO', 'no target connection')
    let source: CopySource
    let sourceClient: NbdClient | undefined
    if (volume.nbdPath !== undefined) {
      const bitmap = volume.bitmapMode === 'reuse' ? volume.bitmapName : undefined
      if (incremental && bitmap === undefined) {
        throw new BackupError('PROVIDER_FAILED', `incremental backup of ${device} has no bitmap`)
      }
      const contexts = [BASE_ALLOCATION, ...(bitmap === undefined ? [] : [dirtyContext(bitmap)])]
      const first = await connectPool(1, open, {
        path: volume.nbdPath,
        exportName: device,
        metaContexts: contexts,
        signal,
      })
      sourceClient = first[0]
      if (sourceClient === undefined) throw new BackupError('IO', 'no source connection')
      if (sourceClient.size !== volume.size) {
        throw new BackupError(
          'PROVIDER_FAILED',
          `export ${device} has ${sourceClient.size} bytes, expected ${volume.size}`,
        )
      }
      if (bitmap !== undefined && !sourceClient.metaContexts.has(dirtyContext(bitmap))) {
        throw new BackupError('PROVIDER_FAILED', `export ${device} does not offer bitmap ${bitmap}`)
      }
      // Extra read connections only where the server says they see the same data.
      const readers = sourceClient.flags.canMultiConn
        ? [
            sourceClient,
            ...(await connectPool(CONNECTIONS - 1, open, {
              path: volume.nbdPath,
              exportName: device,
              signal,
            })),
          ]
        : [sourceClient]
      source = nbdSource(sourceClient, {
        dirtyContext: bitmap === undefined ? undefined : dirtyContext(bitmap),
        readers,
      })
    } else if (volume.fileHandle !== undefined) {
      source = fileHandleSource(volume)
    } else {
      throw new BackupError('PROVIDER_FAILED', `volume ${device} has neither NBD path nor handle`)
    }
    // An incremental's clean blocks are sampled as the copy walks the dirty map, and compared
    // while the copy goes on.
    const count = opts.sampleBlocks ?? 0
    const checker =
      incremental && count > 0
        ? new BlockChecker({
            readSource: (off, len) => source.read(off, len, signal),
            readTarget: (off, len) => targetClient.read(off, len, { signal }),
          })
        : undefined
    const sampler =
      checker === undefined
        ? undefined
        : new CleanBlockSampler({
            size: volume.size,
            count,
            onPick: (off) => {
              checker.add(off)
            },
          })
    const hasher = opts.digests === undefined ? undefined : new DiskHasher(opts.digests)
    const stats = await copyBlocks(sampler?.tap(source) ?? source, nbdTarget(targets), {
      targetIsZero: !incremental,
      bucket: opts.bucket,
      onProgress: opts.onProgress,
      hasher,
      writeAlign: cluster,
      signal,
    })
    const digests = hasher?.finish()
    if (sampler !== undefined && checker !== undefined) {
      const r = await checker.finish(sampler.picks())
      opts.log?.(`${device}: ${r.checked} clean blocks compared with the previous backup`)
      assertSampleClean(device, r)
    }
    if (opts.verifyAfter === true && digests !== undefined) {
      const [reader] = await connectPool(1, open, {
        path: server.socketPath,
        metaContexts: [BASE_ALLOCATION],
        signal,
      })
      if (reader === undefined) throw new BackupError('IO', 'no read-back connection')
      const stored = await hashDisk(nbdSource(reader, { readers: targets }), {
        blockSize: digests.blockSize,
        signal,
      })
      const bad = firstDifference(digests, stored)
      if (bad !== undefined) {
        throw new BackupError(
          'VERIFY_FAILED',
          `${device}: the stored image reads back differently at offset ${bad * digests.blockSize}`,
        )
      }
      opts.log?.(`${device}: the stored image reads back to the digests`)
    }
    return { stats, digests }
  } finally {
    for (const c of open) await c.close()
    // SIGTERM: qemu-nbd flushes and closes the qcow2 before exiting.
    await server.stop()
  }
}

/**
 * The explicit spec qemu-nbd serves as the target: the new image over the pinned base chain (an
 * incremental) or nothing (`backing: null`), behind the compress filter when `compress`.
 */
export const targetSpec = (
  image: string,
  chain: Chain | undefined,
  compress: boolean,
): Qcow2Spec | CompressSpec => {
  const spec: Qcow2Spec = {
    driver: 'qcow2',
    file: { driver: 'file', filename: image },
    backing: chain === undefined ? null : chainSpec(chain.links),
  }
  return compress ? compressSpec(spec) : spec
}

/** NBD connections per export for data (reads on the source, writes on the target). */
const CONNECTIONS = 4

/** Open `n` connections; every one is recorded in `open` so the caller closes it. */
const connectPool = async (
  n: number,
  open: NbdClient[],
  opts: Parameters<typeof NbdClient.connect>[0],
): Promise<NbdClient[]> => {
  const out: NbdClient[] = []
  for (let i = 0; i < n; i++) {
    const c = await NbdClient.connect(opts)
    open.push(c)
    out.push(c)
  }
  return out
}
