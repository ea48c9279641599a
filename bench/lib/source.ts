/**
 * Source images. The random one is written with bounded memory: one reused chunk buffer is
 * filled from the CSPRNG and written at its offset into a sparse raw file, which qemu-img then
 * converts to qcow2 (holes stay unallocated). The raw file is removed afterwards.
 */
import { randomFill } from 'node:crypto'
import { open, rm } from 'node:fs/promises'
import { promisify } from 'node:util'
import { run } from './procs.ts'

const randomFillAsync = promisify(randomFill)

/** Layout of a partly filled disk. */
export interface RandomLayout {
  /** Virtual size in bytes. */
  virtualSize: number
  /** Bytes of random data per chunk. */
  chunkSize: number
  /** Distance between chunk starts. */
  stride: number
  chunks: number
}

/** The benchmark layout: 2 GiB, 64 × 16 MiB random, one every 32 MiB. */
export const LAB_LAYOUT: RandomLayout = {
  virtualSize: 2 * 1024 ** 3,
  chunkSize: 16 * 1024 ** 2,
  stride: 32 * 1024 ** 2,
  chunks: 64,
}

/** Bytes of data in a layout. */
export const dataBytes = (l: RandomLayout): number => l.chunkSize * l.chunks

/** Write a qcow2 with random data in the layout's chunks and holes elsewhere. */
export const makeRandomQcow2 = async (
  qcow2: string,
  layout: RandomLayout,
  signal?: AbortSignal,
): Promise<void> => {
  if ((layout.chunks - 1) * layout.stride + layout.chunkSize > layout.virtualSize) {
    throw new Error('layout does not fit the virtual size')
  }
  const raw = `${qcow2}.raw`
  const fh = await open(raw, 'w')
  try {
    await fh.truncate(layout.virtualSize)
    const buf = Buffer.allocUnsafe(layout.chunkSize)
    for (let i = 0; i < layout.chunks; i++) {
      signal?.throwIfAborted()
      await randomFillAsync(buf)
      let done = 0
      while (done < buf.length) {
        const { bytesWritten } = await fh.write(
          buf,
          done,
          buf.length - done,
          i * layout.stride + done,
        )
        done += bytesWritten
      }
    }
  } finally {
    await fh.close()
  }
  try {
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2])
  } finally {
    await rm(raw, { force: true })
  }
}

/** An empty (all holes) qcow2. */
export const makeEmptyQcow2 = async (qcow2: string, virtualSize: number): Promise<void> => {
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, String(virtualSize)])
}

/** Read a file once so that it is in the page cache ("warm"). */
export const warmRead = async (path: string): Promise<void> => {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024)
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
    }
  } finally {
    await fh.close()
  }
}
