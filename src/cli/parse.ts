/** Argument parsers of the CLI: each throws commander's InvalidArgumentError (exit code 2). */
import { InvalidArgumentError } from 'commander'
import { IMAGE_FORMATS } from '../qemu/formats.ts'
import type { ImageFormat } from '../qemu/formats.ts'

/** A guest id: 1 to 999999999, as Proxmox allows (100+ by convention). */
export const parseVmid = (v: string): number => {
  if (!/^[1-9]\d{0,8}$/.test(v)) throw new InvalidArgumentError('expected a guest id (1-999999999)')
  return Number(v)
}

/** A non-negative integer. */
export const parseCount = (v: string): number => {
  if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError('expected an integer')
  return Number(v)
}

const UNITS: Record<string, number> = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }

/**
 * `--bwlimit`, in bytes per second for the provider API: a bare number is KiB/s, as vzdump's
 * `bwlimit` and the `--bwlimit` of `qm restore` and `pct restore` take it (vzdump(1), pve-guest-common
 * `src/PVE/VZDump/Common.pm`: "Limit I/O bandwidth (in KiB/s)"); a binary suffix `K`, `M`, `G`
 * (optionally `KiB`, `MB`, `/s`) scales it, `B` gives bytes per second. `0` is no limit.
 */
export const parseRate = (v: string): number => {
  const m = /^(\d{1,15})(?:([KMG])(?:i?B)?|(B))?(?:\/s)?$/i.exec(v.trim())
  const unit = UNITS[(m?.[2] ?? m?.[3] ?? 'K').toUpperCase()]
  const bytes = Number(m?.[1]) * (unit ?? NaN)
  if (m === null || !Number.isSafeInteger(bytes)) {
    throw new InvalidArgumentError('expected KiB/s (10000, as vzdump) or a unit: 50M, 1G, 65536B')
  }
  return bytes
}

/**
 * `--compress`, vzdump's values (vzdump(1): `0 | 1 | gzip | lzo | zstd`, `1` meaning lzo as in
 * PVE/VZDump.pm `compressor_info`), plus `none` for `0`.
 */
export const parseCompress = (v: string): 'zstd' | 'gzip' | 'lzo' | 'none' => {
  const t = v.trim().toLowerCase()
  if (t === '0' || t === 'none') return 'none'
  if (t === '1' || t === 'lzo') return 'lzo'
  if (t === 'gzip' || t === 'zstd') return t
  throw new InvalidArgumentError('expected zstd, gzip, lzo, 0 (none) or 1 (lzo), as vzdump')
}

/** `--zstd`: zstd threads as vzdump's `zstd` option, 0 (half of the cores) to 256. */
export const parseZstdThreads = (v: string): number => {
  if (!/^\d{1,3}$/.test(v.trim()) || Number(v) > 256) {
    throw new InvalidArgumentError('expected a thread count, 0 (half of the cores) to 256')
  }
  return Number(v)
}

/** One `--disk`: device name, path and the format if stated. */
export interface DiskArg {
  name: string
  path: string
  format?: ImageFormat
}

/** `NAME=PATH[,format=FMT]` of `--disk`; collects into an array. */
export const collectDisk = (v: string, prev: DiskArg[] = []): DiskArg[] => {
  const i = v.indexOf('=')
  const name = v.slice(0, i)
  let path = v.slice(i + 1)
  const f = /,format=([a-z0-9]+)$/.exec(path)
  if (f !== null) path = path.slice(0, f.index)
  if (i <= 0 || path === '' || !/^[a-z][a-z0-9]{0,31}$/.test(name)) {
    throw new InvalidArgumentError(
      `expected NAME=PATH[,format=FMT] with a device name like scsi0, virtio1, sata0 (got '${v}')`,
    )
  }
  const format = f?.[1]
  if (format === undefined) return [...prev, { name, path }]
  if (!(IMAGE_FORMATS as readonly string[]).includes(format)) {
    throw new InvalidArgumentError(`unknown disk format '${format}' (${IMAGE_FORMATS.join(', ')})`)
  }
  return [...prev, { name, path, format: format as ImageFormat }]
}

/** A device name as `restore` takes it, `drive-scsi0` or `scsi0`, as `drive-scsi0`. */
const deviceName = (v: string): string | undefined => {
  const m = /^(?:drive-)?([a-z][a-z0-9]{0,31})$/.exec(v)
  return m === null ? undefined : `drive-${m[1] ?? ''}`
}

/** `restore --disk DEVICE` (`scsi0` or `drive-scsi0`); collects into an array. */
export const collectDevice = (v: string, prev: string[] = []): string[] => {
  const device = deviceName(v)
  if (device === undefined) {
    throw new InvalidArgumentError(`expected a device like scsi0 or drive-scsi0 (got '${v}')`)
  }
  return prev.includes(device) ? prev : [...prev, device]
}

/** `restore --disk-target`, now `--target-disk`: refused with the new name. */
export const renamed = (): never => {
  throw new InvalidArgumentError('it is now spelled --target-disk DEVICE=PATH')
}

/** One `--target-disk`: the device (`drive-<key>`) and the path. */
export interface TargetDiskArg {
  device: string
  path: string
}

/**
 * `DEVICE=PATH` of `restore --target-disk`, DEVICE as `restore` names the disk (`drive-scsi0`)
 * or its drive key (`scsi0`); collects into an array.
 */
export const collectDiskTarget = (v: string, prev: TargetDiskArg[] = []): TargetDiskArg[] => {
  const i = v.indexOf('=')
  const name = v.slice(0, i)
  const path = v.slice(i + 1)
  const device = deviceName(name)
  if (i <= 0 || path === '' || device === undefined) {
    throw new InvalidArgumentError(
      `expected DEVICE=PATH with a device like drive-scsi0 or scsi0 (got '${v}')`,
    )
  }
  if (prev.some((t) => t.device === device)) {
    throw new InvalidArgumentError(`${device} is given twice`)
  }
  return [...prev, { device, path }]
}

/** Repeatable string option. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v]

/**
 * Default `--lock-wait`, ms. `backup`: vzdump's `lockwait` default, 180 minutes (a backup
 * started by cron waits for the one before it). `prune` and `remove`: 10 minutes, longer than
 * a stale lock of a dead holder on another host lasts (io/lock.ts `STALE_MS`) and than a
 * merge of another prune usually takes, short enough that a command run by hand while a
 * backup of hours holds the guest reports that backup rather than seeming to hang.
 */
export const LOCK_WAIT_DEFAULTS = { backup: 180 * 60_000, other: 10 * 60_000 } as const

const TIME_UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000 }

/**
 * `--lock-wait`, in ms: a bare number is minutes, as vzdump's `lockwait` (vzdump.conf(5));
 * `s`, `m` and `h` suffixes give seconds, minutes and hours (`30s`, `5m`, `2h`); `0` does not
 * wait. At most 7 days.
 */
export const parseLockWait = (v: string): number => {
  const m = /^(\d{1,6})([smh]?)$/.exec(v.trim())
  const unit = m?.[2] === '' ? 'm' : (m?.[2] ?? '')
  const ms = Number(m?.[1]) * (TIME_UNITS[unit] ?? NaN)
  if (!Number.isSafeInteger(ms) || ms > 7 * 24 * 3_600_000) {
    throw new InvalidArgumentError(
      "expected a time: minutes as vzdump's lockwait (180), or with a unit (30s, 5m, 2h)",
    )
  }
  return ms
}

/**
 * A count of `prune --keep-last` and the like: an integer, minimum 0 (pve-storage
 * `src/PVE/Storage/Plugin.pm`, `%prune_option`).
 */
export const parseKeepCount = (v: string): number => {
  if (!/^\d{1,9}$/.test(v)) throw new InvalidArgumentError('expected an integer >= 0')
  return Number(v)
}
