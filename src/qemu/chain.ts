/**
 * Opening an untrusted qcow2 backing chain. A stored qcow2 header can name any file on the host
 * as its backing file, an external data file, a protocol (`json:`, `nbd:`), or omit the backing
 * format so QEMU probes a raw guest disk as qcow2 (see "qcow2 backing file" in
 * https://www.qemu.org/docs/master/system/qemu-block-drivers.html and QEMU's
 * docs/system/images.rst on untrusted images). We walk the chain ourselves, one image at a time:
 * every link must be a regular file reached without following a symbolic link (through
 * {@link Dir}), pinned open, and read with `qemu-img info -f qcow2` under prlimit; the chain is
 * then only ever opened through an explicit `json:` spec that names each pinned file by its fd
 * and ends in `"backing": null`, so neither header names nor later renames in the store matter.
 */
import { stat } from 'node:fs/promises'
import type { BlockdevSpec } from '../api/provider.ts'
import { BackupError, throwIfAborted } from '../errors.ts'
import { isPlainName } from '../io/beneath.ts'
import type { Dir, PinnedFile } from '../io/beneath.ts'
import type { CompressSpec } from './compress.ts'
import { imageInfo } from './img.ts'
import type { ImageInfo } from './img.ts'

/** Longest chain accepted. */
export const MAX_CHAIN_DEPTH = 64

/** One validated image of a chain, top first. */
export interface ChainLink {
  /** The directory (in the chain root) and file name of the image. */
  dirName: string
  file: string
  /** `/proc/<pid>/fd/<n>` of the pinned image. */
  path: string
  /** Virtual size in bytes. */
  virtualSize: number
  /** Bytes the image file allocates (from the pinned file's `fstat`). */
  allocated: number
  /** The backing name recorded in the header, verbatim (undefined for the base). */
  backing: string | undefined
  /** The header's compression type (`zlib`, `zstd`; undefined for a v2 image). */
  compressionType?: string | undefined
}

/** A validated chain whose images stay pinned until it is disposed. */
export interface Chain extends AsyncDisposable {
  readonly links: readonly ChainLink[]
  close(): Promise<void>
}

/**
 * `qemu-img info` answers for pinned images of this process, by file identity (device and
 * inode), kept with the file's size and times in nanoseconds: an incremental validates
 * its base chain when choosing the base and again when it opens it for the backup, and the
 * second walk reuses the answer for every image that has not been written since (any write
 * moves the ctime, see inode(7) "Last status change timestamp"). Every rule is still applied to
 * the answer on each walk; only the qemu-img process is saved.
 */
const infoCache = new Map<string, { stamp: string; info: ImageInfo }>()
/** Entries kept; the oldest go first. Chains are at most {@link MAX_CHAIN_DEPTH} deep. */
const INFO_CACHE_SIZE = 256

/** `qemu-img info -f qcow2` of a pinned image under prlimit, or its cached answer. */
const pinnedInfo = async (pin: PinnedFile, signal: AbortSignal | undefined): Promise<ImageInfo> => {
  throwIfAborted(signal)
  // The magic link is followed: it names exactly the pinned file.
  const st = await stat(pin.path, { bigint: true })
  const id = `${st.dev}:${st.ino}`
  // The birth time tells a new file that reuses the inode number of a removed one.
  const stamp = `${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.birthtimeNs}`
  const hit = infoCache.get(id)
  if (hit?.stamp === stamp) return hit.info
  // With the driver forced (`-f qcow2`) the image is read as qcow2 or not at all.
  const info = await imageInfo(pin.path, 'qcow2', { signal, untrusted: true })
  infoCache.delete(id)
  infoCache.set(id, { stamp, info })
  for (const old of infoCache.keys()) {
    if (infoCache.size <= INFO_CACHE_SIZE) break
    infoCache.delete(old)
  }
  return info
}

const unsafe = (msg: string, rule: string, details: Record<string, unknown>): BackupError =>
  new BackupError('UNSAFE_IMAGE', msg, { details: { ...details, rule } })

/** The only backing name we accept: a sibling directory's file, `../<dir>/<file>`. */
const BACKING_RE = /^\.\.\/([^/]+)\/([^/]+)$/

/** Options of {@link openChain}. */
export interface OpenChainOptions {
  /** Names of the directories of `root` that chain images may live in. */
  dirName: RegExp
  signal?: AbortSignal | undefined
}

/**
 * Validate and pin the chain whose top is `root/<dirName>/<file>`. Every image must be a regular
 * qcow2 file in a directory of `root` matching `opts.dirName`, reached without following links,
 * without data file, encryption or corruption; every backing reference must be exactly
 * `../<dir>/<file>` (relative, no protocol, no `json:`) with backing format `qcow2`; no loops;
 * at most {@link MAX_CHAIN_DEPTH} deep; one virtual size throughout. Links top first.
 *
 * @throws BackupError `UNSAFE_IMAGE` with `details.rule` naming the rule that refused,
 *   `UNSAFE_PATH` for a link or special file in the store, `IMAGE_INVALID` for a missing image.
 */
export const openChain = async (
  root: Dir,
  dirName: string,
  file: string,
  opts: OpenChainOptions,
): Promise<Chain> => {
  const held: (Dir | PinnedFile)[] = []
  const close = async (): Promise<void> => {
    for (const h of held.splice(0).reverse()) await h.close()
  }
  try {
    const links: ChainLink[] = []
    const seen = new Set<string>()
    let next = { dirName, file }
    for (;;) {
      const where = `${root.label}/${next.dirName}/${next.file}`
      if (links.length >= MAX_CHAIN_DEPTH) {
        throw unsafe(`backing chain deeper than ${MAX_CHAIN_DEPTH}`, 'depth', { top: file })
      }
      if (!opts.dirName.test(next.dirName) || !isPlainName(next.dirName)) {
        throw unsafe(`image ${where} is outside the backup directories`, 'outside', { where })
      }
      if (!isPlainName(next.file)) {
        throw unsafe(`image ${where} is not a plain file name`, 'name', { where })
      }
      let pin: PinnedFile
      try {
        const dir = await root.openDir(next.dirName)
        held.push(dir)
        pin = await dir.pin(next.file)
        held.push(pin)
      } catch (e) {
        if (e instanceof BackupError && e.code === 'NOT_FOUND') {
          throw new BackupError('IMAGE_INVALID', `image ${where} is missing`, { cause: e })
        }
        throw e
      }
      const id = `${pin.stat.dev}:${pin.stat.ino}`
      if (seen.has(id)) throw unsafe(`backing chain loops at ${where}`, 'loop', { where })
      seen.add(id)
      let info
      try {
        info = await pinnedInfo(pin, opts.signal)
      } catch (e) {
        if (opts.signal?.aborted === true) throw e
        throw unsafe(`image ${where} is not a readable qcow2 image`, 'unreadable', {
          where,
          cause: String(e),
        })
      }
      const data = info['format-specific']?.data
      if (data?.['data-file'] !== undefined) {
        throw unsafe(`image ${where} has an external data file`, 'data-file', { where })
      }
      if (info.encrypted === true)
        throw unsafe(`image ${where} is encrypted`, 'encrypted', { where })
      if (data?.corrupt === true)
        throw unsafe(`image ${where} is marked corrupt`, 'corrupt', { where })
      const first = links[0]
      if (first !== undefined && first.virtualSize !== info['virtual-size']) {
        throw unsafe(`image ${where} has a different virtual size than the top`, 'size', { where })
      }
      const backing = info['backing-filename']
      links.push({
        dirName: next.dirName,
        file: next.file,
        path: pin.path,
        virtualSize: info['virtual-size'],
        allocated: pin.stat.blocks * 512,
        backing,
        compressionType: data?.['compression-type'],
      })
      if (backing === undefined) break
      // A protocol prefix (json:, nbd:, http: …) before any slash would be parsed by QEMU.
      if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(backing)) {
        throw unsafe(`image ${where} names a protocol backing file`, 'protocol', { where, backing })
      }
      if (info['backing-filename-format'] !== 'qcow2') {
        throw unsafe(
          `image ${where} has no qcow2 backing format (would be probed)`,
          'backing-format',
          {
            where,
          },
        )
      }
      const m = BACKING_RE.exec(backing)
      if (m?.[1] === undefined || m[2] === undefined) {
        throw unsafe(
          `image ${where} names a backing file outside the store layout`,
          'backing-name',
          {
            where,
            backing,
          },
        )
      }
      next = { dirName: m[1], file: m[2] }
    }
    return { links, close, [Symbol.asyncDispose]: close }
  } catch (e) {
    await close()
    throw e
  }
}

/** A blockdev spec node: qcow2 over a file, with an explicit backing (the provider API's type). */
export type Qcow2Spec = BlockdevSpec

/** The explicit spec of a validated chain (optionally only its top `depth` links). */
export const chainSpec = (links: readonly ChainLink[], depth = links.length): Qcow2Spec => {
  let spec: Qcow2Spec | null = null
  for (let i = Math.min(depth, links.length) - 1; i >= 0; i--) {
    const link = links[i]
    if (link === undefined) continue
    spec = { driver: 'qcow2', file: { driver: 'file', filename: link.path }, backing: spec }
  }
  if (spec === null) throw new BackupError('IMAGE_INVALID', 'empty chain')
  return spec
}

/** `json:{…}` filename of a spec, for qemu-img and qemu-nbd. */
export const specJson = (spec: Qcow2Spec | CompressSpec): string => `json:${JSON.stringify(spec)}`

/** `json:{…}` filename of {@link chainSpec}. */
export const chainJson = (links: readonly ChainLink[]): string => specJson(chainSpec(links))

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

const sameKeys = (o: Record<string, unknown>, keys: readonly string[]): boolean => {
  const own = Object.keys(o)
  return own.length === keys.length && keys.every((k) => Object.hasOwn(o, k))
}

/**
 * Check a spec handed over by a provider (`restoreVmVolumeSpec`) before QEMU sees it: exactly
 * the shape of {@link Qcow2Spec} at every node (driver `qcow2` over driver `file` with an
 * absolute filename, `backing` given, `null` at the bottom), no other key (no `data-file`,
 * no protocol driver, no option that changes what is read), at most {@link MAX_CHAIN_DEPTH}
 * deep. Returns the spec with every node and file opened read-only.
 *
 * @throws BackupError `UNSAFE_IMAGE` (`details.rule` `spec`) for anything else.
 */
export const readOnlyChainSpec = (spec: unknown): Record<string, unknown> => {
  const bad = (why: string): BackupError =>
    new BackupError('UNSAFE_IMAGE', `refusing the restore source: ${why}`, {
      details: { rule: 'spec' },
    })
  const node = (s: unknown, depth: number): Record<string, unknown> => {
    if (depth > MAX_CHAIN_DEPTH) throw bad(`chain deeper than ${MAX_CHAIN_DEPTH}`)
    if (!isRecord(s) || !sameKeys(s, ['driver', 'file', 'backing']) || s['driver'] !== 'qcow2') {
      throw bad('a node is not a qcow2 image with file and backing given')
    }
    const f = s['file']
    if (!isRecord(f) || !sameKeys(f, ['driver', 'filename']) || f['driver'] !== 'file') {
      throw bad('an image is not a plain file')
    }
    const name = f['filename']
    if (typeof name !== 'string' || !name.startsWith('/') || name.includes('\0')) {
      throw bad('an image file name is not an absolute path')
    }
    const b = s['backing']
    return {
      driver: 'qcow2',
      'read-only': true,
      file: { driver: 'file', filename: name, 'read-only': true },
      backing: b === null ? null : node(b, depth + 1),
    }
  }
  return node(spec, 1)
}

/**
 * The `json:{…}` source of a provider's restore spec for `qemu-img convert` (checked by
 * {@link readOnlyChainSpec}; the driver is named in it, so qemu-img gets no `-f` and probes
 * nothing).
 */
export const restoreSourceJson = (spec: unknown): string =>
  `json:${JSON.stringify(readOnlyChainSpec(spec))}`
