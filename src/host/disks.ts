/**
 * Offline VM disks as backup sources: qcow2 or raw files and block devices, served read-only by
 * qemu-nbd on a private socket for the `nbd` mechanism, or read directly for `file-handle`.
 * The format is never probed (see {@link inspectDisk}); non-raw images are read through qemu-nbd
 * with an explicit driver.
 */
import { open, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import type { Region, VolumeReader } from '../api/provider.ts'
import { dirtyExtents } from '../nbd/extents.ts'
import { dirtyContext } from '../copy/nbd.ts'
import { BackupError } from '../errors.ts'
import { CleanupStack } from '../io/cleanup.ts'
import { NbdClient } from '../nbd/client.ts'
import { imageInfo, imageInUse } from '../qemu/img.ts'
import { detectImageFormat, MAGIC_BYTES } from '../qemu/magic.ts'
import type { ImageFormat } from '../qemu/img.ts'
import { startQemuNbd } from '../qemu/nbd-server.ts'
import type { QemuNbd } from '../qemu/nbd-server.ts'

/** One disk of an offline VM. */
export interface DiskSpec {
  /** Device name as Proxmox names it, e.g. `drive-scsi0`. */
  device: string
  /** Image file or block device. */
  path: string
  format: ImageFormat
}

/**
 * Decide and check the format of a disk given on the command line, never by probing: the
 * stated `format`, else qcow2 for a `*.qcow2` name and raw for anything else. The file's
 * signature must agree: a stated format must be what the file is, and a file assumed raw whose
 * head is an image format QEMU knows (qcow2, QED, VMDK, VDI, VHDX, LUKS, VHD) is refused, since
 * its raw bytes are not the guest's disk; `format=raw` stated explicitly stores the bytes as they
 * are. A disk a running QEMU holds open for writing is refused: it changes under the backup.
 */
export const inspectDisk = async (
  device: string,
  path: string,
  format?: ImageFormat,
  signal?: AbortSignal,
): Promise<DiskSpec> => {
  const abs = resolve(path)
  let st
  try {
    st = await stat(abs)
  } catch (e) {
    throw new BackupError('USAGE', `disk ${device}: cannot access ${path}`, { cause: e })
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    throw new BackupError('USAGE', `disk ${device}: ${path} is not a file or block device`)
  }
  const fh = await open(abs, 'r').catch((e: unknown) => {
    throw new BackupError('USAGE', `disk ${device}: cannot read ${path}`, { cause: e })
  })
  const head = Buffer.alloc(MAGIC_BYTES)
  let got: number
  {
    await using file = fh
    got = (await file.read(head, 0, MAGIC_BYTES, 0)).bytesRead
  }
  const seen = detectImageFormat(head.subarray(0, got))
  const fmt = format ?? (basename(abs).endsWith('.qcow2') ? 'qcow2' : 'raw')
  if (fmt === 'raw') {
    if (format === undefined && seen !== undefined) {
      throw new BackupError(
        'USAGE',
        `disk ${device}: ${path} is a ${seen} image, not raw: give ${device.replace(/^drive-/, '')}=${path},format=${seen === 'luks' || seen === 'vpc' ? 'raw' : seen} (or format=raw to store its bytes as they are)`,
      )
    }
    if (st.isFile() && st.size === 0) {
      throw new BackupError('USAGE', `disk ${device}: ${path} is empty`)
    }
    if (st.isFile() && st.size % 512 !== 0) {
      throw new BackupError(
        'USAGE',
        `disk ${device}: ${path} is not a disk image (${st.size} bytes is not a multiple of 512)`,
      )
    }
  } else if (seen !== fmt) {
    throw new BackupError(
      'USAGE',
      `disk ${device}: ${path} is not a ${fmt} image (${seen === undefined ? 'no known signature' : `it is ${seen}`})`,
    )
  }
  if (await imageInUse(abs, signal)) {
    throw new BackupError(
      'USAGE',
      `disk ${device}: ${path} is in use by a running QEMU (it holds the image's write lock): back up a running VM with --qmp SOCKET`,
    )
  }
  return { device, path: abs, format: fmt }
}

/** A persistent dirty bitmap of a qcow2 image, as `qemu-img info` lists it. */
export interface QcowBitmap {
  name: string
  flags: string[]
}

/** What {@link diskState} reads. */
export interface DiskState {
  /** Virtual size in bytes. */
  size: number
  /** The image's persistent dirty bitmaps (qcow2 only; none for other formats). */
  bitmaps: QcowBitmap[]
}

/**
 * Virtual size and dirty bitmaps of a disk, from one `qemu-img info` (none for a raw file: its
 * size is its length). qemu-img opens the image without sharing write access, so a disk a
 * running QEMU writes is refused here too (QEMU's docs/system/qemu-block-drivers.rst, "Disk
 * image file locking").
 */
export const diskState = async (disk: DiskSpec, signal?: AbortSignal): Promise<DiskState> => {
  if (disk.format === 'raw') {
    const st = await stat(disk.path)
    if (st.isFile()) return { size: st.size, bitmaps: [] }
  }
  const info = await imageInfo(disk.path, disk.format, { signal })
  const bitmaps = disk.format === 'qcow2' ? (info['format-specific']?.data?.bitmaps ?? []) : []
  return {
    size: info['virtual-size'],
    bitmaps: bitmaps.map((b) => ({ name: b.name, flags: b.flags })),
  }
}

/** Serve a disk read-only over NBD; export name = device name. */
export const serveDisk = (
  disk: DiskSpec,
  signal?: AbortSignal,
  bitmap?: string,
): Promise<QemuNbd> =>
  startQemuNbd({
    image: disk.path,
    format: disk.format,
    readOnly: true,
    exportName: disk.device,
    ...(bitmap === undefined ? {} : { bitmap }),
    signal,
  })

/** A {@link VolumeReader} plus how to release it (`close()`, or dispose). */
export interface OpenedReader extends AsyncDisposable {
  reader: VolumeReader
  /** Dirty regions (the whole disk without a bitmap), then undefined. */
  nextDirtyRegion: () => Promise<Region | undefined>
  close(): Promise<void>
}

/** `close` as both `close()` and `[Symbol.asyncDispose]()`. */
const closable = (
  close: () => Promise<void>,
): Pick<OpenedReader, 'close' | typeof Symbol.asyncDispose> => ({
  close,
  [Symbol.asyncDispose]: close,
})

/** The whole disk as one region, once. */
const wholeDisk = (size: number): (() => Promise<Region | undefined>) => {
  let given = false
  return () => {
    const r = given || size === 0 ? undefined : ([0, size] as const)
    given = true
    return Promise.resolve(r)
  }
}

/**
 * Open a disk of `size` bytes for the `file-handle` mechanism. Raw: the file itself; qcow2:
 * through qemu-nbd.
 */
export const openDiskReader = async (
  disk: DiskSpec,
  size: number,
  signal?: AbortSignal,
  bitmap?: string,
): Promise<OpenedReader> => {
  if (disk.format === 'raw') {
    const fh: FileHandle = await open(disk.path, 'r')
    return {
      reader: {
        async read(position, length, _signal, into) {
          const buf = into === undefined ? Buffer.allocUnsafe(length) : into.subarray(0, length)
          let got = 0
          while (got < length) {
            const { bytesRead } = await fh.read(buf, got, length - got, position + got)
            if (bytesRead === 0) throw new BackupError('IO', `${disk.path}: read past end`)
            got += bytesRead
          }
          return buf
        },
      },
      nextDirtyRegion: wholeDisk(size),
      ...closable(() => fh.close()),
    }
  }
  // Until the reader is handed over, a failure stops the server again.
  await using acquired = new CleanupStack()
  const server = acquired.use(await serveDisk(disk, signal, bitmap))
  const opened = acquired.use(await openNbdReader(server.socketPath, disk.device, bitmap, signal))
  // Handed over: the client is closed first, then the server.
  const owned = acquired.move()
  return { ...opened, ...closable(() => owned[Symbol.asyncDispose]()) }
}

/**
 * An NBD export as a `file-handle` volume: random reads, and the dirty regions of `bitmap`
 * (`qemu:dirty-bitmap:<bitmap>`, bit 0 set = dirty) or else the whole export.
 */
export const openNbdReader = async (
  path: string,
  exportName: string,
  bitmap: string | undefined,
  signal?: AbortSignal,
): Promise<OpenedReader> => {
  const ctx = bitmap === undefined ? undefined : dirtyContext(bitmap)
  const client = await NbdClient.connect({
    path,
    exportName,
    ...(ctx === undefined ? {} : { metaContexts: [ctx] }),
    ...(signal ? { signal } : {}),
  })
  const extents =
    ctx === undefined ? undefined : dirtyExtents(client, ctx, signal ? { signal } : {})
  return {
    nextDirtyRegion:
      extents === undefined
        ? wholeDisk(client.size)
        : async () => {
            const r = await extents.next()
            return r.done === true ? undefined : ([r.value.offset, r.value.length] as const)
          },
    reader: {
      read: (position, length, sig, into) =>
        client.read(position, length, {
          ...(sig ? { signal: sig } : {}),
          ...(into ? { into } : {}),
        }),
    },
    ...closable(() => client.close()),
  }
}
