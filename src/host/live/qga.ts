/**
 * A minimal QEMU guest agent client for fs-freeze/thaw around the backup instant (QGA schema,
 * https://qemu.readthedocs.io/en/latest/interop/qemu-ga-ref.html: guest-sync-delimited,
 * guest-fsfreeze-freeze, guest-fsfreeze-thaw). The agent speaks newline-delimited JSON on a unix
 * socket (virtio-serial chardev on the host) and answers one command at a time.
 *
 * Like the QMP client, every request carries an `id` (QEMU's dispatcher echoes it,
 * `qapi/qmp-dispatch.c`) and is settled from a pending map, with a deadline each. A request
 * that timed out is remembered, so its late reply is dropped instead of answering the next one;
 * a reply without an id (older agents) goes to the oldest request only while no timed-out one
 * could still answer, otherwise the connection is failed: a reply is never given to the wrong
 * request.
 */
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { BackupError } from '../../errors.ts'

const MAX_LINE = 1024 * 1024

interface Pending {
  command: string
  resolve: (value: unknown) => void
  reject: (e: Error) => void
  timer: NodeJS.Timeout
}

/** A connection to a guest agent. */
export class GuestAgent implements AsyncDisposable {
  readonly #socket: Socket
  #buf = ''
  #next = 1
  readonly #pending = new Map<string, Pending>()
  /** Ids of requests that timed out: their replies may still come. */
  readonly #abandoned = new Set<string>()
  #failed: BackupError | undefined

  private constructor(socket: Socket) {
    this.#socket = socket
    socket.setEncoding('utf8')
    socket.on('data', (s: string) => {
      this.#buf += s
      if (this.#buf.length > MAX_LINE) {
        this.#fail(new BackupError('QGA_PROTOCOL', 'guest agent sent an over-long line'))
        return
      }
      // guest-sync-delimited prefixes its reply with 0xff to flush stale data.
      for (let i = this.#buf.indexOf('\n'); i >= 0; i = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, i).replace(/^[\s\xff]+/, '')
        this.#buf = this.#buf.slice(i + 1)
        if (line !== '') this.#onLine(line)
      }
    })
    socket.on('error', (e) => {
      this.#fail(new BackupError('QGA_CLOSED', `guest agent: ${e.message}`, { cause: e }))
    })
    socket.on('close', () => {
      this.#fail(new BackupError('QGA_CLOSED', 'guest agent closed the connection'))
    })
  }

  #onLine(line: string): void {
    let msg: { id?: unknown; return?: unknown; error?: { desc?: unknown } }
    try {
      msg = JSON.parse(line) as typeof msg
    } catch (e) {
      this.#fail(new BackupError('QGA_PROTOCOL', 'guest agent sent invalid JSON', { cause: e }))
      return
    }
    let id: string | undefined
    if (typeof msg.id === 'string') {
      if (this.#abandoned.delete(msg.id)) return
      id = msg.id
    } else if (this.#abandoned.size === 0) {
      id = this.#pending.keys().next().value
    } else {
      this.#fail(
        new BackupError('QGA_PROTOCOL', 'guest agent reply without id after a timed-out request'),
      )
      return
    }
    const p = id === undefined ? undefined : this.#pending.get(id)
    if (id === undefined || p === undefined) {
      this.#fail(new BackupError('QGA_PROTOCOL', 'guest agent sent a reply nobody asked for'))
      return
    }
    this.#pending.delete(id)
    clearTimeout(p.timer)
    if (msg.error !== undefined) {
      const desc = typeof msg.error.desc === 'string' ? msg.error.desc : 'failed'
      p.reject(new BackupError('QGA_COMMAND', `guest agent ${p.command}: ${desc}`))
    } else {
      p.resolve(msg.return)
    }
  }

  #fail(e: BackupError): void {
    this.#failed ??= e
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer)
      p.reject(e)
    }
    this.#pending.clear()
    this.#socket.destroy()
  }

  /** Connect and synchronise (guest-sync-delimited) so stale replies are skipped. */
  static async connect(path: string, timeoutMs = 10_000): Promise<GuestAgent> {
    const socket = connect({ path })
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', (e) => {
        reject(new BackupError('QGA_CLOSED', `cannot connect to guest agent: ${e.message}`))
      })
    })
    const agent = new GuestAgent(socket)
    try {
      const id = Math.floor(Math.random() * 2 ** 31)
      const r = await agent.call('guest-sync-delimited', { id }, timeoutMs)
      if (r !== id) throw new BackupError('QGA_PROTOCOL', 'guest agent sync failed')
      return agent
    } catch (e) {
      await agent.close()
      throw e
    }
  }

  /** Run an agent command; resolves with its `return` value. */
  call(command: string, args?: Record<string, unknown>, timeoutMs = 60_000): Promise<unknown> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed)
    const id = `gb-${this.#next++}`
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        this.#abandoned.add(id)
        reject(new BackupError('QGA_TIMEOUT', `guest agent did not answer ${command}`))
      }, timeoutMs)
      this.#pending.set(id, { command, resolve, reject, timer })
      this.#socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`,
      )
    })
  }

  /** Freeze the guest's file systems; resolves with the number frozen. */
  async freeze(timeoutMs = 60_000): Promise<number> {
    return Number(await this.call('guest-fsfreeze-freeze', undefined, timeoutMs))
  }

  /** Thaw the guest's file systems. */
  async thaw(timeoutMs = 60_000): Promise<number> {
    return Number(await this.call('guest-fsfreeze-thaw', undefined, timeoutMs))
  }

  close(): Promise<void> {
    for (const p of this.#pending.values()) clearTimeout(p.timer)
    this.#socket.destroy()
    return Promise.resolve()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}
