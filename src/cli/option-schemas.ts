/**
 * zod schemas of the CLI's option values, for inputs that are not a command line (job files).
 * Each wraps the very parser of parse.ts that commander uses for the option, so a value means
 * the same and is refused for the same reason in both places. A value may be the option's
 * string (`"50M"`) or, where the option is a number, a number (`52428800`).
 */
import * as z from 'zod'
import { IMAGE_FORMATS } from '../qemu/formats.ts'
import {
  collectDisk,
  parseCompress,
  parseLockWait,
  parseRate,
  parseVmid,
  parseZstdThreads,
} from './parse.ts'
import type { DiskArg } from './parse.ts'

/** Runs a parse.ts parser inside zod: its message becomes the issue's. */
const viaParser =
  <T>(parse: (v: string) => T) =>
  (v: string | number, ctx: z.RefinementCtx): T => {
    try {
      return parse(String(v))
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e) })
      return z.NEVER
    }
  }

const stringOrInt = z.union([z.string(), z.number().int().nonnegative()], {
  error: 'expected a string or a non-negative integer',
})

/** `--vmid`: 1 to 999999999. */
export const vmidSchema = stringOrInt.transform(viaParser(parseVmid))

/** `--bwlimit`: bytes per second, `50M` or a number. */
export const rateSchema = stringOrInt.transform(viaParser(parseRate))

/** `--lock-wait`: minutes as vzdump's `lockwait`, or `30s`, `5m`, `2h`; in ms. */
export const lockWaitSchema = stringOrInt.transform(viaParser(parseLockWait))

/** `--compress`: vzdump's `compress` values. */
export const compressSchema = stringOrInt.transform(viaParser(parseCompress))

/** `--zstd`: zstd threads, 0 for half of the cores. */
export const zstdSchema = stringOrInt.transform(viaParser(parseZstdThreads))

/** A path given as an option value: a non-empty string without a NUL. */
export const pathSchema = z
  .string({ error: 'expected a path' })
  .min(1, 'expected a path')
  .refine((p) => !p.includes('\0'), 'a path cannot contain a NUL byte')

/** The one disk `collectDisk` makes of `NAME=PATH[,format=FMT]`. */
const parseDisk = (v: string): DiskArg => {
  const [disk] = collectDisk(v)
  if (disk === undefined) throw new Error(`expected NAME=PATH (got '${v}')`)
  return disk
}

/**
 * One `--disk`: its string `NAME=PATH[,format=FMT]`, or the same as a table
 * `{ name, path, format? }`, checked by the same parser.
 */
export const diskSchema = z
  .union(
    [
      z.string(),
      z.strictObject({
        name: z.string(),
        path: pathSchema,
        format: z.enum(IMAGE_FORMATS).optional(),
      }),
    ],
    { error: 'expected NAME=PATH[,format=FMT] or a table { name, path, format }' },
  )
  .transform((d, ctx) =>
    viaParser(parseDisk)(
      typeof d === 'string' ? d : `${d.name}=${d.path}${d.format ? `,format=${d.format}` : ''}`,
      ctx,
    ),
  )
