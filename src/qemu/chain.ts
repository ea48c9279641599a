/**
 * Validation of an untrusted qcow2 backing chain before anything opens it as a chain
 * (qemu-lab REPORT §3, "Hostile images"). A stored qcow2 header can name any file on the host
 * as its backing file, an external data file, a protocol (`json:`, `nbd:`), or omit the backing
 * format so QEMU probes a raw guest disk as qcow2. We walk the chain ourselves, one image at a
 * time with `qemu-img info -f qcow2` under prlimit, and afterwards open it only through an
 * explicit `json:` spec that names every file and ends in `"backing": null`.
 */
import { realpath, stat } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, sep } from 'node:path'
import { BackupError } from '../errors.ts'
import { imageInfo } from './img.ts'

/** Longest chain accepted. */
export const MAX_CHAIN_DEPTH = 64

/** One validated image of a chain, top first. */
export interface ChainLink {
  /** Real absolute path (symlinks resolved). */
  path: string
  /** Virtual size in bytes. */
  virtualSize: number
}

const inside = (root: string, p: string): boolean => {
  const rel = relative(root, p)
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) && !rel.startsWith(`..${sep}`)
}

const unsafe = (msg: string, details: Record<string, unknown>): BackupError =>
  new BackupError('UNSAFE_IMAGE', msg, { details })

/**
 * Validate the chain starting at `top`. Every image must be a regular qcow2 file whose real path
 * lies inside `root`, without data file, encryption or corruption; every backing reference must
 * be a plain relative or absolute file name (no protocol, no `json:`), with backing format
 * `qcow2`, resolving inside `root`; no loops; at most {@link MAX_CHAIN_DEPTH} deep; one virtual
 * size throughout. Returns the chain top first.
 */
export const validateChain = async (
  top: string,
  root: string,
  signal?: AbortSignal,
): Promise<ChainLink[]> => {
  const realRoot = await realpath(root)
  const chain: ChainLink[] = []
  const seen = new Set<string>()
  let next: string | undefined = top
  for (;;) {
    if (chain.length >= MAX_CHAIN_DEPTH) {
      throw unsafe(`backing chain deeper than ${MAX_CHAIN_DEPTH}`, { top })
    }
    let real: string
    try {
      real = await realpath(next)
    } catch (e) {
      throw new BackupError('IMAGE_INVALID', `image ${next} is missing`, { cause: e })
    }
    if (!inside(realRoot, real)) throw unsafe(`image ${next} resolves outside ${root}`, { real })
    if (seen.has(real)) throw unsafe(`backing chain loops at ${real}`, { top })
    seen.add(real)
    const st = await stat(real)
    if (!st.isFile()) throw unsafe(`image ${real} is not a regular file`, { real })
    let info
    try {
      info = await imageInfo(real, 'qcow2', { signal, untrusted: true })
    } catch (e) {
      if (signal?.aborted === true) throw e
      throw unsafe(`image ${real} is not a readable qcow2 image`, { real, cause: String(e) })
    }
    if (info.format !== 'qcow2') throw unsafe(`image ${real} is not qcow2`, { real })
    const data = info['format-specific']?.data
    if (data?.['data-file'] !== undefined) {
      throw unsafe(`image ${real} has an external data file`, { real })
    }
    if (info.encrypted === true) throw unsafe(`image ${real} is encrypted`, { real })
    if (data?.corrupt === true) throw unsafe(`image ${real} is marked corrupt`, { real })
    const first = chain[0]
    if (first !== undefined && first.virtualSize !== info['virtual-size']) {
      throw unsafe(`image ${real} has a different virtual size than ${first.path}`, { real })
    }
    chain.push({ path: real, virtualSize: info['virtual-size'] })
    const backing = info['backing-filename']
    if (backing === undefined) break
    // A protocol prefix (json:, nbd:, http: …) before any slash would be parsed by QEMU.
    if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(backing)) {
      throw unsafe(`image ${real} names a protocol backing file`, { real, backing })
    }
    if (info['backing-filename-format'] !== 'qcow2') {
      throw unsafe(`image ${real} has no qcow2 backing format (would be probed)`, { real })
    }
    next = isAbsolute(backing) ? backing : join(dirname(real), backing)
  }
  return chain
}

/** A blockdev spec node: qcow2 over a file, with an explicit backing. */
export interface Qcow2Spec {
  driver: 'qcow2'
  file: { driver: 'file'; filename: string }
  backing: Qcow2Spec | null
}

/** The explicit spec of a validated chain: header names are never used. */
export const chainSpec = (chain: readonly ChainLink[]): Qcow2Spec => {
  let spec: Qcow2Spec | null = null
  for (let i = chain.length - 1; i >= 0; i--) {
    const link = chain[i]
    if (link === undefined) continue
    spec = { driver: 'qcow2', file: { driver: 'file', filename: link.path }, backing: spec }
  }
  if (spec === null) throw new BackupError('IMAGE_INVALID', 'empty chain')
  return spec
}

/** `json:{…}` filename of {@link chainSpec}, for qemu-img and qemu-nbd. */
export const chainJson = (chain: readonly ChainLink[]): string =>
  `json:${JSON.stringify(chainSpec(chain))}`
