/** Process checks for tests: nothing we spawned may outlive an operation. */
import { readFile, readdir } from 'node:fs/promises'

/** A child process of this test process. */
export interface ChildInfo {
  pid: number
  comm: string
  /** `R`, `S`, `Z` (zombie) … */
  state: string
}

/** The current children of this process (from `/proc/<pid>/stat`). */
export const childProcesses = async (): Promise<ChildInfo[]> => {
  const result: ChildInfo[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let stat: string
    try {
      stat = await readFile(`/proc/${name}/stat`, 'utf8')
    } catch {
      continue // exited meanwhile
    }
    const close = stat.lastIndexOf(')')
    const rest = stat.slice(close + 2).split(' ')
    if (Number(rest[1]) !== process.pid) continue
    result.push({
      pid: Number(name),
      comm: stat.slice(stat.indexOf('(') + 1, close),
      state: rest[0] ?? '?',
    })
  }
  return result
}

/** The external tools the archive layer runs. */
const TOOLS = new Set([
  'tar',
  'zstd',
  'mksquashfs',
  'unsquashfs',
  'squashfuse',
  'squashfuse_ll',
  'fusermount3',
])

/** Children of this process that are archive tools (tsx may run its own esbuild child). */
export const leftoverTools = async (): Promise<ChildInfo[]> =>
  (await childProcesses()).filter((c) => TOOLS.has(c.comm))
