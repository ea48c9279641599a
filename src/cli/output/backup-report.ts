/**
 * The report of one guest's backup (shape `backup` of ./shapes.ts): the runner's outcome plus
 * what the committed backup's manifest records (disks, parents, bytes, consistency) and why
 * each full disk was full, as the provider decided it.
 */
import type { GuestResult } from '../../host/runner.ts'
import type { Manifest } from '../../provider/directory/manifest.ts'
import type { Shape } from './shapes.ts'

/** What {@link backupReport} reads besides the runner's result. */
export interface BackupReportInput {
  result: GuestResult
  /** The manifest of the backup made; undefined when the run failed. */
  manifest: Manifest | undefined
  /** Why each full disk was full, by device (DirectoryProvider.fullReasons). */
  fullReasons: Readonly<Record<string, string>>
  /** Seconds the run took. */
  duration: number
  /** The store id, for the parents' volume ids. */
  storeId: string
}

const CT_REASON = 'container archives are always full'

/** The `backup` JSON of one guest. */
export const backupReport = (i: BackupReportInput): Shape<'backup'> => {
  const { result, manifest: m } = i
  const ok = result.status === 'ok' && m !== undefined
  const disks = Object.entries((ok ? m.disks : undefined) ?? {}).map(([device, d]) => ({
    device,
    size: d.size,
    mode: d.parent === undefined ? ('full' as const) : ('incremental' as const),
    reason: d.parent === undefined ? (i.fullReasons[device] ?? 'no previous backup') : null,
    parent: d.parent === undefined ? null : `${i.storeId}:${d.parent}`,
    read: d.dataBytes,
    zero: d.zeroBytes,
    stored: m?.files[d.file] ?? 0,
  }))
  const written = ok ? Object.values(m.files).reduce((a, b) => a + b, 0) : 0
  const archive = ok && m.container !== undefined ? (m.files[m.container.file] ?? 0) : 0
  const incremental = disks.some((d) => d.mode === 'incremental')
  const fullWhy = (): string =>
    result.type === 'lxc'
      ? CT_REASON
      : [...new Set(disks.map((d) => d.reason ?? ''))].filter(Boolean).join('; ')
  const stored = result.archiveSize ?? 0
  // The task log's warnings, and those the manifest kept (the provider's own).
  const messages = [...new Set([...result.warningMessages, ...(ok ? m.warnings : [])])]
  return {
    vmid: result.vmid,
    type: result.type,
    status: result.status,
    // A failed run made no volume: name none.
    volid: result.status === 'ok' ? (result.volid ?? null) : null,
    size: result.status === 'ok' ? stored : null,
    error: result.error?.message ?? null,
    mode: ok ? (incremental ? 'incremental' : 'full') : null,
    reason: ok && !incremental ? fullWhy() : null,
    consistency: ok ? (m.consistency ?? null) : null,
    duration: Math.round(i.duration * 1000) / 1000,
    read: result.type === 'lxc' ? archive : disks.reduce((a, d) => a + d.read, 0),
    written,
    stored: result.status === 'ok' ? stored : 0,
    disks,
    warnings: { count: Math.max(result.warnings, messages.length), messages },
  }
}
