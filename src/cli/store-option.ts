/** `--store DIR` of every command but `init`, or the environment's `GUESTBACKUP_STORE`. */
import { Option } from 'commander'

/** The environment variable naming the store when `--store` is not given. */
export const STORE_ENV = 'GUESTBACKUP_STORE'

/**
 * The `--store` option: required, taken from {@link STORE_ENV} when not given (commander's
 * `Option.env`: an option on the command line wins over the environment).
 */
export const storeOption = (): Option =>
  new Option('--store <dir>', 'store directory').env(STORE_ENV).makeOptionMandatory()
