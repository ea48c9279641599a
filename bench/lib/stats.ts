/** Small statistics and formatting helpers. */

/** Median, minimum and maximum of a non-empty sample. */
export interface Summary {
  median: number
  min: number
  max: number
  n: number
}

/** Summarise a sample (the median of an even count is the mean of the two middle values). */
export const summarize = (values: readonly number[]): Summary => {
  if (values.length === 0) throw new Error('empty sample')
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  const median = s.length % 2 === 1 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2
  return { median, min: s[0] ?? 0, max: s[s.length - 1] ?? 0, n: s.length }
}

/** `1.23 (1.20–1.31)` in seconds. */
export const fmtSummary = (s: Summary, digits = 2): string =>
  `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`

/** MB/s (10^6 bytes, as nbdcopy and qemu-img report rates) of `bytes` in `seconds`. */
export const mbps = (bytes: number, seconds: number): number =>
  Math.round(bytes / Math.max(seconds, 1e-3) / 1e6)

/** Binary size with unit, e.g. `2 GiB`, `16 MiB`. */
export const fmtBytes = (n: number): string => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i] ?? 'B'}`
}
