/**
 * What guestbackup's `--help` shows beyond commander's default: `(required)` after a mandatory
 * option, and after the options each command's examples (./examples.ts) and exit codes
 * (./exit-codes.ts), through commander's `configureHelp` and `addHelpText('after')`
 * (https://github.com/tj/commander.js#custom-help). The man page (./man.ts) shows the same.
 */
import { Help } from 'commander'
import type { Command, Option } from 'commander'
import { STORE_ENV } from '../store-option.ts'
import { EXAMPLES, exampleLines } from './examples.ts'
import { COMMAND_EXIT, EXIT_CODES } from './exit-codes.ts'

/** Help lines are at most this wide, whatever the terminal (commander's width without one). */
export const HELP_WIDTH = 80

/** The path of `cmd` below the program: `''`, `'backup'`, `'job run'`. */
export const commandPath = (cmd: Command): string => {
  const names: string[] = []
  for (let c: Command = cmd; c.parent !== null; c = c.parent) names.unshift(c.name())
  return names.join(' ')
}

/** commander's description of `option`, with `(required)` for a mandatory one. */
export function optionDescription(this: Help, option: Option): string {
  const base = Help.prototype.optionDescription.call(this, option)
  if (!option.mandatory) return base
  // commander's own extras (choices, default, env) with an empty description: "(env: X)".
  const bare = Object.assign(Object.create(option) as Option, { description: '' })
  const extra = Help.prototype.optionDescription.call(this, bare)
  const more = extra === '' ? ')' : `, ${extra.slice(1)}`
  return `${option.description} (required${more}`.trim()
}

/** `text` as lines of at most `width` columns: the first after `first`, the others `hang`. */
export const wrap = (text: string, first: string, hang: string, width: number): string[] => {
  const lines: string[] = []
  let line = first
  let empty = true
  for (const word of text.split(' ')) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line)
      line = hang + word
    } else line = empty ? line + word : `${line} ${word}`
    empty = false
  }
  lines.push(line)
  return lines
}

/** The text after the options of the command at `path` in `--help`. */
export const helpAfter = (path: string): string => {
  const out: string[] = []
  const examples = EXAMPLES[path] ?? []
  if (examples.length > 0) {
    out.push('', 'Examples:')
    for (const ex of examples) {
      out.push(...wrap(`${ex.what}:`, '  ', '  ', HELP_WIDTH))
      out.push(...exampleLines(ex, HELP_WIDTH - 4).map((l) => `    ${l}`))
    }
  }
  if (path === '') {
    out.push('', 'Exit codes:')
    for (const { code, meaning } of EXIT_CODES) {
      out.push(...wrap(meaning, `  ${String(code).padEnd(5)}`, ' '.repeat(7), HELP_WIDTH))
    }
    out.push('', 'Environment:')
    const env = `${STORE_ENV}  the store of every command but init without --store`
    out.push(...wrap(env, '  ', ' '.repeat(STORE_ENV.length + 4), HELP_WIDTH))
    out.push('', "Each command's options: guestbackup COMMAND --help; see also guestbackup(1).")
  } else {
    const special = COMMAND_EXIT[path]
    out.push('', 'Exit codes:')
    const codes = `0 ok; 1 ${special ?? 'failure'}; 2 usage or input error; 130 interrupted`
    out.push(...wrap(codes, '  ', '  ', HELP_WIDTH))
  }
  return `${out.join('\n')}\n`
}

/**
 * A command in its parent's list: commander's term (`name [options] <args>`) without a trailing
 * variadic argument that follows another (`files [options] <volume> <action>`): the list keeps
 * its descriptions wide enough to wrap within {@link HELP_WIDTH}; the command's own help shows
 * its whole usage.
 */
const subcommandTerm = (cmd: Command): string => {
  const args = cmd.registeredArguments
  const shown = args.length > 1 && args.at(-1)?.variadic === true ? args.slice(0, -1) : args
  const words = shown.map((a) => {
    const n = `${a.name()}${a.variadic ? '...' : ''}`
    return a.required ? `<${n}>` : `[${n}]`
  })
  const opts = cmd.options.length > 0 ? ' [options]' : ''
  return [`${cmd.name()}${opts}`, ...words].join(' ')
}

/** Give `program` and each of its commands the help above (call once the commands exist). */
export const attachHelp = (program: Command): void => {
  const walk = (cmd: Command): void => {
    cmd.configureHelp({ ...cmd.configureHelp(), optionDescription, subcommandTerm })
    cmd.addHelpText('after', helpAfter(commandPath(cmd)))
    for (const sub of cmd.commands) walk(sub)
  }
  walk(program)
}
