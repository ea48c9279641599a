/** `guestbackup list`: the backups of a store (and its failed runs), as text or JSON. */
import { openStore } from '../../provider/directory/store.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { fmtBytes } from '../progress/index.ts'
import { emit } from '../output/format.ts'
import type { OutputFormat } from '../output/format.ts'
import type { Shape } from '../output/shapes.ts'

/** Options of the list command. */
export interface ListCommandOptions {
  store: string
  vmid?: number
  failed?: boolean
  json?: boolean
}

/** Print the backups of the store, newest first per guest (README: the `list` JSON shape). */
export const listCommand = async (
  o: ListCommandOptions,
  io: CliIO,
  format: OutputFormat,
): Promise<void> => {
  const storage = await openStore(o.store)
  const filter = o.vmid === undefined ? {} : { vmid: o.vmid }
  const vols = await storage.listVolumes(filter)
  const failed = o.failed === true ? await storage.listFailed(filter) : []
  if (format !== 'text') {
    const rows: Shape<'list'> = vols.map((v) => ({
      volid: v.volid,
      vmid: v.vmid,
      subtype: v.subtype,
      ctime: v.ctime,
      size: v.size,
      format: v.format,
      parent: v.parent ?? null,
      protected: v.protected,
      notes: v.notes ?? null,
      'verify-state': v.verification?.state ?? 'none',
      verified: v.verification?.time ?? null,
      ...(v.verification?.detail === undefined ? {} : { 'verify-detail': v.verification.detail }),
      ...(v.idmap === undefined ? {} : { idmap: v.idmap }),
      ...(v.broken === undefined
        ? { status: 'ok' as const }
        : { status: 'broken' as const, broken: v.broken }),
    }))
    for (const f of failed) {
      rows.push({
        volid: f.volid,
        vmid: f.vmid,
        subtype: f.subtype,
        ctime: f.ctime,
        status: 'failed' as const,
        error: f.error ?? null,
        log: f.log,
      })
    }
    emit(io.stdout, format, 'list', rows, () => undefined)
    return
  }
  for (const v of vols) {
    const verified = v.verification
    const flags = [
      v.protected ? 'protected' : '',
      v.parent ? `parent=${v.parent}` : '',
      v.idmap ? `idmap=${v.idmap.join(',')}` : '',
      verified === undefined ? '' : verified.state === 'ok' ? 'verified' : 'VERIFY-FAILED',
    ]
    if (v.broken !== undefined) flags.push(`BROKEN: ${v.broken}`)
    writeLine(
      io.stdout,
      [v.volid, v.subtype, fmtBytes(v.size).padStart(10), ...flags.filter(Boolean)].join('  '),
    )
  }
  for (const f of failed) {
    writeLine(
      io.stdout,
      [f.volid, f.subtype, 'FAILED'.padStart(10), f.error ?? '', f.log].join('  '),
    )
  }
}
