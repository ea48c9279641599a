/**
 * Start a real, paused QEMU 7.2 VM for integration tests (no guest OS: `-S`, no kernel).
 *
 * Disks are attached as qemu-server attaches them (PVE/QemuServer.pm, `-blockdev`), with its names:
 * the qcow2/raw format node is `drive-<id>`, its file node `drive-<id>-file` (both with
 * `discard: unmap`, or guest TRIM is silently dropped), the guest device has id `<id>`:
 * `virtio<N>` → `virtio-blk-pci`, `scsi<N>` → `scsi-hd` on a `virtio-scsi-pci` `scsihw0`.
 *
 * "Guest" I/O runs through HMP `qemu-io -d <qdev> "<cmd>"` on the device's BlockBackend, so it
 * passes any filter above the format node like real guest writes. qemu-io prints its results on
 * QEMU's stdout (not in the HMP reply), so stdout/stderr go to a log file that is checked.
 * The helper uses its own second QMP monitor for that, leaving `qmpPath` to the test.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { open, readFile, stat } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { QmpClient } from '../../src/qmp/index.ts'

/** One disk of the test VM. */
export interface VmDisk {
  /** Image file. */
  path: string
  format: 'qcow2' | 'raw'
  /** Device id: `virtio<N>` or `scsi<N>` (Proxmox drive keys). */
  id: string
}

/** Options of {@link startVm}. */
export interface StartVmOptions {
  disks: readonly VmDisk[]
  /** Directory for the sockets and the log (e.g. a test's temp dir). */
  dir: string
  /** Guest RAM in MiB. Default 64. */
  memoryMiB?: number
  /** Milliseconds to wait for the QMP socket. Default 15 000. */
  startTimeoutMs?: number
}

/** A running test VM. */
export interface TestVm extends AsyncDisposable {
  readonly pid: number
  /** QMP socket for the test (a second, private monitor serves {@link guestIo}). */
  readonly qmpPath: string
  /** QEMU's stdout + stderr. */
  readonly logPath: string
  /** Format node name of disk `id` (`drive-<id>`). */
  nodeName(id: string): string
  /** QOM path of disk `id`'s BlockBackend, as `qemu-io -d` wants it. */
  qdevPath(id: string): string
  /** Run a qemu-io command as guest I/O on disk `id`; returns qemu-io's output, throws on error. */
  guestIo(id: string, command: string): Promise<string>
  /** {@link guestIo} for a `write …` command. */
  guestWrite(id: string, command: string): Promise<string>
  /** Everything QEMU printed so far. */
  log(): Promise<string>
  /** Kill QEMU by PID (SIGTERM, then SIGKILL after 3 s) and wait for it. Idempotent. */
  stop(): Promise<void>
}

/** Every VM started by this process, killed at exit if a test forgot to stop it. */
const live = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL')
})

const QEMU = 'qemu-system-x86_64'
/** Lines of qemu-io output (and HMP replies) that mean the command failed. */
const IO_ERROR = /failed|not found|error|invalid|usage|cannot|can't/i

const deviceArgs = (disk: VmDisk, node: string): string[] => {
  if (/^virtio\d+$/.test(disk.id)) return ['-device', `virtio-blk-pci,id=${disk.id},drive=${node}`]
  const scsi = /^scsi(\d+)$/.exec(disk.id)
  if (scsi) {
    return ['-device', `scsi-hd,bus=scsihw0.0,scsi-id=${scsi[1]},lun=0,drive=${node},id=${disk.id}`]
  }
  throw new Error(`unsupported disk id ${disk.id}: use virtio<N> or scsi<N>`)
}

/** True once a connection to the unix socket `path` is accepted (it is closed at once). */
const accepts = (path: string): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect(path)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => {
      resolve(false)
    })
  })

// The socket file can exist before QEMU listens on it (bind(2) precedes listen(2)): wait for a
// connection to be accepted, not for the file.
const waitForSocket = async (path: string, child: ChildProcess, ms: number): Promise<void> => {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error('QEMU exited early')
    const st = await stat(path).catch(() => undefined)
    if (st?.isSocket() === true && (await accepts(path))) return
    await sleep(20)
  }
  throw new Error(`QMP socket ${path} did not appear within ${ms} ms`)
}

/** Start `qemu-system-x86_64 -S` with the given disks; see the file header. */
export const startVm = async (opts: StartVmOptions): Promise<TestVm> => {
  const qmpPath = join(opts.dir, 'qmp.sock')
  const helperQmpPath = join(opts.dir, 'qmp-helper.sock')
  const logPath = join(opts.dir, 'qemu.log')
  const nodeName = (id: string): string => `drive-${id}`
  const qdevPath = (id: string): string =>
    id.startsWith('virtio')
      ? `/machine/peripheral/${id}/virtio-backend`
      : `/machine/peripheral/${id}`
  const args = [
    ...['-S', '-nodefaults', '-display', 'none', '-machine', 'q35,accel=kvm:tcg'],
    ...['-m', String(opts.memoryMiB ?? 64)],
    ...['-qmp', `unix:${qmpPath},server=on,wait=off`],
    ...['-qmp', `unix:${helperQmpPath},server=on,wait=off`],
  ]
  if (opts.disks.some((d) => d.id.startsWith('scsi'))) {
    args.push('-device', 'virtio-scsi-pci,id=scsihw0')
  }
  for (const disk of opts.disks) {
    const node = nodeName(disk.id)
    const blockdev = {
      driver: disk.format,
      'node-name': node,
      discard: 'unmap',
      file: { driver: 'file', 'node-name': `${node}-file`, filename: disk.path, discard: 'unmap' },
    }
    args.push('-blockdev', JSON.stringify(blockdev), ...deviceArgs(disk, node))
  }
  const logFile = await open(logPath, 'w')
  let child: ChildProcess
  try {
    child = spawn(QEMU, args, { stdio: ['ignore', logFile.fd, logFile.fd] })
  } finally {
    await logFile.close()
  }
  live.add(child)
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      live.delete(child)
      resolve()
    })
  })
  const spawnError = new Promise<never>((_, reject) => {
    child.once('error', reject)
  })
  const log = (): Promise<string> => readFile(logPath, 'utf8')

  let helper: QmpClient | undefined
  const stop = async (): Promise<void> => {
    await helper?.close()
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
      await exited
      clearTimeout(timer)
    }
  }
  try {
    await Promise.race([
      waitForSocket(helperQmpPath, child, opts.startTimeoutMs ?? 15_000),
      spawnError,
    ])
    await waitForSocket(qmpPath, child, opts.startTimeoutMs ?? 15_000)
  } catch (e) {
    await stop()
    throw new Error(`cannot start ${QEMU}: ${(e as Error).message}\n${await log()}`, { cause: e })
  }

  const guestIo = async (id: string, command: string): Promise<string> => {
    if (command.includes('"')) throw new Error('qemu-io command must not contain double quotes')
    helper ??= await QmpClient.connect(helperQmpPath)
    const before = (await stat(logPath)).size
    const reply = await helper.hmp(`qemu-io -d ${qdevPath(id)} "${command}"`)
    if (reply.trim() !== '') throw new Error(`qemu-io ${command}: ${reply.trim()}`)
    // HMP runs qemu-io to completion before replying; give stdio a moment if it is buffered.
    let out = ''
    for (let i = 0; i < 50 && out === ''; i++) {
      out = (await readFile(logPath)).subarray(before).toString('utf8')
      if (out === '') await sleep(10)
    }
    if (IO_ERROR.test(out)) throw new Error(`qemu-io ${command} on ${id} failed: ${out.trim()}`)
    return out
  }

  return {
    pid: child.pid ?? -1,
    qmpPath,
    logPath,
    nodeName,
    qdevPath,
    guestIo,
    guestWrite: guestIo,
    log,
    stop,
    [Symbol.asyncDispose]: stop,
  }
}
