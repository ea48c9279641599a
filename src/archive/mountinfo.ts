/** Reading `/proc/self/mountinfo` (proc(5)), to see whether and where FUSE mounts exist. */
import { readFile } from 'node:fs/promises'

/** One line of `/proc/self/mountinfo`. */
export interface MountEntry {
  /** Unique mount ID (field 1); a remount at the same place gets a new one. */
  readonly id: number
  /** The mount point, unescaped (the kernel writes space, tab, newline, `\` as `\ooo`). */
  readonly mountPoint: string
  /** File system type, e.g. `fuse.squashfuse_ll`. */
  readonly fsType: string
  /** Mount source, e.g. `squashfuse_ll`. */
  readonly source: string
}

const unescape = (s: string): string =>
  s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)))

/** Parse the text of a mountinfo file. Malformed lines are skipped. */
export const parseMountInfo = (text: string): MountEntry[] => {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ')
    if (sep < 0) continue
    const pre = line.slice(0, sep).split(' ')
    const post = line.slice(sep + 3).split(' ')
    const id = Number(pre[0])
    const mountPoint = pre[4]
    const fsType = post[0]
    if (!Number.isInteger(id) || mountPoint === undefined || fsType === undefined) continue
    entries.push({
      id,
      mountPoint: unescape(mountPoint),
      fsType,
      source: unescape(post[1] ?? ''),
    })
  }
  return entries
}

/** The current mounts of this process's mount namespace. */
export const readMounts = async (): Promise<MountEntry[]> =>
  parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'))

/** Mounts whose mount point is exactly `path` (an absolute, resolved path). */
export const mountsAt = async (path: string): Promise<MountEntry[]> =>
  (await readMounts()).filter((m) => m.mountPoint === path)
