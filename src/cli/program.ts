/**
 * The commands of the guestbackup CLI as a commander program, built afresh for each run so that
 * no parsed option or result outlives it. Results go to `io.stdout`, logs to `io.stderr`.
 *
 * Only commander and the option parsers are loaded up front: each action imports its command's
 * module (and so the store, QEMU and NBD code) when it runs, so `--help`, `--version` and a
 * usage error start without them and every command loads only what it needs.
 */
import { readFileSync } from 'node:fs'
import { Command, CommanderError, Option } from 'commander'
import { BackupError } from '../errors.ts'
import type { Logger, LogLevel } from '../log.ts'
import type { LockPolicy } from '../io/lock.ts'
import type { BackupCommandOptions } from './commands/backup.ts'
import type { BitmapsCommandOptions } from './commands/bitmaps.ts'
import type { CheckCommandOptions } from './commands/check.ts'
import type { RestoreCommandOptions } from './commands/restore.ts'
import type { ListCommandOptions } from './commands/list.ts'
import type { InitCommandOptions, PruneCommandOptions } from './commands/store.ts'
import type { VerifyCommandOptions } from './commands/verify.ts'
import type { CliIO, CliStream } from './io.ts'
import { writeLine } from './io.ts'
import { formatInArgv, OUTPUT_FORMATS, resolveFormat } from './output/format.ts'
import { errorLine, logJson } from './output/log-json.ts'
import type { JsonAlias, OutputFormat } from './output/format.ts'
import {
  collect,
  collectDisk,
  collectDiskTarget,
  LOCK_WAIT_DEFAULTS,
  parseCount,
  parseLockWait,
  parseRate,
  parseVmid,
} from './parse.ts'

/** The package's version: package.json sits two levels up from src/cli/ and dist/cli/ alike. */
const VERSION =
  (
    JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string
    }
  ).version ?? 'unknown'

const LOCK_WAIT_HELP = (dflt: string): string =>
  `wait this long for the guest's lock: minutes (vzdump's lockwait) or 30s, 5m, 2h; 0: fail at once (default: ${dflt})`

/** A program ready to parse one command line, and the exit code its command chose. */
export interface CliProgram {
  /** The commander program; `parseAsync` throws CommanderError for help, version and usage. */
  readonly program: Command
  /** The exit code the command's action returned; 0 until one did. */
  readonly exitCode: () => number
}

// commander's own rule: the terminal's width, 80 columns when not a terminal.
const helpWidth = (stream: CliStream): number =>
  stream.isTTY === true ? (stream.columns ?? 80) : 80

/** Build the program of one run: commander writes help and usage errors to `io`, never exits. */
export const createProgram = (io: CliIO, argv: readonly string[] = []): CliProgram => {
  const program = new Command('guestbackup')
  program.description('Backups of QEMU VMs and container trees (Proxmox VE backup provider model)')
  // Before .version(): this listener runs first and prints the version as JSON when asked.
  program.on('option:version', () => {
    const format = formatInArgv(argv)
    if (format === undefined || format === 'text') return
    writeLine(io.stdout, JSON.stringify({ version: VERSION }, null, format === 'json' ? 0 : 2))
    throw new CommanderError(0, 'commander.version', VERSION)
  })
  program
    .version(VERSION)
    .option('-v, --verbose', 'log progress details on stderr')
    .addOption(
      new Option(
        '--output-format <format>',
        'results on stdout as text, json (one line) or json-pretty (docs/cli-json.md)',
      ).choices(OUTPUT_FORMATS),
    )
    .option('--log-json', 'log JSON lines on stderr')
    .option('--debug', 'print stack traces on errors')
    // One line per usage error, with where to look: 'error: unknown option … (see --help)'.
    .configureOutput({
      writeOut: (str) => io.stdout.write(str),
      writeErr: (str) => io.stderr.write(str),
      outputError: (str, write) => {
        const line = `${str.trimEnd()} (see --help)`
        write(logJson(program.opts(), argv) ? errorLine(line, { code: 'USAGE' }) : `${line}\n`)
      },
      // commander's defaults measure process.stdout/stderr; help wraps to io's own terminal.
      getOutHelpWidth: () => helpWidth(io.stdout),
      getErrHelpWidth: () => helpWidth(io.stderr),
    })
    // Help, version and usage errors throw CommanderError instead of calling process.exit.
    .exitOverride()

  // A new logger per command, on this run's stderr: a logger kept from an earlier run would
  // still write to that run's stream.
  const logger = async (): Promise<Logger> => {
    const { createLogger } = await import('../log.ts')
    const o = program.opts<{ verbose?: boolean; logJson?: boolean }>()
    const level: LogLevel = o.verbose === true ? 'info' : 'warn'
    return createLogger(level, o.logJson === true, io.stderr)
  }

  let result = 0

  // With --log-json every stderr line is JSON: no progress line is drawn (it needs a terminal).
  const logIo = (): CliIO =>
    program.opts<{ logJson?: boolean }>().logJson === true
      ? { ...io, stderr: { write: (text: string) => io.stderr.write(text) } }
      : io

  // The format of this command's results: --output-format, or what its --json stands for.
  const format = (o: { json?: unknown }, alias: JsonAlias): OutputFormat =>
    resolveFormat(
      program.opts<{ outputFormat?: OutputFormat }>().outputFormat,
      o.json === true,
      alias,
    )
  const JSON_HELP = (alias: JsonAlias): string => `the same as --output-format ${alias}`

  // Wait messages are shown by default (warn level): a command that waits says why.
  const lockPolicy = (waitMs: number | undefined, log: Logger): LockPolicy => ({
    waitMs: waitMs ?? LOCK_WAIT_DEFAULTS.other,
    signal: io.signal,
    log: (m) => {
      log.warn(m)
    },
  })

  program
    .command('init')
    .description('create (or update the options of) a directory store')
    .argument('<store>', 'store directory')
    .addOption(
      new Option('--vm-backup-mode <mode>', 'full, or incremental when possible').choices([
        'full',
        'incremental',
      ]),
    )
    .addOption(
      new Option('--vm-backup-mechanism <mechanism>', 'how VM disks are read').choices([
        'nbd',
        'file-handle',
      ]),
    )
    .addOption(
      new Option('--lxc-backup-mode <mode>', 'container archive format').choices([
        'tar',
        'squashfs',
      ]),
    )
    .option('--id <id>', 'store id, the prefix of volume ids (default: from the directory name)')
    .option('--prune-backups <spec>', 'retention, e.g. keep-last=3,keep-daily=7')
    .option(
      '--max-protected-backups <n>',
      'protected backups per guest (-1: unlimited)',
      parseCount,
    )
    .option(
      '--incremental-sample <n>',
      'clean 64 KiB blocks per disk an incremental compares with the previous backup (0: off)',
      parseCount,
    )
    .addOption(
      new Option(
        '--verify-after-backup <when>',
        'read stored VM images back before committing: first (full backups), always, never',
      ).choices(['first', 'always', 'never']),
    )
    .addOption(
      new Option(
        '--vm-compress <type>',
        'store VM disk images with zstd-compressed qcow2 clusters, or not (new stores: zstd)',
      ).choices(['zstd', 'none']),
    )
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (store: string, o: InitCommandOptions) => {
      const { initCommand } = await import('./commands/store.ts')
      await initCommand(store, o, io, format(o, 'json-pretty'))
    })

  program
    .command('backup')
    .description('back up a stopped VM (--disk), a running VM (--qmp) or a container (--rootfs)')
    .requiredOption('--store <dir>', 'store directory')
    .requiredOption('--vmid <id>', 'guest id', parseVmid)
    .requiredOption('--config <file>', 'guest configuration file to keep with the backup')
    .option('--firewall-config <file>', 'firewall configuration file to keep with the backup')
    .option(
      '--disk <name=path>',
      'VM disk, NAME=PATH[,format=raw|qcow2|vmdk|vdi|vhdx|qed] (default: qcow2 for *.qcow2, else raw); repeatable',
      collectDisk,
    )
    .option('--qmp <socket>', 'QMP socket of a running VM: back it up live, at one instant')
    .option('--qga <socket>', 'guest agent socket of that VM: freeze file systems at the instant')
    .option('--device <name>', 'with --qmp: only this disk (e.g. scsi0); repeatable', collect)
    .option('--fleecing-dir <dir>', 'with --qmp: where overlays keep old data during the backup')
    .option('--rootfs <dir>', 'container root directory')
    .option(
      '--exclude <pattern>',
      'container exclude pattern (vzdump semantics); repeatable',
      collect,
    )
    .option('--allow-host-root', "with --rootfs /: really back up the host's root directory")
    .option('--bwlimit <rate>', 'bandwidth limit in bytes/s (suffix K, M, G)', parseRate)
    .option('--lock-wait <time>', LOCK_WAIT_HELP('180'), parseLockWait)
    .option('--json', JSON_HELP('json'))
    .action(async (o: BackupCommandOptions) => {
      const { backupCommand } = await import('./commands/backup.ts')
      result = await backupCommand(o, await logger(), logIo(), format(o, 'json'))
    })

  program
    .command('list')
    .description('list the backups of a store')
    .requiredOption('--store <dir>', 'store directory')
    .option('--vmid <id>', 'only this guest', parseVmid)
    .option('--failed', 'also list failed backup runs, with their error and task log')
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (o: ListCommandOptions) => {
      const { listCommand } = await import('./commands/list.ts')
      await listCommand(o, io, format(o, 'json-pretty'))
    })

  program
    .command('restore')
    .description(
      'restore a backup: VM disks as <target>/<device>.raw, containers as <target>/rootfs',
    )
    .argument('<volume>', 'volume name, backup/<vmid>/<type>-<time>')
    .requiredOption('--store <dir>', 'store directory')
    .requiredOption('--target <dir>', 'target directory (created; must be empty)')
    .option(
      '--disk-target <device=path>',
      'restore this disk onto an existing regular file or block device (repeatable)',
      collectDiskTarget,
    )
    .option('--bwlimit <rate>', 'bandwidth limit in bytes/s (suffix K, M, G)', parseRate)
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: RestoreCommandOptions) => {
      const { restoreCommand } = await import('./commands/restore.ts')
      result = await restoreCommand(o, volume, await logger(), io, format(o, 'json'))
    })

  program
    .command('verify')
    .description('check backups against the digests recorded when they were taken')
    .argument('[volumes...]', 'volume names (default: every backup of the store)')
    .requiredOption('--store <dir>', 'store directory')
    .option(
      '--restored <dir>',
      'prove a restore of one backup in <dir> (as restore --target wrote it)',
    )
    .option('--lock-wait <time>', LOCK_WAIT_HELP('10'), parseLockWait)
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (volumes: string[], o: VerifyCommandOptions) => {
      const { verifyCommand } = await import('./commands/verify.ts')
      const log = await logger()
      const lock = lockPolicy(o.lockWait, log)
      result = await verifyCommand(volumes, o, log, logIo(), lock, format(o, 'json-pretty'))
    })

  program
    .command('show-config')
    .description('print the guest configuration stored in a backup')
    .argument('<volume>', 'volume name')
    .requiredOption('--store <dir>', 'store directory')
    .option('--firewall', 'print the firewall configuration instead')
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: { store: string; firewall?: boolean; json?: boolean }) => {
      const { showConfigCommand } = await import('./commands/store.ts')
      await showConfigCommand(volume, o, io, format(o, 'json'))
    })

  program
    .command('prune')
    .description("remove backups not covered by the retention policy (default: the store's)")
    .requiredOption('--store <dir>', 'store directory')
    .option('--vmid <id>', 'only this guest', parseVmid)
    .addOption(new Option('--type <type>', 'only this guest type').choices(['qemu', 'lxc']))
    .option('--keep <spec>', 'retention, e.g. keep-last=3,keep-daily=7')
    .option('--dry-run', 'only show what would be removed')
    .option('--lock-wait <time>', LOCK_WAIT_HELP('10'), parseLockWait)
    .option('--json', JSON_HELP('json'))
    .action(async (o: PruneCommandOptions) => {
      const { pruneCommand } = await import('./commands/store.ts')
      const log = await logger()
      await pruneCommand(o, log, io, lockPolicy(o.lockWait, log), format(o, 'json'))
    })

  program
    .command('remove')
    .description('remove one backup (refused when protected; dependants are merged first)')
    .argument('<volume>', 'volume name')
    .requiredOption('--store <dir>', 'store directory')
    .option('--lock-wait <time>', LOCK_WAIT_HELP('10'), parseLockWait)
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: { store: string; lockWait?: number; json?: boolean }) => {
      const { removeCommand } = await import('./commands/store.ts')
      const log = await logger()
      await removeCommand(volume, o, log, lockPolicy(o.lockWait, log), io, format(o, 'json'))
    })

  program
    .command('protect')
    .description('mark a backup protected (or unprotected with --off)')
    .argument('<volume>', 'volume name')
    .requiredOption('--store <dir>', 'store directory')
    .option('--off', 'remove the protection')
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: { store: string; off?: boolean; json?: boolean }) => {
      const { protectCommand } = await import('./commands/store.ts')
      await protectCommand(volume, o, io, format(o, 'json'))
    })

  program
    .command('notes')
    .description('print, or with --set replace, the notes of a backup')
    .argument('<volume>', 'volume name')
    .requiredOption('--store <dir>', 'store directory')
    .option('--set <text>', 'new notes ("" removes them)')
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: { store: string; set?: string; json?: boolean }) => {
      const { notesCommand } = await import('./commands/store.ts')
      await notesCommand(volume, o, io, format(o, 'json'))
    })

  program
    .command('bitmaps')
    .description("list (or drop) guestbackup's dirty bitmaps in a stopped VM's qcow2 disk")
    .requiredOption('--disk <path>', 'qcow2 image of a stopped VM')
    .option(
      '--drop <name>',
      'remove this bitmap (the next backup of the disk is full); repeatable',
      collect,
    )
    .option('--drop-all', 'remove every guestbackup bitmap of the disk')
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (o: BitmapsCommandOptions) => {
      if (o.drop !== undefined && o.dropAll === true) {
        throw new BackupError('USAGE', 'give --drop NAME or --drop-all, not both')
      }
      const { bitmapsCommand } = await import('./commands/bitmaps.ts')
      result = await bitmapsCommand(o, io, format(o, 'json-pretty'))
    })

  program
    .command('check')
    .description('check a store for what killed runs, hand edits or tampering left (--repair: fix)')
    .requiredOption('--store <dir>', 'store directory')
    .option('--vmid <id>', 'only this guest', parseVmid)
    .option('--repair', 'repair what is found (each guest locked while it is repaired)')
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (o: CheckCommandOptions) => {
      const { checkCommand } = await import('./commands/check.ts')
      result = await checkCommand(o, await logger(), io, format(o, 'json-pretty'))
    })

  // For the Proxmox VE plugin only (docs/pve-protocol.md): not listed in --help.
  program
    .command('pve-call', { hidden: true })
    .description('serve one call of the Proxmox VE plugin (request on stdin, replies on stdout)')
    .action(async () => {
      const { pveCallCommand } = await import('./commands/pve.ts')
      result = await pveCallCommand(io, program.version() ?? 'unknown')
    })
  program
    .command('pve-hold', { hidden: true })
    .description('keep a restore source of the Proxmox VE plugin alive (started by pve-call)')
    .action(async () => {
      const { pveHoldCommand } = await import('./commands/pve.ts')
      result = await pveHoldCommand(io)
    })

  return { program, exitCode: () => result }
}
