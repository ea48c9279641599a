/**
 * vzdump's hook-script protocol (`--script FILE`), as pve-manager's PVE/VZDump.pm
 * `run_hook_script` runs it and its example `vzdump-hook-script.pl` documents it:
 *
 * - the script is called as `SCRIPT PHASE` for the job phases (`job-init`, `job-start`,
 *   `job-end`, `job-abort`) and `SCRIPT PHASE MODE VMID` for the guest phases (`backup-start`,
 *   `pre-stop`, `pre-restart`, `post-restart`, `backup-end`, `backup-abort`, `log-end`);
 * - its environment is only `STOREID`, `DUMPDIR` and, for guest phases, `VMTYPE`, `HOSTNAME`,
 *   `TARGET`, `LOGFILE`, each set when known (vzdump's `local %ENV` empties the rest);
 * - a non-zero exit fails the phase (PVE::Tools::run_command dies); its output goes to the
 *   task log of the guest, or the job's log for job phases.
 */
import { spawn } from 'node:child_process'
import { constants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import type { GuestType } from '../api/provider.ts'
import { BackupError } from '../errors.ts'

/** Every phase vzdump passes to a hook script. */
export const HOOK_PHASES = [
  'job-init',
  'job-start',
  'job-end',
  'job-abort',
  'backup-start',
  'pre-stop',
  'pre-restart',
  'post-restart',
  'backup-end',
  'backup-abort',
  'log-end',
] as const

/** One phase of the hook-script protocol. */
export type HookPhase = (typeof HOOK_PHASES)[number]

/**
 * vzdump's backup modes. The hook sees `snapshot` for a running VM (one instant, the VM keeps
 * running) and `stop` for a guest that is not running (`$mode = $running ? $task->{mode} :
 * 'stop'` in exec_backup_task).
 */
export type BackupMode = 'snapshot' | 'suspend' | 'stop'

/** What a guest phase tells the script: vzdump's `$task` fields it reads. */
export interface HookTask {
  mode: BackupMode
  vmid: number
  vmtype: GuestType
  /** The guest's name (`name:` of a VM's config, `hostname:` of a container's). */
  hostname?: string | undefined
  /** The archive name the provider chose, once `backupInit` gave it (`TARGET`). */
  target?: string | undefined
  /** The guest's task log, at `log-end` (`LOGFILE`). */
  logfile?: string | undefined
}

/** Runs one phase; rejects with `HOOK_FAILED` when the script fails. */
export type HookRunner = (
  phase: HookPhase,
  task: HookTask | undefined,
  output: (line: string) => void,
) => Promise<void>

/** Options of {@link hookScriptRunner}. */
export interface HookScriptOptions {
  /** The script (absolute path, executable). */
  script: string
  /** `STOREID`. */
  storeId?: string | undefined
  /** `DUMPDIR`: the store's directory. */
  dumpDir?: string | undefined
  /** Kills a running script (SIGTERM) when aborted. */
  signal?: AbortSignal | undefined
}

/** Checks vzdump makes before each call: the script is a regular file and executable. */
export const checkHookScript = async (script: string): Promise<void> => {
  const st = await stat(script).catch(() => undefined)
  // vzdump's messages, word for word.
  if (st?.isFile() !== true) {
    throw new BackupError('USAGE', `The hook script '${script}' does not exist.`)
  }
  try {
    await access(script, constants.X_OK)
  } catch (e) {
    throw new BackupError('USAGE', `The hook script '${script}' is not executable.`, { cause: e })
  }
}

/** The environment vzdump gives the script: nothing but these variables. */
export const hookEnvironment = (
  opts: Pick<HookScriptOptions, 'storeId' | 'dumpDir'>,
  task: HookTask | undefined,
): Record<string, string> => {
  const env: Record<string, string> = {}
  if (opts.storeId) env['STOREID'] = opts.storeId
  if (opts.dumpDir) env['DUMPDIR'] = opts.dumpDir
  if (task !== undefined) {
    env['VMTYPE'] = task.vmtype
    if (task.hostname) env['HOSTNAME'] = task.hostname
    if (task.target) env['TARGET'] = task.target
    if (task.logfile) env['LOGFILE'] = task.logfile
  }
  return env
}

/** A {@link HookRunner} that runs `opts.script` as vzdump does. */
export const hookScriptRunner =
  (opts: HookScriptOptions): HookRunner =>
  async (phase, task, output) => {
    await checkHookScript(opts.script)
    const args = task === undefined ? [phase] : [phase, task.mode, String(task.vmid)]
    const cmd = [opts.script, ...args].join(' ')
    const child = spawn(opts.script, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: hookEnvironment(opts, task),
      ...(opts.signal === undefined ? {} : { signal: opts.signal, killSignal: 'SIGTERM' }),
    })
    // run_command logs every line of both streams to the task log.
    for (const stream of [child.stdout, child.stderr]) {
      const lines = lineSplitter(output)
      stream.on('data', (b: Buffer) => {
        lines.push(b)
      })
      stream.on('end', () => {
        lines.end()
      })
    }
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>(
      (resolve, reject) => {
        child.once('error', (e) => {
          if (opts.signal?.aborted === true) resolve([null, 'SIGTERM'])
          else reject(new BackupError('HOOK_FAILED', `cannot run '${cmd}': ${e.message}`))
        })
        child.once('close', (c, s) => {
          resolve([c, s])
        })
      },
    )
    if (opts.signal?.aborted === true) {
      throw new BackupError('ABORTED', `hook script '${cmd}' aborted`)
    }
    if (code !== 0) {
      // run_command's message: "command '…' failed: exit code N" (or "got signal …").
      const how = code === null ? `got signal ${String(sig)}` : `exit code ${code}`
      throw new BackupError('HOOK_FAILED', `command '${cmd}' failed: ${how}`, {
        details: { phase, exit: code, signal: sig },
      })
    }
  }

/** A line longer than this is cut into pieces: a script's output never grows memory unbounded. */
export const HOOK_LINE_MAX = 64 * 1024

/** Splits bytes into lines of at most {@link HOOK_LINE_MAX} bytes for `output`. */
const lineSplitter = (
  output: (line: string) => void,
): { push: (b: Buffer) => void; end: () => void } => {
  let pending: Buffer = Buffer.alloc(0)
  const emit = (b: Buffer): void => {
    output(b.toString('utf8').replace(/\r$/, ''))
  }
  return {
    push: (b) => {
      pending = pending.length === 0 ? b : Buffer.concat([pending, b])
      for (;;) {
        const nl = pending.indexOf(0x0a)
        if (nl >= 0 && nl <= HOOK_LINE_MAX) {
          emit(pending.subarray(0, nl))
          pending = pending.subarray(nl + 1)
        } else if (pending.length > HOOK_LINE_MAX) {
          emit(pending.subarray(0, HOOK_LINE_MAX))
          pending = pending.subarray(HOOK_LINE_MAX)
        } else break
      }
    },
    end: () => {
      if (pending.length > 0) emit(pending)
      pending = Buffer.alloc(0)
    },
  }
}

/**
 * The guest's name for `HOSTNAME`, as the guest plugins' `prepare` set `$task->{hostname}`:
 * `name:` of a VM's config (qemu-server PVE/VZDump/QemuServer.pm, unset without one) or
 * `hostname:` of a container's, else `CT<vmid>` (pve-container src/PVE/VZDump/LXC.pm). Read from
 * the current configuration: the lines before the first `[snapshot]` section.
 */
export const guestHostname = (
  type: GuestType,
  vmid: number,
  config: string,
): string | undefined => {
  const key = type === 'qemu' ? 'name' : 'hostname'
  for (const line of config.split('\n')) {
    if (line.startsWith('[')) break
    const m = /^([a-z0-9_-]+):\s*(.*?)\s*$/.exec(line)
    if (m?.[1] === key && m[2] !== undefined && m[2] !== '') return m[2]
  }
  return type === 'lxc' ? `CT${vmid}` : undefined
}
