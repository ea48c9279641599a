/**
 * The examples of every command, shared by `--help` (./attach.ts) and the man page (./man.ts).
 * Each one is an argument vector, not shell text, so test/cli/help/examples.test.ts can parse
 * it with the real program: an example that stops parsing fails the test.
 */

/** One example command line. */
export interface Example {
  /** What it does, one short sentence. */
  readonly what: string
  /** The arguments after `guestbackup`. */
  readonly argv: readonly string[]
  /** Environment variables set before the command (`NAME=value guestbackup …`). */
  readonly env?: Readonly<Record<string, string>>
}

const STORE = ['--store', '/srv/backup'] as const
const VM_CONF = '/etc/pve/qemu-server/100.conf'
const VM_DISK = '/var/lib/vz/images/100/vm-100-disk-0.qcow2'
const VOLUME = 'backup/100/qemu-2026-11-26T04:00:00Z'
const JOB = '/etc/guestbackup/nightly.toml'

/**
 * Examples by command path (`''` the program itself, `'job run'` a subcommand). Every visible
 * command has two or three.
 */
export const EXAMPLES: Readonly<Record<string, readonly Example[]>> = {
  '': [
    {
      what: 'Create a store keeping 7 daily backups of each guest',
      argv: ['init', '/srv/backup', '--prune-backups', 'keep-daily=7'],
    },
    {
      what: 'List the backups of guest 100, the store taken from the environment',
      argv: ['list', '--vmid', '100'],
      env: { GUESTBACKUP_STORE: '/srv/backup' },
    },
    {
      what: 'Run a nightly job file, its result as one line of JSON',
      argv: ['--output-format', 'json', 'job', 'run', JOB],
    },
  ],
  init: [
    { what: 'Create a store (VM disks zstd-compressed)', argv: ['init', '/srv/backup'] },
    {
      what: 'Incremental VM backups, keeping 7 daily and 4 weekly backups',
      argv: [
        'init',
        '/srv/backup',
        '--vm-backup-mode',
        'incremental',
        '--prune-backups',
        'keep-daily=7,keep-weekly=4',
      ],
    },
    {
      what: 'Change the store id of an existing store (its UUID stays)',
      argv: ['init', '/srv/backup', '--id', 'nas1'],
    },
  ],
  backup: [
    {
      what: 'Back up a stopped VM from its qcow2 disk',
      argv: [
        'backup',
        ...STORE,
        '--vmid',
        '100',
        '--config',
        VM_CONF,
        '--disk',
        `scsi0=${VM_DISK}`,
      ],
    },
    {
      what: 'Back up a running VM live, its file systems frozen, at 10000 KiB/s',
      argv: [
        'backup',
        ...STORE,
        '--vmid',
        '100',
        '--config',
        VM_CONF,
        '--qmp',
        '/var/run/qemu-server/100.qmp',
        '--qga',
        '/var/run/qemu-server/100.qga',
        '--bwlimit',
        '10000',
      ],
    },
    {
      what: 'Back up a container root directory, without its cache',
      argv: [
        'backup',
        ...STORE,
        '--vmid',
        '200',
        '--config',
        '/etc/pve/lxc/200.conf',
        '--rootfs',
        '/srv/ct/200',
        '--exclude-path',
        '/var/cache',
      ],
    },
  ],
  list: [
    { what: 'List every backup of the store', argv: ['list', ...STORE] },
    {
      what: 'Backups and failed runs of guest 100, as JSON',
      argv: ['--output-format', 'json', 'list', ...STORE, '--vmid', '100', '--failed'],
    },
  ],
  restore: [
    {
      what: "Restore guest 100's newest backup into a new directory",
      argv: ['restore', ...STORE, 'latest', '--vmid', '100', '--target', '/srv/restore/100'],
    },
    {
      what: 'Restore only disk scsi0 of one backup, as qcow2',
      argv: [
        'restore',
        ...STORE,
        VOLUME,
        '--target',
        '/srv/restore/100',
        '--disk',
        'scsi0',
        '--format',
        'qcow2',
      ],
    },
    {
      what: 'Write disk scsi0 back onto its logical volume',
      argv: [
        'restore',
        ...STORE,
        'backup/100/latest',
        '--target',
        '/srv/restore/100',
        '--target-disk',
        'scsi0=/dev/pve/vm-100-disk-0',
      ],
    },
  ],
  verify: [
    { what: 'Verify every backup of the store', argv: ['verify', ...STORE] },
    {
      what: "Verify guest 100's newest backup",
      argv: ['verify', ...STORE, 'latest', '--vmid', '100'],
    },
    {
      what: 'Prove that a restore matches the backup it came from',
      argv: ['verify', ...STORE, VOLUME, '--restored', '/srv/restore/100'],
    },
  ],
  files: [
    {
      what: "List /etc of container 200's newest backup",
      argv: ['files', ...STORE, 'backup/200/latest', 'ls', 'etc'],
    },
    {
      what: 'Find every nginx configuration file in it',
      argv: ['files', ...STORE, 'backup/200/latest', 'find', 'nginx*.conf'],
    },
    {
      what: 'Get one file and one directory, reading only what they need',
      argv: [
        'files',
        ...STORE,
        'backup/200/latest',
        'get',
        'etc/nginx/nginx.conf',
        'var/www',
        '--to',
        '/root/found',
      ],
    },
  ],
  'show-config': [
    {
      what: "Print the configuration of guest 100's newest backup",
      argv: ['show-config', ...STORE, 'latest', '--vmid', '100'],
    },
    {
      what: 'Print the firewall configuration of one backup',
      argv: ['show-config', ...STORE, VOLUME, '--firewall'],
    },
  ],
  prune: [
    {
      what: "Show what the store's prune-backups would remove",
      argv: ['prune', ...STORE, '--dry-run'],
    },
    {
      what: 'Keep the last 3 and 7 daily backups of guest 100',
      argv: ['prune', ...STORE, '--vmid', '100', '--keep-last', '3', '--keep-daily', '7'],
    },
    {
      what: 'Prune with a retention spec, waiting up to 30 minutes for locks',
      argv: ['prune', ...STORE, '--keep', 'keep-weekly=4', '--lock-wait', '30'],
    },
  ],
  remove: [
    { what: 'Remove one backup', argv: ['remove', ...STORE, VOLUME] },
    {
      what: 'Remove it, failing at once if the guest is locked',
      argv: ['remove', VOLUME, '--lock-wait', '0'],
      env: { GUESTBACKUP_STORE: '/srv/backup' },
    },
  ],
  protect: [
    {
      what: "Protect guest 100's newest backup from prune and remove",
      argv: ['protect', ...STORE, 'latest', '--vmid', '100'],
    },
    { what: 'Remove the protection of one backup', argv: ['protect', ...STORE, VOLUME, '--off'] },
  ],
  notes: [
    { what: 'Print the notes of one backup', argv: ['notes', ...STORE, VOLUME] },
    {
      what: "Set the notes of guest 100's newest backup",
      argv: ['notes', ...STORE, 'backup/100/latest', '--set', 'before the upgrade'],
    },
  ],
  bitmaps: [
    { what: "List guestbackup's dirty bitmaps of a disk", argv: ['bitmaps', '--disk', VM_DISK] },
    {
      what: 'Drop them all (the next backup of the disk is full)',
      argv: ['bitmaps', '--disk', VM_DISK, '--drop-all'],
    },
  ],
  check: [
    { what: 'Check a store, changing nothing', argv: ['check', ...STORE] },
    {
      what: 'Check guest 100 and repair what is found',
      argv: ['check', ...STORE, '--vmid', '100', '--repair'],
    },
    {
      what: 'Check, the findings as JSON',
      argv: ['--output-format', 'json', 'check'],
      env: { GUESTBACKUP_STORE: '/srv/backup' },
    },
  ],
  job: [
    { what: 'Validate a job file', argv: ['job', 'check', JOB] },
    { what: 'Back up the guests of a job file', argv: ['job', 'run', JOB] },
  ],
  'job run': [
    { what: 'Back up the guests of a job file', argv: ['job', 'run', JOB] },
    {
      what: 'The same with a vzdump hook script, the result as JSON',
      argv: ['job', 'run', JOB, '--script', '/etc/guestbackup/hook.sh', '--json'],
    },
  ],
  'job check': [
    { what: 'Validate a job file: one line per error', argv: ['job', 'check', JOB] },
    {
      what: 'The same as JSON',
      argv: ['--output-format', 'json', 'job', 'check', JOB],
    },
  ],
}

// A word the shell passes on unchanged needs no quotes.
const PLAIN = /^[A-Za-z0-9_@%+=:,./-]+$/

/** `word` quoted for a POSIX shell where it needs it. */
export const shellWord = (word: string): string =>
  PLAIN.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`

/**
 * The example as shell lines of at most `width` columns: words joined greedily, an option kept
 * with its value, continued with ` \`; continuation lines indented by two spaces.
 */
export const exampleLines = (ex: Example, width: number): string[] => {
  const env = Object.entries(ex.env ?? {}).map(([k, v]) => `${k}=${shellWord(v)}`)
  const words = [...env, 'guestbackup', ...ex.argv.map(shellWord)]
  // Units kept on one line: an option and the value after it.
  const units: string[] = []
  for (let i = 0; i < words.length; i++) {
    const w = words[i] ?? ''
    const next = words[i + 1]
    if (w.startsWith('--') && next !== undefined && !next.startsWith('-')) {
      units.push(`${w} ${next}`)
      i++
    } else units.push(w)
  }
  const lines: string[] = []
  let line = ''
  for (const u of units) {
    const indent = lines.length === 0 ? '' : '  '
    if (line !== '' && indent.length + line.length + 1 + u.length + 2 > width) {
      lines.push(`${indent}${line} \\`)
      line = u
    } else line = line === '' ? u : `${line} ${u}`
  }
  lines.push(`${lines.length === 0 ? '' : '  '}${line}`)
  return lines
}
