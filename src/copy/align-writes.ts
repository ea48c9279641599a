/**
 * Writes widened to whole units of the target, for a target that takes only whole,
 * aligned units each written once (a compressed qcow2 image: `src/qemu/compress.ts`). The
 * bytes added around a write are read in the same job, so they hold the source's content. Pure.
 */

/**
 * Widen `writes` (absolute `[start, end)` ranges inside `[jobStart, jobEnd)`, in order, not
 * overlapping) to multiples of `align`, clipped to the job, and merge those that then touch or
 * overlap. `jobStart` must be a multiple of `align`, and `jobEnd` one or the end of the disk.
 */
export const alignWrites = (
  writes: readonly (readonly [number, number])[],
  align: number,
  jobStart: number,
  jobEnd: number,
): [number, number][] => {
  const out: [number, number][] = []
  for (const [a, b] of writes) {
    const start = Math.max(jobStart, Math.floor(a / align) * align)
    const end = Math.min(jobEnd, Math.ceil(b / align) * align)
    const last = out.at(-1)
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end)
    else out.push([start, end])
  }
  return out
}
