/**
 * Incompressible guest data for tests whose point is the bytes a backup stores (full disks,
 * file size limits, merge space): stores compress VM images with zstd by default, and
 * qemu-io's `-P` patterns compress to almost nothing.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'

/**
 * Write `length` random bytes at `offset` of `image` through qemu-io (`write -s FILE`, the
 * buffer filled from a file: qemu-io's `help write`), so every format writes them as a guest
 * would.
 */
export const writeRandom = async (
  image: string,
  format: 'raw' | 'qcow2',
  offset: number,
  length: number,
): Promise<void> => {
  const dir = await mkdtemp(join(tmpdir(), 'gb-random-'))
  try {
    const src = join(dir, 'data')
    await writeFile(src, randomBytes(length))
    await run('qemu-io', ['-f', format, '-c', `write -q -s ${src} ${offset} ${length}`, image])
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

const UNITS: Record<string, number> = { '': 1, k: 1024, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }

const bytesOf = (s: string): number => {
  const m = /^(\d+)([kKMG]?)$/.exec(s)
  if (m === null) throw new Error(`not a qemu-io size: ${s}`)
  return Number(m[1]) * (UNITS[m[2] ?? ''] ?? 1)
}

/**
 * qemu-io commands with every `write -P PATTERN OFF LEN` turned into `write -s FILE OFF LEN`:
 * one file of random bytes per pattern, made in `dir`, so each pattern still stands for its
 * own data, now incompressible. Other commands are kept as they are.
 */
export const randomWrites = async (dir: string, commands: readonly string[]): Promise<string[]> => {
  const parsed = commands.map((c) => ({ c, m: /^write -P (0x[0-9a-f]+) (\S+) (\S+)$/.exec(c) }))
  const need = new Map<string, number>()
  for (const { m } of parsed) {
    if (m?.[1] === undefined || m[3] === undefined) continue
    need.set(m[1], Math.max(need.get(m[1]) ?? 0, bytesOf(m[3])))
  }
  const files = new Map<string, string>()
  for (const [pattern, size] of need) {
    const file = join(dir, `random-${pattern}`)
    await writeFile(file, randomBytes(size))
    files.set(pattern, file)
  }
  return parsed.map(({ c, m }) =>
    m?.[1] === undefined ? c : `write -q -s ${files.get(m[1]) ?? ''} ${m[2] ?? ''} ${m[3] ?? ''}`,
  )
}
