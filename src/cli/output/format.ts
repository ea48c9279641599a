/**
 * `--output-format text|json|json-pretty`, proxmox-backup-client's option and values
 * (proxmox-router `src/cli/format.rs`, `OUTPUT_FORMAT`): `text` for people, `json` one line of
 * compact JSON, `json-pretty` the same value indented. `--json`, the older option, stays an
 * alias of `json`, or of `json-pretty` for the commands that printed indented JSON before.
 *
 * On an error nothing is printed on stdout, whatever the format: the one error line goes to
 * stderr and the exit code says it failed, as proxmox-router's CLI does (`handle_simple_command`
 * in `src/cli/command.rs` prints `Error: …` with `eprintln!` and exits non-zero).
 */
import { BackupError } from '../../errors.ts'
import { writeLine } from '../io.ts'
import type { CliStream } from '../io.ts'
import type { Shape, ShapeName } from './shapes.ts'

/** The values of `--output-format`. */
export const OUTPUT_FORMATS = ['text', 'json', 'json-pretty'] as const

/** One of {@link OUTPUT_FORMATS}. */
export type OutputFormat = (typeof OUTPUT_FORMATS)[number]

/** What `--json` means for a command. */
export type JsonAlias = Exclude<OutputFormat, 'text'>

/**
 * The format of a run: `--output-format` if given, else `--json`'s alias, else text.
 * @throws BackupError `USAGE` when `--json` is given with `--output-format text`.
 */
export const resolveFormat = (
  outputFormat: OutputFormat | undefined,
  json: boolean | undefined,
  alias: JsonAlias,
): OutputFormat => {
  if (json === true && outputFormat === 'text') {
    throw new BackupError('USAGE', 'give --json or --output-format text, not both')
  }
  return outputFormat ?? (json === true ? alias : 'text')
}

/**
 * Print `value` as shape `name` in `format`, or call `text` for the text format. The value's
 * type is the shape's: what the doc promises is what the compiler checks.
 */
export const emit = <N extends ShapeName>(
  out: CliStream,
  format: OutputFormat,
  _name: N,
  value: Shape<N>,
  text: () => void,
): void => {
  if (format === 'text') text()
  else writeLine(out, JSON.stringify(value, null, format === 'json-pretty' ? 2 : undefined))
}

/**
 * The `--output-format` given in `argv`, read before commander has parsed it: `--version` is
 * handled as soon as commander meets it, which may be before a later `--output-format json`.
 */
export const formatInArgv = (argv: readonly string[]): OutputFormat | undefined => {
  let found: string | undefined
  argv.forEach((a, i) => {
    if (a === '--output-format') found = argv[i + 1]
    else if (a.startsWith('--output-format=')) found = a.slice('--output-format='.length)
  })
  return (OUTPUT_FORMATS as readonly string[]).includes(found ?? '')
    ? (found as OutputFormat)
    : undefined
}
