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
import type { JobRunCommandOptions } from './commands/job.ts'
import type { VerifyCommandOptions } from './commands/verify.ts'
import type { CliIO, CliStream } from './io.ts'
import { writeLine } from './io.ts'
import { formatInArgv, OUTPUT_FORMATS, resolveFormat } from './output/format.ts'
import { errorLine, logJson } from './output/log-json.ts'
import type { JsonAlias, OutputFormat } from './output/format.ts'
import { ProgressStream } from './progress/index.ts'
import {
  collect,
  collectDisk,
  collectDevice,
  collectDiskTarget,
  LOCK_WAIT_DEFAULTS,
  parseCount,
  parseKeepCount,
  parseLockWait,
  parseRate,
  parseCompress,
  parseZstdThreads,
  parseVmid,
  renamed,
} from './parse.ts'
import { parseBool, parseNotesTemplate, refuseExclude } from './parse-backup.ts'
import { storeOption } from './store-option.ts'
import { attachHelp } from './help/attach.ts'

/** The package's version: package.json sits two levels up from src/cli/ and dist/cli/ alike. */
const VERSION =
  (
    JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string
    }
  ).version ?? 'unknown'

const LOCK_WAIT_HELP = (dflt: string): string =>
  `wait this long for the guest's lock: a bare number is minutes (vzdump's lockwait), or 30s, 5m, 2h; 0: fail at once (default: ${dflt} minutes)`

const LATEST_HELP = "backup/<vmid>/latest (or latest with --vmid): the guest's newest"

const BWLIMIT_HELP =
  'bandwidth limit: a bare number is KiB/s as vzdump (10000), or 50M, 1G, 65536B; 0 (or not given): no limit'

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
export const createProgram = (outer: CliIO, argv: readonly string[] = []): CliProgram => {
  // Everything of the run written to stderr passes above the progress line (progress/).
  const stderr = new ProgressStream(outer.stderr)
  const io: CliIO = { ...outer, stderr }
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
    .option('-q, --quiet', 'print nothing on stderr but errors (no progress, no warnings)')
    .option('--no-progress', 'show no progress (a terminal line, or INFO lines without one)')
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
        // commander puts its "(Did you mean …?)" on a line of its own: joined, still one line.
        const line = `${str.trim().replace(/\s*\n\s*/g, ' ')} (see --help)`
        write(logJson(program.opts(), argv) ? errorLine(line, { code: 'USAGE' }) : `${line}\n`)
      },
      // commander's defaults measure process.stdout/stderr; help wraps to io's own terminal.
      getOutHelpWidth: () => helpWidth(io.stdout),
      getErrHelpWidth: () => helpWidth(io.stderr),
    })
    // Help, version and usage errors throw CommanderError instead of calling process.exit.
    .exitOverride()
    .hook('preAction', () => {
      const o = program.opts<{ quiet?: boolean; progress?: boolean; logJson?: boolean }>()
      // With --log-json every stderr line is JSON: neither a terminal line nor INFO lines.
      stderr.configure({
        show: o.quiet !== true && o.progress !== false && o.logJson !== true,
        lines: o.logJson !== true,
      })
    })

  // A new logger per command, on this run's stderr: a logger kept from an earlier run would
  // still write to that run's stream.
  const logger = async (): Promise<Logger> => {
    const { createLogger } = await import('../log.ts')
    const o = program.opts<{ verbose?: boolean; quiet?: boolean; logJson?: boolean }>()
    const level: LogLevel = o.quiet === true ? 'error' : o.verbose === true ? 'info' : 'warn'
    return createLogger(level, o.logJson === true, io.stderr)
  }

  let result = 0

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
      new Option(
        '--vm-backup-mode <mode>',
        'full, or incremental when possible (default: full)',
      ).choices(['full', 'incremental']),
    )
    .addOption(
      new Option(
        '--vm-backup-mechanism <mechanism>',
        'how VM disks are read (default: nbd)',
      ).choices(['nbd', 'file-handle']),
    )
    .addOption(
      new Option('--lxc-backup-mode <mode>', 'container archive format (default: tar)').choices([
        'tar',
        'squashfs',
      ]),
    )
    .option('--id <id>', 'store id, the prefix of volume ids (default: from the directory name)')
    .option(
      '--prune-backups <spec>',
      'retention, e.g. keep-last=3,keep-daily=7 (default: keep-all=1)',
    )
    .option(
      '--max-protected-backups <n>',
      'protected backups per guest (-1: unlimited, the default)',
      parseCount,
    )
    .option(
      '--incremental-sample <n>',
      'clean 64 KiB blocks per disk an incremental compares with the previous backup (0: off; default: 64)',
      parseCount,
    )
    .addOption(
      new Option(
        '--verify-after-backup <when>',
        'read stored VM images back before committing: first (full backups), always, never (default: first)',
      ).choices(['first', 'always', 'never']),
    )
    .addOption(
      new Option(
        '--vm-compress <type>',
        'store VM disk images with zstd-compressed qcow2 clusters, or not (new stores: zstd)',
      ).choices(['zstd', 'none']),
    )
    .addOption(
      new Option(
        '--lxc-compress <type>',
        'compress container tar archives: zstd, gzip, lzo or none (new stores: zstd)',
      ).choices(['zstd', 'gzip', 'lzo', 'none']),
    )
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (store: string, o: InitCommandOptions) => {
      const { initCommand } = await import('./commands/store.ts')
      await initCommand(store, o, io, format(o, 'json-pretty'))
    })

  program
    .command('backup')
    .description('back up a stopped VM (--disk), a running VM (--qmp) or a container (--rootfs)')
    .addOption(storeOption())
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
      '--exclude-path <pattern>',
      'container path to leave out (vzdump semantics: /x anchored, x anywhere); repeatable',
      collect,
    )
    .option(
      '--stdexcludes <0|1>',
      "leave out vzdump's /tmp/?*, /var/tmp/?*, /var/run/?*.pid (default: 1)",
      parseBool,
    )
    .addOption(new Option('--exclude <ids>').hideHelp().argParser(refuseExclude))
    .option('--allow-host-root', "with --rootfs /: really back up the host's root directory")
    .option(
      '--idmap <u|g:ct:host:count>',
      "unprivileged container's id map, archived as its mapped root (default: the --config's lxc.idmap / unprivileged lines); repeatable",
      collect,
    )
    .option(
      '--compress <type>',
      "container archive compression: zstd, gzip, lzo, 0 (none), 1 (lzo) (default: the store's lxc-compress)",
      parseCompress,
    )
    .option('--zstd <threads>', 'zstd threads, 0: half of the cores (default: 0)', parseZstdThreads)
    .option('--bwlimit <rate>', BWLIMIT_HELP, parseRate)
    .option('--lock-wait <time>', LOCK_WAIT_HELP('180'), parseLockWait)
    .option('--json', JSON_HELP('json'))
    .option(
      '--notes-template <template>',
      'notes of the new backup: {{guestname}}, {{vmid}}, {{node}}, {{cluster}}; \\n, \\\\ escapes',
      parseNotesTemplate,
    )
    .option('--protected', 'protect the new backup')
    .option(
      '--remove <0|1>',
      "then prune the guest's backups by the store's prune-backups (default: 1)",
      parseBool,
    )
    .action(async (o: BackupCommandOptions) => {
      const { backupCommand } = await import('./commands/backup.ts')
      result = await backupCommand(o, await logger(), io, format(o, 'json'))
    })

  program
    .command('list')
    .description('list the backups of a store')
    .addOption(storeOption())
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
      'restore a backup: VM disks as <target>/<device>.raw (or .qcow2), containers as <target>/rootfs',
    )
    .argument('<volume>', `volume name, backup/<vmid>/<type>-<time>; ${LATEST_HELP}`)
    .addOption(storeOption())
    .requiredOption('--target <dir>', 'target directory (created; must be empty)')
    .option('--vmid <id>', "the guest of 'latest'", parseVmid)
    .option('--disk <device>', 'restore only this disk, e.g. scsi0 (repeatable)', collectDevice)
    .option(
      '--target-disk <device=path>',
      'restore this disk onto an existing regular file or block device (repeatable)',
      collectDiskTarget,
    )
    .addOption(new Option('--disk-target <device=path>').hideHelp().argParser(renamed))
    .option(
      '--idmap <u|g:ct:host:count>',
      'restore a container as its mapped root with this id map (unprivileged); repeatable',
      collect,
    )
    .option('--privileged', 'restore the ids of an unprivileged backup unshifted')
    .addOption(
      new Option(
        '--format <format>',
        'format of the disk files in the target (default: raw)',
      ).choices(['raw', 'qcow2']),
    )
    .option('--bwlimit <rate>', BWLIMIT_HELP, parseRate)
    .option('--json', JSON_HELP('json'))
    .action(async (volume: string, o: RestoreCommandOptions) => {
      const { restoreCommand } = await import('./commands/restore.ts')
      result = await restoreCommand(o, volume, await logger(), io, format(o, 'json'))
    })

  program
    .command('verify')
    .description('check backups against the digests recorded when they were taken')
    .argument('[volumes...]', `volume names (default: every backup of the store); ${LATEST_HELP}`)
    .addOption(storeOption())
    .option('--vmid <id>', "the guest of 'latest'", parseVmid)
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
      result = await verifyCommand(volumes, o, log, io, lock, format(o, 'json-pretty'))
    })

  program
    .command('show-config')
    .description('print the guest configuration stored in a backup')
    .argument('<volume>', `volume name; ${LATEST_HELP}`)
    .addOption(storeOption())
    .option('--vmid <id>', "the guest of 'latest'", parseVmid)
    .option('--firewall', 'print the firewall configuration instead')
    .option('--json', JSON_HELP('json'))
    .action(
      async (
        volume: string,
        o: { store: string; firewall?: boolean; vmid?: number; json?: boolean },
      ) => {
        const { showConfigCommand } = await import('./commands/store.ts')
        await showConfigCommand(volume, o, io, format(o, 'json'))
      },
    )

  program
    .command('prune')
    .description("remove backups not covered by the retention policy (default: the store's)")
    .addOption(storeOption())
    .option('--vmid <id>', 'only this guest', parseVmid)
    .addOption(new Option('--type <type>', 'only this guest type').choices(['qemu', 'lxc']))
    .option('--keep <spec>', 'retention, e.g. keep-last=3,keep-daily=7 (or the flags below)')
    .option('--keep-all [0|1]', 'keep all backups (conflicts with the counts)', parseBool)
    .option('--keep-last <n>', 'keep the last N backups', parseKeepCount)
    .option('--keep-hourly <n>', 'keep the last backup of each of the last N hours', parseKeepCount)
    .option('--keep-daily <n>', 'keep the last backup of each of the last N days', parseKeepCount)
    .option('--keep-weekly <n>', 'keep the last backup of each of the last N weeks', parseKeepCount)
    .option(
      '--keep-monthly <n>',
      'keep the last backup of each of the last N months',
      parseKeepCount,
    )
    .option('--keep-yearly <n>', 'keep the last backup of each of the last N years', parseKeepCount)
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
    .addOption(storeOption())
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
    .argument('<volume>', `volume name; ${LATEST_HELP}`)
    .addOption(storeOption())
    .option('--vmid <id>', "the guest of 'latest'", parseVmid)
    .option('--off', 'remove the protection')
    .option('--json', JSON_HELP('json'))
    .action(
      async (
        volume: string,
        o: { store: string; off?: boolean; vmid?: number; json?: boolean },
      ) => {
        const { protectCommand } = await import('./commands/store.ts')
        await protectCommand(volume, o, await logger(), io, format(o, 'json'))
      },
    )

  program
    .command('notes')
    .description('print, or with --set replace, the notes of a backup')
    .argument('<volume>', `volume name; ${LATEST_HELP}`)
    .addOption(storeOption())
    .option('--vmid <id>', "the guest of 'latest'", parseVmid)
    .option('--set <text>', 'new notes ("" removes them)')
    .option('--json', JSON_HELP('json'))
    .action(
      async (volume: string, o: { store: string; set?: string; vmid?: number; json?: boolean }) => {
        const { notesCommand } = await import('./commands/store.ts')
        await notesCommand(volume, o, io, await logger(), format(o, 'json'))
      },
    )

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
    .addOption(storeOption())
    .option('--vmid <id>', 'only this guest', parseVmid)
    .option('--repair', 'repair what is found (each guest locked while it is repaired)')
    .option('--json', JSON_HELP('json-pretty'))
    .action(async (o: CheckCommandOptions) => {
      const { checkCommand } = await import('./commands/check.ts')
      result = await checkCommand(o, await logger(), io, format(o, 'json-pretty'))
    })

  const job = program
    .command('job')
    .description('back up the guests of a job file in one job (docs/jobs.md)')
  job
    .command('run')
    .description('back up every guest of the job file; exit code 0 only if all succeeded')
    .argument('<file>', 'job file (TOML)')
    .option('--script <file>', "vzdump hook script (overrides the file's script)")
    .option('--json', JSON_HELP('json'))
    .action(async (file: string, o: JobRunCommandOptions) => {
      const { jobRunCommand } = await import('./commands/job.ts')
      result = await jobRunCommand(file, o, await logger(), io, format(o, 'json'))
    })
  job
    .command('check')
    .description('validate a job file: one line per error (path in the file: reason)')
    .argument('<file>', 'job file (TOML)')
    .option('--json', JSON_HELP('json'))
    .action(async (file: string, o: { json?: boolean }) => {
      const { jobCheckCommand } = await import('./commands/job.ts')
      result = await jobCheckCommand(file, io, format(o, 'json'))
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

  attachHelp(program)
  return { program, exitCode: () => result }
}
