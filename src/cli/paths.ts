/** Path checks of the CLI: where a user's directories lie relative to each other. */
import { realpath } from 'node:fs/promises'
import { basename, dirname, join, relative, resolve, sep } from 'node:path'

/**
 * The real path of `path`, following links; for a path that does not exist yet, the real path
 * of its nearest existing ancestor joined with the rest.
 */
export const realPathOf = async (path: string): Promise<string> => {
  const abs = resolve(path)
  try {
    return await realpath(abs)
  } catch {
    const parent = dirname(abs)
    if (parent === abs) return abs
    return join(await realPathOf(parent), basename(abs))
  }
}

/** True if `inner` is `outer` or lies below it (both absolute, normalised). */
export const insideOrSame = (inner: string, outer: string): boolean => {
  const rel = relative(outer, inner)
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep))
}
