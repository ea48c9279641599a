/** The machine and tool versions, for the report header. */
import { readFile, statfs } from 'node:fs/promises'
import { loadavg, release, totalmem } from 'node:os'
import { run } from './procs.ts'

/** What the report says about where it ran. */
export interface MachineInfo {
  date: string
  nproc: string
  cpuModel: string
  memory: string
  kernel: string
  node: string
  qemu: string
  libnbd: string
  /** Filesystem of the scratch dir, e.g. `ext4 on /dev/vda`. */
  scratchFs: string
  /** 1-minute load average when the benchmark started. */
  loadStart: number
  /** The guestbackup code measured: commit, and whether src/ or bin/ had local changes. */
  revision: string
}

const firstLine = (s: string): string => s.trim().split('\n')[0] ?? ''

const orUnknown = async (f: () => Promise<string>): Promise<string> => {
  try {
    return (await f()) || 'unknown'
  } catch {
    return 'unknown'
  }
}

/** `statfs` type of tmpfs. */
export const TMPFS_MAGIC = 0x01021994

/** True when `path` is on tmpfs (RAM), where disk writes would not be measured. */
export const isTmpfs = async (path: string): Promise<boolean> =>
  (await statfs(path)).type === TMPFS_MAGIC

/** Free bytes for unprivileged users on the filesystem of `path`. */
export const freeBytes = async (path: string): Promise<number> => {
  const s = await statfs(path)
  return s.bavail * s.bsize
}

/** Collect the machine description. */
export const machineInfo = async (scratch: string, repo: string): Promise<MachineInfo> => ({
  date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  loadStart: loadavg()[0] ?? 0,
  revision: await orUnknown(async () => {
    const head = (await run('git', ['rev-parse', '--short', 'HEAD'], { cwd: repo })).stdout.trim()
    const st = await run('git', ['status', '--porcelain', '--', 'src', 'bin'], { cwd: repo })
    return st.stdout.trim() === '' ? head : `${head} + uncommitted changes in src/ or bin/`
  }),
  nproc: await orUnknown(async () => (await run('nproc', [])).stdout.trim()),
  cpuModel: await orUnknown(async () => {
    const text = await readFile('/proc/cpuinfo', 'utf8')
    return /^model name\s*:\s*(.+)$/m.exec(text)?.[1]?.trim() ?? ''
  }),
  memory: `${Math.round(totalmem() / 1024 ** 3)} GiB RAM`,
  kernel: `Linux ${release()}`,
  node: `Node ${process.version}`,
  qemu: await orUnknown(async () => firstLine((await run('qemu-img', ['--version'])).stdout)),
  libnbd: await orUnknown(async () => {
    const lines = (await run('nbdcopy', ['--version'])).stdout.trim().split('\n')
    return lines.join(', ')
  }),
  scratchFs: await orUnknown(async () => {
    const out = await run('df', ['--output=fstype,source', scratch])
    const row = out.stdout.trim().split('\n')[1]?.trim().split(/\s+/) ?? []
    return `${row[0] ?? '?'} on ${row[1] ?? '?'}`
  }),
})
