/** A provider or store log function writing to the CLI's logger, its fields kept. */
import type { LogFields, ProviderLogFunction } from '../../api/provider.ts'
import type { Logger } from '../../log.ts'

/**
 * The log function of a store operation, on `logger`: `err` as error, `warn` as warning (or as
 * info with `warnAsInfo`, for the commands whose warnings were never shown without -v), the
 * rest as info; `fields` become the line's structured fields under `--log-json`.
 */
export const providerLog =
  (logger: Logger, warnAsInfo = false): ProviderLogFunction =>
  (level, message, fields: LogFields = {}) => {
    if (level === 'err') logger.error(fields, message)
    else if (level === 'warn' && !warnAsInfo) logger.warn(fields, message)
    else logger.info(fields, message)
  }
