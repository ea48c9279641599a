/**
 * Offline VM disks as backup sources: qcow2 or raw files and block devices, served read-only by
 * qemu-nbd on a private socket for the `nbd` mechanism, or read directly for `file-handle`.
 * The format is never probed: `.qcow2` files are qcow2 (checked by magic), everything else raw.
 */
import { open, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import type { Region, VolumeReader } from '../api/provider.ts'
import { dirtyExtents } from '../nbd/extents.ts'
import { dirtyContext } from '../copy/nbd.ts'
import { BackupError } from '../errors.ts'
import { NbdClient } from '../nbd/client.ts'
import { imageInfo } from '../qemu/img.ts'
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

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb])

/** Decide and check the format of a disk given on the command line. */
export const inspectDisk = async (device: string, path: string): Promise<DiskSpec> => {
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
  const head = Buffer.alloc(4)
  try {
    await fh.read(head, 0, 4, 0)
  } finally {
    await fh.close()
  }
  const isQcow2 = head.equals(QCOW2_MAGIC)
  if (basename(abs).endsWith('.qcow2')) {
    if (!isQcow2) throw new BackupError('USAGE', `disk ${device}: ${path} is not a qcow2 image`)
    return { device, path: abs, format: 'qcow2' }
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
  return { device, path: abs, format: 'raw' }
}

/** Virtual size of a disk in bytes. */
export const diskSize = async (disk: DiskSpec, signal?: AbortSignal): Promise<number> => {
  if (disk.format === 'raw') {
    const st = await stat(disk.path)
    if (st.isFile()) return st.size
  }
  const info = await imageInfo(disk.path, disk.format, { signal })
  return info['virtual-size']
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

/** A {@link VolumeReader} plus how to release it. */
export interface OpenedReader {
  reader: VolumeReader
  /** Dirty regions (the whole disk without a bitmap), then undefined. */
  nextDirtyRegion: () => Promise<Region | undefined>
  close(): Promise<void>
}

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
      close: () => fh.close(),
    }
  }
  const server = await serveDisk(disk, signal, bitmap)
  try {
    const opened = await openNbdReader(server.socketPath, disk.device, bitmap, signal)
    return {
      ...opened,
      close: async () => {
        await opened.close()
        await server.stop()
      },
    }
  } catch (e) {
    await server.stop()
    throw e
  }
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
    close: () => client.close(),
  }
}
