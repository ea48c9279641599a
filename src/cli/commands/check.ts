/**
 * `guestbackup check`: find (and with `--repair`, repair) what is inconsistent in a store. Exit
 * code 0 when nothing is found or everything found was repaired, 1 when findings remain.
 */
import { resolve } from 'node:path'
import { checkStore } from '../../provider/directory/check.ts'
import { StoreLayout } from '../../provider/directory/layout.ts'
import { openStore } from '../../provider/directory/store.ts'
import type { Logger } from '../../log.ts'
import { writeLine } from '../io.ts'
import type { CliIO } from '../io.ts'
import { emit } from '../output/format.ts'
import { providerLog } from '../output/provider-log.ts'
import type { OutputFormat } from '../output/format.ts'

/** Options of the check command as commander parses them. */
export interface CheckCommandOptions {
  store: string
  vmid?: number
  repair?: boolean
  json?: boolean
}

/** Run the check command; returns the exit code (1 when findings remain unrepaired). */
export const checkCommand = async (
  o: CheckCommandOptions,
  logger: Logger,
  io: CliIO,
  format: OutputFormat,
): Promise<number> => {
  // openStore refuses what is not a store (exit code 2) before anything is looked at.
  await openStore(o.store)
  const findings = await checkStore(new StoreLayout(resolve(o.store)), {
    repair: o.repair === true,
    vmid: o.vmid,
    signal: io.signal,
    log: providerLog(logger),
  })
  const repaired = findings.filter((f) => f.repaired).length
  emit(io.stdout, format, 'check', { findings, repaired }, () => {
    for (const f of findings) {
      const what = f.repaired ? `repaired: ${f.repair}` : `repair: ${f.repair}`
      writeLine(io.stdout, `${f.path}: ${f.detail} (${what})`)
    }
    writeLine(
      io.stdout,
      findings.length === 0
        ? 'store is consistent'
        : `${findings.length} finding${findings.length === 1 ? '' : 's'}, ${repaired} repaired`,
    )
  })
  return findings.length === repaired ? 0 : 1
}
