/**
 * A user namespace that tools run in as the id-mapped root of an unprivileged container, as
 * pve-container backs up and restores them (src/PVE/LXC/Namespaces.pm, `run_in_userns`;
 * src/PVE/LXC.pm `userns_command`). We are host root, so we write the holder's
 * `/proc/PID/uid_map` and `gid_map` ourselves (user_namespaces(7), "Defining user and group
 * ID mappings": a process with CAP_SETUID/CAP_SETGID in the parent namespace may map any ids),
 * without newuidmap or /etc/subuid. Tools then join it with `nsenter --user --target PID`
 * (nsenter(1)): they get full capabilities in the namespace and uid/gid 0 there, i.e. the
 * map's host id of container root. Capabilities in a namespace only count over inodes whose
 * owner and group are mapped in it (capabilities(7), "Interaction with user namespaces"): tar
 * reads every file owned inside the map and nothing else.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import type { IdMap } from '../api/idmap.ts'
import { procIdMap, rootGid, rootUid } from '../api/idmap-parse.ts'
import { BackupError, throwIfAborted } from '../errors.ts'

/** How a tool is started inside a namespace: a command prefix for {@link spawnTool}. */
export interface ToolNamespace {
  /** `cmd args…` as run inside the namespace. */
  wrap(cmd: string, args: readonly string[]): [string, string[]]
}

/** A user namespace with an id map, held open by a holder process; dispose to end it. */
export class UserNamespace implements ToolNamespace, AsyncDisposable {
  readonly #holder: ChildProcess
  readonly #pid: number
  /** The host uid and gid of the namespace's root (container root). */
  readonly rootUid: number
  readonly rootGid: number

  private constructor(holder: ChildProcess, pid: number, map: IdMap) {
    this.#holder = holder
    this.#pid = pid
    this.rootUid = rootUid(map)
    this.rootGid = rootGid(map)
  }

  /**
   * Create the namespace with `map`. The holder (`unshare --user`, util-linux) waits on its
   * stdin, a pipe of ours: it ends with us even when we are killed.
   * @throws BackupError `IO` when the namespace cannot be created or mapped, `ABORTED`.
   */
  static async open(map: IdMap, signal?: AbortSignal): Promise<UserNamespace> {
    throwIfAborted(signal)
    const holder = spawn(
      'unshare',
      ['--user', '--', 'sh', '-c', 'echo ready; exec cat >/dev/null'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    )
    let stderr = ''
    holder.stderr.setEncoding('utf8')
    holder.stderr.on('data', (s: string) => (stderr = (stderr + s).slice(-2048)))
    const fail = (why: string, cause?: unknown): BackupError => {
      holder.kill('SIGKILL')
      return new BackupError('IO', `cannot create a user namespace: ${why}`, { cause })
    }
    const pid = holder.pid
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          reject(new BackupError('ABORTED', 'aborted', { cause: signal?.reason }))
        }
        signal?.addEventListener('abort', onAbort, { once: true })
        let out = ''
        holder.stdout.setEncoding('utf8')
        holder.stdout.on('data', (s: string) => {
          out += s
          if (out.includes('ready\n')) resolve()
        })
        holder.once('error', reject)
        holder.once('exit', (code) => {
          reject(new Error(`unshare exited (${String(code)}): ${stderr.trim()}`))
        })
      })
      if (pid === undefined) throw new Error('no pid')
      // gid_map is written without first denying setgroups: we are privileged in the parent
      // namespace, which user_namespaces(7) allows ("The /proc/[pid]/setgroups file").
      await writeFile(`/proc/${pid}/uid_map`, procIdMap(map, 'u'))
      await writeFile(`/proc/${pid}/gid_map`, procIdMap(map, 'g'))
    } catch (e) {
      if (e instanceof BackupError && e.code === 'ABORTED') {
        holder.kill('SIGKILL')
        throw e
      }
      throw fail(e instanceof Error ? e.message : String(e), e)
    }
    holder.stdout.resume()
    return new UserNamespace(holder, pid, map)
  }

  /** The holder's pid (the namespace is `/proc/PID/ns/user`). */
  get pid(): number {
    return this.#pid
  }

  wrap(cmd: string, args: readonly string[]): [string, string[]] {
    return ['nsenter', ['--user', `--target=${this.#pid}`, '--', cmd, ...args]]
  }

  async [Symbol.asyncDispose](): Promise<void> {
    const h = this.#holder
    if (h.exitCode !== null || h.signalCode !== null) return
    const gone = new Promise<void>((resolve) => {
      h.once('exit', () => {
        resolve()
      })
    })
    h.stdin?.end()
    await gone
  }
}
