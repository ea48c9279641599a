/** `files VOLUME ls [PATH] | find GLOB | get PATH... --to DIR`: a container backup's files. */
import { mkdir } from 'node:fs/promises'
import { resolve } from 'node:path'
import { BackupError } from '../../errors.ts'
import { BackupFiles } from '../../provider/directory/catalog.ts'
import type { CatalogEntry } from '../../provider/directory/catalog.ts'
import { StoreLayout } from '../../provider/directory/layout.ts'
import { openStore } from '../../provider/directory/store.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'
import { fmtBytes } from '../progress/index.ts'
import { resolveVolume } from '../volume.ts'

/** Options of `files` as commander parses them. */
export interface FilesCommandOptions {
  store: string
  vmid?: number
  to?: string
  json?: boolean
}

const TYPE_CHAR: Record<CatalogEntry['type'], string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  hardlink: 'h',
  char: 'c',
  block: 'b',
  fifo: 'p',
  socket: 's',
  other: '?',
}

const perms = (mode: number | undefined): string => {
  if (mode === undefined) return '?????????'
  const bit = (m: number, c: string): string => (mode & m ? c : '-')
  const x = (m: number, s: number, set: string): string =>
    mode & s ? (mode & m ? set : set.toUpperCase()) : bit(m, 'x')
  return (
    bit(0o400, 'r') +
    bit(0o200, 'w') +
    x(0o100, 0o4000, 's') +
    bit(0o040, 'r') +
    bit(0o020, 'w') +
    x(0o010, 0o2000, 's') +
    bit(0o004, 'r') +
    bit(0o002, 'w') +
    x(0o001, 0o1000, 't')
  )
}

const when = (t: number | undefined): string =>
  t === undefined
    ? '????-??-?? ??:??'
    : new Date(t * 1000).toISOString().slice(0, 16).replace('T', ' ')

/** One line as `tar -tv --numeric-owner` prints a member. */
export const entryLine = (e: CatalogEntry): string => {
  const owner = `${e.uid ?? '?'}/${e.gid ?? '?'}`
  const tail =
    e.type === 'symlink'
      ? ` -> ${e.link ?? ''}`
      : e.type === 'hardlink'
        ? ` link to ${e.link ?? ''}`
        : ''
  const name = e.type === 'dir' ? `${e.path}/` : e.path
  return `${TYPE_CHAR[e.type]}${perms(e.mode)} ${owner.padEnd(11)} ${String(e.size).padStart(12)} ${when(e.mtime)} ${name}${tail}`
}

const shape = (e: CatalogEntry) => ({
  path: e.path,
  type: e.type,
  size: e.size,
  mode: e.mode ?? null,
  uid: e.uid ?? null,
  gid: e.gid ?? null,
  mtime: e.mtime ?? null,
  link: e.link ?? null,
})

const USAGE_LINE = 'files VOLUME ls [PATH] | find GLOB | get PATH... --to DIR'

/** Run `files`. */
export const filesCommand = async (
  volume: string,
  action: string,
  args: readonly string[],
  o: FilesCommandOptions,
  io: CliIO,
  format: OutputFormat,
  signal: AbortSignal,
): Promise<void> => {
  const arity: Record<string, [number, number]> = { ls: [0, 1], find: [1, 1], get: [1, Infinity] }
  const want = arity[action]
  if (want === undefined)
    throw new BackupError('USAGE', `unknown action '${action}' (${USAGE_LINE})`)
  if (args.length < want[0] || args.length > want[1]) {
    throw new BackupError('USAGE', `files ${action}: wrong number of arguments (${USAGE_LINE})`)
  }
  if ((action === 'get') !== (o.to !== undefined)) {
    throw new BackupError(
      'USAGE',
      action === 'get' ? 'files get needs --to DIR' : '--to is for files get',
    )
  }
  const storage = await openStore(o.store)
  const volname = await resolveVolume(storage, volume, o)
  await using files = await BackupFiles.open(new StoreLayout(resolve(o.store)), volname, signal)
  if (action !== 'get') {
    const list = action === 'ls' ? await files.ls(args[0] ?? '') : await files.find(args[0] ?? '')
    emit(io.stdout, format, 'files-list', list.map(shape), () => {
      for (const e of list) writeLine(io.stdout, entryLine(e))
    })
    return
  }
  const target = resolve(o.to ?? '')
  await mkdir(target, { recursive: true })
  const r = await files.get(args, target)
  const volid = `${storage.storeId}:${volname}`
  const value = {
    volid,
    target,
    archive: r.archive,
    members: r.members,
    bytesRead: r.bytesRead ?? null,
    archiveBytes: r.archiveBytes ?? null,
  }
  emit(io.stdout, format, 'files-get', value, () => {
    const read =
      r.bytesRead === undefined || r.archiveBytes === undefined
        ? 'through squashfuse (only the blocks of these files)'
        : `read ${fmtBytes(r.bytesRead)} of ${fmtBytes(r.archiveBytes)} (${((100 * r.bytesRead) / Math.max(1, r.archiveBytes)).toFixed(1)} %) of the archive`
    writeLine(io.stdout, `${r.members} members of ${r.archive} into ${target}; ${read}`)
  })
}
