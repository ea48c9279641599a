/** Small file-system helpers of the directory store. */
import { lstat, open, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/** Apparent sizes of the regular files directly inside `dir` (no recursion). */
export const fileSizes = async (dir: string): Promise<Record<string, number>> => {
  const out: Record<string, number> = {}
  for (const name of (await readdir(dir)).sort()) {
    const st = await lstat(join(dir, name))
    if (st.isFile()) out[name] = st.size
  }
  return out
}

/** Bytes allocated on disk by the regular files directly inside `dir`. */
export const allocatedBytes = async (dir: string): Promise<number> => {
  let sum = 0
  for (const name of await readdir(dir)) {
    const st = await lstat(join(dir, name))
    if (st.isFile()) sum += st.blocks * 512
  }
  return sum
}

/** fsync a directory, so a rename inside it is durable. */
export const syncDir = async (dir: string): Promise<void> => {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** True if the path exists (without following a final symlink). */
export const pathExists = async (p: string): Promise<boolean> => {
  try {
    await lstat(p)
    return true
  } catch {
    return false
  }
}
