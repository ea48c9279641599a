/**
 * Write the man page guestbackup(1) from the CLI's commander definitions (src/cli/help/man.ts):
 *
 *   node --import tsx scripts/man.ts                 rewrite docs/guestbackup.1 (no date, no version)
 *   node --import tsx scripts/man.ts --date YYYY-MM-DD --version V --out FILE   (scripts/build-deb.sh)
 *
 * test/cli/help/man.test.ts fails until it is run after a command, option or example changes.
 */
import { writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createProgram } from '../src/cli/program.ts'
import { renderMan } from '../src/cli/help/man.ts'
import type { ManOptions } from '../src/cli/help/man.ts'

/** docs/guestbackup.1, the committed page. */
export const MAN_PAGE = fileURLToPath(new URL('../docs/guestbackup.1', import.meta.url))

const quiet = { write: () => true }

/** The page as the program of this checkout makes it. */
export const manPage = (o: ManOptions = {}): string =>
  renderMan(
    createProgram({ stdout: quiet, stderr: quiet, signal: new AbortController().signal }).program,
    o,
  )

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: { date: { type: 'string' }, version: { type: 'string' }, out: { type: 'string' } },
  })
  const o: ManOptions = {
    ...(values.date === undefined ? {} : { date: values.date }),
    ...(values.version === undefined ? {} : { version: values.version }),
  }
  await writeFile(values.out ?? MAN_PAGE, manPage(o))
}
