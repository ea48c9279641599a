/**
 * A small real ext4 for full-disk tests: an image file served by fuse2fs (e2fsprogs' FUSE
 * driver, https://manpages.debian.org/bookworm/fuse2fs/fuse2fs.1.en.html), so statfs, ENOSPC
 * and the space QEMU allocates are the kernel's, with no loop device and no mount(8).
 */
import assert from 'node:assert/strict'
import { mkdir, rm, statfs } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'

/** A mounted small file system; disposing it unmounts it (the image stays in its dir). */
export interface SmallFs extends AsyncDisposable {
  /** Where it is mounted. */
  readonly mnt: string
  /** Bytes free for an unprivileged writer (statfs `bavail`). */
  freeBytes(): Promise<number>
  /** Fill it with one file until `bytes` stay free (within one 4 KiB block). */
  leaveFree(bytes: number): Promise<void>
  /** Remove the filler: the space returns. */
  unfill(): Promise<void>
  unmount(): Promise<void>
}

/** Make a `mib` MiB ext4 (no reserved blocks) as `<dir>/<name>.img`, mounted at `<dir>/<name>`. */
export const smallFs = async (dir: string, name = 'small', mib = 64): Promise<SmallFs> => {
  const mnt = join(dir, name)
  const image = join(dir, `${name}.img`)
  await mkdir(mnt)
  await run('truncate', ['-s', `${mib}M`, image])
  await run('mkfs.ext4', ['-q', '-F', '-m', '0', image])
  await run('fuse2fs', [image, mnt])
  const filler = join(mnt, 'filler')
  const freeBytes = async (): Promise<number> => {
    const s = await statfs(mnt)
    return s.bavail * s.bsize
  }
  const unfill = (): Promise<void> => rm(filler, { force: true, recursive: true })
  const unmount = async (): Promise<void> => {
    await run('fusermount3', ['-u', mnt]).catch(() => undefined)
  }
  return {
    mnt,
    freeBytes,
    unfill,
    unmount,
    leaveFree: async (bytes) => {
      await unfill()
      assert.ok((await freeBytes()) > bytes, `only ${await freeBytes()} bytes free`)
      await mkdir(filler)
      // ext4 needs blocks of its own (extent tree) for a large file: fill in pieces, halving a
      // piece that does not fit, until no more than `bytes` (give or take a block) are free.
      let piece = (await freeBytes()) - bytes
      for (let n = 0; piece >= 4096; n++) {
        const len = piece - (piece % 4096)
        const ok = await run('fallocate', ['-l', String(len), join(filler, String(n))]).then(
          () => true,
          () => false,
        )
        const left = (await freeBytes()) - bytes
        piece = ok ? Math.min(left, len) : Math.floor(len / 2)
      }
    },
    [Symbol.asyncDispose]: unmount,
  }
}
