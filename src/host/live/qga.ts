/**
 * A minimal QEMU guest agent client for fs-freeze/thaw around the backup instant
 * (QGA schema: guest-sync-delimited, guest-fsfreeze-freeze, guest-fsfreeze-thaw). The agent
 * speaks newline-delimited JSON on a unix socket (virtio-serial chardev on the host).
 */
import { connect } from 'node:net'
import type { Socket } from 'node:net'
import { BackupError } from '../../errors.ts'

const MAX_LINE = 1024 * 1024

/** A connection to a guest agent. */
export class GuestAgent implements AsyncDisposable {
  readonly #socket: Socket
  #buf = ''
  #waiters: ((line: string | Error) => void)[] = []

  private constructor(socket: Socket) {
    this.#socket = socket
    socket.setEncoding('utf8')
    socket.on('data', (s: string) => {
      this.#buf += s
      if (this.#buf.length > MAX_LINE) {
        this.#failAll(new BackupError('QMP_PROTOCOL', 'guest agent sent an over-long line'))
        return
      }
      // guest-sync-delimited prefixes its reply with 0xff to flush stale data.
      for (let i = this.#buf.indexOf('\n'); i >= 0; i = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, i).replace(/^[\s\xff]+/, '')
        this.#buf = this.#buf.slice(i + 1)
        if (line !== '') this.#waiters.shift()?.(line)
      }
    })
    socket.on('error', (e) => {
      this.#failAll(new BackupError('QMP_CLOSED', `guest agent: ${e.message}`, { cause: e }))
    })
    socket.on('close', () => {
      this.#failAll(new BackupError('QMP_CLOSED', 'guest agent closed the connection'))
    })
  }

  #failAll(e: Error): void {
    for (const w of this.#waiters.splice(0)) w(e)
  }

  /** Connect and synchronise (guest-sync-delimited) so stale replies are skipped. */
  static async connect(path: string, timeoutMs = 10_000): Promise<GuestAgent> {
    const socket = connect({ path })
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', (e) => {
        reject(new BackupError('QMP_CLOSED', `cannot connect to guest agent: ${e.message}`))
      })
    })
    const agent = new GuestAgent(socket)
    const id = Math.floor(Math.random() * 2 ** 31)
    const r = await agent.call('guest-sync-delimited', { id }, timeoutMs)
    if (r !== id) throw new BackupError('QMP_PROTOCOL', 'guest agent sync failed')
    return agent
  }

  /** Run an agent command; resolves with its `return` value. */
  call(command: string, args?: Record<string, unknown>, timeoutMs = 60_000): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new BackupError('QMP_TIMEOUT', `guest agent did not answer ${command}`))
      }, timeoutMs)
      this.#waiters.push((line) => {
        clearTimeout(timer)
        if (line instanceof Error) {
          reject(line)
          return
        }
        try {
          const msg = JSON.parse(line) as { return?: unknown; error?: { desc?: string } }
          if (msg.error !== undefined) {
            reject(
              new BackupError('QMP_COMMAND', `guest agent ${command}: ${msg.error.desc ?? ''}`),
            )
          } else {
            resolve(msg.return)
          }
        } catch (e) {
          reject(new BackupError('QMP_PROTOCOL', 'guest agent sent invalid JSON', { cause: e }))
        }
      })
      this.#socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`,
      )
    })
  }

  /** Freeze the guest's file systems; resolves with the number frozen. */
  async freeze(): Promise<number> {
    return Number(await this.call('guest-fsfreeze-freeze', undefined, 60_000))
  }

  /** Thaw the guest's file systems. */
  async thaw(): Promise<number> {
    return Number(await this.call('guest-fsfreeze-thaw', undefined, 60_000))
  }

  close(): Promise<void> {
    this.#socket.destroy()
    return Promise.resolve()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}
