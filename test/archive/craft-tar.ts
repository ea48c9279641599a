/**
 * Build small tar archives byte by byte (GNU headers), to test how restores treat hostile or
 * bogus members that GNU tar would never write: `../` names, absolute link targets, `M` members.
 */

/** One member of {@link craftTar}. */
export interface CraftMember {
  name: string
  /** `0` file, `1` hardlink, `2` symlink, `5` directory, `M` multi-volume continuation. */
  type?: '0' | '1' | '2' | '5' | 'M'
  linkname?: string
  data?: string
  mode?: number
}

const BLOCK = 512

const octal = (h: Buffer, off: number, len: number, value: number): void => {
  h.write(`${value.toString(8).padStart(len - 1, '0')}\0`, off, len, 'ascii')
}

const header = (m: CraftMember, size: number): Buffer => {
  const h = Buffer.alloc(BLOCK)
  const type = m.type ?? '0'
  h.write(m.name, 0, 100, 'utf8')
  octal(h, 100, 8, m.mode ?? (type === '5' ? 0o755 : 0o644))
  octal(h, 108, 8, 0)
  octal(h, 116, 8, 0)
  octal(h, 124, 12, size)
  octal(h, 136, 12, 1_700_000_000)
  h.write(type, 156, 1, 'ascii')
  h.write(m.linkname ?? '', 157, 100, 'utf8')
  h.write('ustar  \0', 257, 8, 'ascii') // GNU magic + version
  h.write('root', 265, 32, 'ascii')
  h.write('root', 297, 32, 'ascii')
  h.fill(' ', 148, 156)
  let sum = 0
  for (const byte of h) sum += byte
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii')
  return h
}

/** A complete archive (members, then two zero blocks). Test-sized only: built in memory. */
export const craftTar = (members: readonly CraftMember[]): Buffer => {
  const parts: Buffer[] = []
  for (const m of members) {
    const data = Buffer.from(m.data ?? '', 'utf8')
    const withData = m.type === undefined || m.type === '0' || m.type === 'M'
    const size = withData ? data.length : 0
    parts.push(header(m, size))
    if (size > 0) {
      const padded = Buffer.alloc(Math.ceil(size / BLOCK) * BLOCK)
      data.copy(padded)
      parts.push(padded)
    }
  }
  parts.push(Buffer.alloc(2 * BLOCK))
  return Buffer.concat(parts)
}
