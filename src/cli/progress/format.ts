/**
 * Number formats of progress output: the terminal line's compact ones, and the ones vzdump
 * writes into task logs, ported from pve-common `src/PVE/Format.pm` (`render_bytes`,
 * `render_duration`) so the lines read as Proxmox's do.
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const

/** Bytes with a binary unit and one decimal (`64.0 MiB`), whole bytes below 1 KiB (`512 B`). */
export const fmtBytes = (n: number): string => {
  let i = 0
  let v = n
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${UNITS[i] ?? 'B'}`
}

/** Seconds as `m:ss`, or `h:mm:ss` from an hour on; `--:--` when unknown (not finite). */
export const fmtClock = (seconds: number): string => {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--'
  const s = Math.round(seconds)
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const ss = String(s % 60).padStart(2, '0')
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`
}

/**
 * pve-common `render_bytes($value, $precision)`: the largest binary unit whose value is at
 * least 1 (above 1023 bytes), with `precision` decimals (Perl's default there: 2), e.g.
 * `2.0 GiB` at precision 1, `512.00 B` at 2.
 */
export const renderBytes = (value: number, precision = 2): string => {
  let unit = 0
  let v = value
  if (v > 1023) {
    unit = Math.min(Math.floor(Math.log(v) / Math.log(1024)), UNITS.length - 1)
    v /= 1024 ** unit
  }
  return `${v.toFixed(precision)} ${UNITS[unit] ?? 'B'}`
}

/**
 * pve-common `render_duration($seconds)` without auto-limited accuracy: `0s`, `5s`, `1m 5s`,
 * `2h 3s` (each unit with a non-zero value, largest first).
 */
export const renderDuration = (seconds: number): string => {
  let rest = Math.round(seconds)
  if (rest <= 0) return '0s'
  const parts: string[] = []
  for (const [unit, len] of [
    ['w', 7 * 24 * 3600],
    ['d', 24 * 3600],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    const v = Math.floor(rest / len)
    if (v > 0) {
      parts.push(`${v}${unit}`)
      rest -= v * len
    }
  }
  return parts.join(' ')
}

/** vzdump's `$get_mbps`: a rate as `render_bytes(int(bytes / seconds), 1)/s`, `0 B/s` for none. */
export const renderRate = (bytes: number, seconds: number): string =>
  bytes <= 0 ? '0 B/s' : `${renderBytes(Math.floor(bytes / seconds), 1)}/s`
