/**
 * The man page guestbackup(1), in roff (man(7) macros), made from the commander program itself:
 * its commands, arguments and options with the descriptions `--help` shows (./attach.ts), and
 * the examples and exit codes of ./examples.ts and ./exit-codes.ts. scripts/man.ts writes it to
 * docs/guestbackup.1; test/cli/help/man.test.ts fails when that file is out of date.
 */
import type { Command, Help } from 'commander'
import { STORE_ENV } from '../store-option.ts'
import { commandPath } from './attach.ts'
import { EXAMPLES, exampleLines } from './examples.ts'
import type { Example } from './examples.ts'
import { COMMAND_EXIT, EXIT_CODES } from './exit-codes.ts'

/** What the title line carries besides the name (empty in docs/guestbackup.1). */
export interface ManOptions {
  /** The page's date, YYYY-MM-DD. */
  readonly date?: string
  /** The package version, shown as "guestbackup VERSION". */
  readonly version?: string
}

/**
 * `text` escaped for roff: backslashes, every `-` as `\-` (a minus, so options copy and paste as
 * ASCII, man-pages(7) "Hyphens"), and a leading `.` or `'` kept from reading as a request.
 */
export const roff = (text: string): string =>
  text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/^([.'])/gm, '\\&$1')

const help = (cmd: Command): Help => cmd.createHelp()

const examples = (list: readonly Example[]): string[] => {
  const out: string[] = []
  for (const ex of list) {
    out.push('.PP', roff(`${ex.what}:`), '.PP', '.RS 4', '.EX')
    out.push(...exampleLines(ex, 72).map(roff), '.EE', '.RE')
  }
  return out
}

/** The options of `cmd` (not --help) as tagged paragraphs. */
const options = (cmd: Command): string[] => {
  const h = help(cmd)
  const out: string[] = []
  for (const arg of h.visibleArguments(cmd)) {
    out.push('.TP', `.I ${roff(h.argumentTerm(arg))}`, roff(h.argumentDescription(arg)))
  }
  for (const opt of h.visibleOptions(cmd)) {
    if (opt.long === '--help') continue
    out.push('.TP', `.B ${roff(h.optionTerm(opt))}`, roff(h.optionDescription(opt)))
  }
  return out
}

/** The commands below `cmd` that --help lists, depth first (`job`, then `job run`). */
const commands = (cmd: Command): Command[] =>
  help(cmd)
    .visibleCommands(cmd)
    .filter((c) => c.name() !== 'help')
    .flatMap((c) => [c, ...commands(c)])

/** guestbackup(1) for `program` (createProgram's). */
export const renderMan = (program: Command, o: ManOptions = {}): string => {
  const h = help(program)
  const source = o.version === undefined ? 'guestbackup' : `guestbackup ${o.version}`
  const out = [
    `.TH GUESTBACKUP 1 "${o.date ?? ''}" "${source}" "User Commands"`,
    // Options and paths must not be hyphenated or stretched: left-adjusted, no hyphenation.
    '.ad l',
    '.nh',
    '.SH NAME',
    'guestbackup \\- back up QEMU VMs and container trees',
    '.SH SYNOPSIS',
    '.B guestbackup',
    '[\\fIoptions\\fR] \\fIcommand\\fR [\\fIcommand options\\fR] [\\fIarguments\\fR]',
    '.SH DESCRIPTION',
    roff(`${program.description()}.`),
    'Results go to stdout, logs and progress to stderr.',
    'Each command also prints its options, examples and exit codes with',
    '.BR "guestbackup \\fIcommand\\fP \\-\\-help" .',
    '.SH OPTIONS',
    ...options(program),
    '.SH COMMANDS',
  ]
  for (const cmd of commands(program)) {
    // commander's usage names the parents: "guestbackup job run [options] <file>".
    const usage = h.commandUsage(cmd).replace(/^guestbackup /, '')
    out.push(`.SS "${roff(usage)}"`, roff(cmd.description()))
    out.push(...options(cmd))
    const path = commandPath(cmd)
    const special = COMMAND_EXIT[path]
    if (special !== undefined) out.push('.PP', roff(`Exit code 1: ${special}.`))
    const list = EXAMPLES[path] ?? []
    if (list.length > 0) out.push('.PP', 'Examples:', ...examples(list))
  }
  out.push('.SH "EXIT STATUS"')
  for (const { code, meaning } of EXIT_CODES) out.push('.TP', `.B ${code}`, roff(meaning))
  out.push('.SH ENVIRONMENT', '.TP', `.B ${roff(STORE_ENV)}`)
  out.push(roff('the store of every command but init when --store is not given'))
  out.push('.SH EXAMPLES', ...examples(EXAMPLES[''] ?? []))
  out.push('.SH "SEE ALSO"', '.BR vzdump (1),', '.BR qemu\\-img (1),')
  out.push('/usr/share/doc/guestbackup/')
  return `${out.join('\n')}\n`
}
