/**
 * The data of one backup: the disks of a VM (each device copied into `<device>.qcow2` of the
 * backup dir, as an incremental on its base when the host reuses the bitmap the store asked
 * for, else full), or the archive of a container.
 */
import { DEVICE_NAME_RE } from '../../api/names.ts'
import type { BackupInfo, ProviderLogFunction, VmVolume } from '../../api/provider.ts'
import type { ProgressInfo } from '../../api/progress.ts'
import { BackupError, isBackupError, toBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import { forceFull } from './incremental.ts'
import type { IncrementalBase } from './incremental.ts'
import type { ManifestDisk } from './manifest.ts'
import { backupDisk } from './vm-disk.ts'
import { TokenBucket } from '../../io/throttle.ts'
import { BlockDigests } from '../../digest/blocks.ts'
import { readDiskDigests, writeDiskDigests } from './digests.ts'
import { parseVolname } from './layout.ts'
import { readManifest } from './manifest.ts'

/** What {@link backupVmDisks} needs. */
export interface VmDisksInput {
  /** The guest dir (incremental bases live there). */
  guest: Dir
  /** The backup dir being written. */
  partial: Dir
  /** The bases backupVmQueryIncremental found, by device. */
  bases: Readonly<Record<string, Extract<IncrementalBase, { kind: 'base' }>>>
  volumes: Readonly<Record<string, VmVolume>>
  info: BackupInfo & ProgressInfo
  sampleBlocks: number
  /** When to read stored images back (store option `verify-after-backup`). */
  verifyAfter: 'first' | 'always' | 'never'
  /** How the images are stored (store option `vm-compress`). Default `none`. */
  compress?: 'zstd' | 'none' | undefined
  log: ProviderLogFunction
  /** Runs the writing of one file of the backup (names the store when it is full). */
  inStore?: <T>(file: string, fn: () => Promise<T>) => Promise<T>
}

/** What the disks of a VM backup became. */
export interface VmDisks {
  disks: Record<string, ManifestDisk>
  /** The backup the first incremental disk builds on. */
  parent: string | undefined
  /** Devices whose host bitmap continues this backup once backupVm returns: their sizes. */
  bitmaps: Record<string, number>
}

/** Back up every disk of `o.volumes` into `o.partial`. */
export const backupVmDisks = async (o: VmDisksInput): Promise<VmDisks> => {
  const { volumes, info, log } = o
  const bucket = new TokenBucket({ bytesPerSecond: info.bandwidthLimit })
  const disks: Record<string, ManifestDisk> = {}
  /** Devices whose host bitmap continues this backup once backupVm returns: their sizes. */
  const bitmaps: Record<string, number> = {}
  let parent: string | undefined
  // Every disk is announced before the first is copied: a progress total covers them all.
  for (const [item, v] of Object.entries(volumes)) {
    info.onProgress?.({ item, done: 0, total: v.size, copied: 0, zero: 0 })
  }
  for (const device of Object.keys(volumes).sort()) {
    const volume = volumes[device]
    if (volume === undefined) continue
    if (!DEVICE_NAME_RE.test(device)) {
      throw new BackupError('PROVIDER_FAILED', `invalid device name '${device}'`)
    }
    let base = volume.bitmapMode === 'reuse' ? o.bases[device] : undefined
    if (volume.bitmapMode === 'reuse' && base === undefined) {
      log('warn', `${device}: the host reused a bitmap this store did not ask for: full`)
    }
    if (base !== undefined && volume.bitmapGeneration !== base.generation) {
      log(
        'warn',
        `${device}: bitmap ${volume.bitmapGeneration ?? '?'} is not ${base.generation}: full`,
      )
      base = undefined
    }
    // A full backup ignores any bitmap: read the whole disk into a fresh image.
    const vol: VmVolume = base === undefined ? { ...volume, bitmapMode: 'none' } : volume
    log('info', `${device}: ${base ? `incremental on ${base.volname}` : 'full'} backup`)
    let stats
    let digests
    const inStore = o.inStore ?? ((_file, fn) => fn())
    try {
      const parentDigests =
        base === undefined ? undefined : await baseDigests(o.guest, base.volname, device)
      ;({ stats, digests } = await inStore(`${device}.qcow2`, () =>
        backupDisk({
          dir: o.partial,
          device,
          volume: vol,
          base: base === undefined ? undefined : { guest: o.guest, ...base },
          bucket,
          onProgress: (done, total, s) =>
            info.onProgress?.({
              item: device,
              done,
              total,
              copied: s.dataBytes,
              zero: s.zeroBytes,
            }),
          sampleBlocks: o.sampleBlocks,
          log: (msg) => {
            log('info', msg)
          },
          digests: WITHOUT_DIGESTS ? undefined : (parentDigests ?? BlockDigests.empty(volume.size)),
          verifyAfter:
            o.verifyAfter === 'always' || (o.verifyAfter === 'first' && base === undefined),
          compress: o.compress === 'zstd' ? 'zstd' : undefined,
          signal: info.signal,
        }),
      ))
    } catch (e) {
      if (isBackupError(e, 'VERIFY_FAILED')) await forceFull(o.guest, e.message)
      throw e
    }
    log(
      'info',
      `${device}: ${stats.dataBytes} bytes data, ${stats.zeroBytes} bytes zero of ${stats.totalBytes}`,
    )
    disks[device] = {
      file: `${device}.qcow2`,
      format: 'qcow2',
      size: volume.size,
      ...(base ? { parent: base.volname } : {}),
      ...(base?.generation === undefined ? {} : { bitmap: base.generation }),
      ...(volume.nextBitmapGeneration === undefined
        ? {}
        : { nextBitmap: volume.nextBitmapGeneration }),
      bitmapMode: vol.bitmapMode,
      dataBytes: stats.dataBytes,
      zeroBytes: stats.zeroBytes,
      ...(digests === undefined
        ? {}
        : {
            digest: await inStore(`${device}.blocks`, () =>
              writeDiskDigests(o.partial, device, digests),
            ),
          }),
    }
    parent ??= base?.volname
    // QEMU commits a `new` or reused bitmap when backupVm returns (pve-qemu backup-access
    // teardown with success): from then on it holds the writes since this backup.
    if (volume.bitmapMode !== 'none') bitmaps[device] = volume.size
  }
  return { disks, parent, bitmaps }
}

/**
 * The block digests of `device` in the base backup `volname`, checked against its manifest:
 * an incremental carries its clean blocks' digests forward. `VERIFY_FAILED` when they do not
 * match (the next backup is then full).
 */
const baseDigests = async (guest: Dir, volname: string, device: string): Promise<BlockDigests> => {
  try {
    const ref = parseVolname(volname)
    await using dir = await guest.openDir(ref.dirName)
    const disk = (await readManifest(dir, ref)).disks?.[device]
    if (disk === undefined) throw new BackupError('ARCHIVE_INVALID', `${volname} has no ${device}`)
    return await readDiskDigests(dir, disk)
  } catch (e) {
    // Missing, unreadable or damaged, the base's digests cannot be carried: like a mismatch,
    // this fails the backup and forces the next one full (else every run would fail alike).
    if (isBackupError(e, 'VERIFY_FAILED') || isBackupError(e, 'ABORTED')) throw e
    throw new BackupError(
      'VERIFY_FAILED',
      `the block digests of ${volname} ${device} cannot be read: ${toBackupError(e).message}`,
      { cause: e },
    )
  }
}

/**
 * The benchmark's baseline (bench/README.md): backups without digests, recorded as version 1
 * manifests (unverifiable), to measure what hashing costs. Never set otherwise.
 */
const WITHOUT_DIGESTS = process.env['GUESTBACKUP_BENCH_WITHOUT_DIGESTS'] === '1'
