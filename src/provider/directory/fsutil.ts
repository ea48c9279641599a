/** Small file-system helpers of the directory store. */
import type { Dir } from '../../io/beneath.ts'

/** Apparent sizes of the regular files directly inside `dir` (no recursion). */
export const fileSizes = async (dir: Dir): Promise<Record<string, number>> => {
  const out: Record<string, number> = {}
  for (const e of await dir.list()) {
    const st = await dir.lstat(e.name)
    if (st?.isFile() === true) out[e.name] = st.size
  }
  return out
}

/** Bytes allocated on disk by the regular files directly inside `dir`. */
export const allocatedBytes = async (dir: Dir): Promise<number> => {
  let sum = 0
  for (const e of await dir.list()) {
    const st = await dir.lstat(e.name)
    if (st?.isFile() === true) sum += st.blocks * 512
  }
  return sum
}
