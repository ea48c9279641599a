/**
 * QMP client over a unix socket (docs/interop/qmp-spec.rst).
 *
 * State machine of one connection:
 *
 * ```
 *   connecting ──socket open──▶ greeting ──{"QMP":…}──▶ negotiating ──qmp_capabilities ok──▶ ready
 *        │                         │                          │                               │
 *        └─────────────────────────┴──────────┬───────────────┴───────────────────────────────┘
 *                                             ▼
 *     EOF / socket error (QMP_CLOSED), garbage (QMP_PROTOCOL), close() (QMP_CLOSED),
 *     handshake timeout or abort (QMP_TIMEOUT / ABORTED)  ──▶  closed
 * ```
 *
 * - `connect()` resolves only in `ready`; a failure in any earlier state destroys the socket and
 *   rejects with the reason. The greeting must be the first message (§"Server Greeting").
 * - In `ready`, every command gets a fresh integer `id` and a slot in the pending map; the reply
 *   with that id settles it (§"Commands Responses"). Replies with an unknown id (e.g. one whose
 *   caller timed out) are dropped, as the spec asks. A reply *without* id means the server could
 *   not parse a request (§"Error", NOTE); it belongs to no command, so the connection is failed
 *   (the same choice as QEMU's python `qemu.qmp`).
 * - Events (§"Asynchronous events") go to a bounded {@link QmpEventHub}.
 * - Entering `closed` is final and happens once: pending commands reject with the reason,
 *   event waiters reject with `QMP_CLOSED`, subscriptions end, `closed` resolves.
 *
 * The socket is read in flowing mode; this is safe because nothing read is queued without bound:
 * lines are capped ({@link QMP_MAX_LINE}), replies settle their slot, events go to the ring.
 */
import { createConnection } from 'node:net'
import type { Socket } from 'node:net'
import { BackupError, QmpCommandError } from '../errors.ts'
import type { QmpArgs, QmpCommandName, QmpEmpty, QmpReturn } from './commands.ts'
import { abortedError, armDeadline, asError } from './deadline.ts'
import type { QmpCallOptions } from './deadline.ts'
import { closedError, QmpEventHub } from './events.ts'
import type {
  QmpEventName,
  QmpEventRecord,
  QmpEvents,
  QmpSubscribeOptions,
  QmpTypedEvent,
  QmpWaitOptions,
} from './events.ts'
import { encodeCommand, parseMessage, QMP_MAX_LINE, QmpLineSplitter } from './wire.ts'
import type { QmpGreetingMessage, QmpMessage, QmpVersionTriple } from './wire.ts'

/** Options of {@link QmpClient.connect}. */
export interface QmpConnectOptions {
  /** Aborts the handshake with `ABORTED`; has no effect once `connect` resolved. */
  signal?: AbortSignal | undefined
  /** Limit for socket connect + greeting + `qmp_capabilities`, in ms. Default 10 000. */
  timeoutMs?: number | undefined
  /** Default `timeoutMs` of {@link QmpClient.execute}, in ms. Default 60 000. */
  commandTimeoutMs?: number | undefined
  /** Events retained for late waiters ({@link QmpClient.eventMark}). Default 1024. */
  eventBufferSize?: number | undefined
  /** Longest accepted line in bytes. Default {@link QMP_MAX_LINE} (16 MiB). */
  maxLineBytes?: number | undefined
}

/** Connection state; see the state machine in this file's header. */
export type QmpClientState = 'connecting' | 'greeting' | 'negotiating' | 'ready' | 'closed'

/** Arguments after the command name: optional when the command has no required argument. */
export type QmpExecuteRest<C extends QmpCommandName> =
  QmpEmpty extends QmpArgs<C>
    ? [args?: QmpArgs<C>, options?: QmpCallOptions]
    : [args: QmpArgs<C>, options?: QmpCallOptions]

interface Pending {
  readonly command: string
  readonly resolve: (value: unknown) => void
  readonly reject: (err: BackupError) => void
  readonly disarm: () => void
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000
const DEFAULT_EVENT_BUFFER = 1024

/** A connected QMP monitor. Create with {@link QmpClient.connect}; dispose with `close()`. */
export class QmpClient implements AsyncDisposable {
  readonly #socket: Socket
  readonly #splitter: QmpLineSplitter
  readonly #events: QmpEventHub
  readonly #pending = new Map<number, Pending>()
  readonly #commandTimeoutMs: number
  readonly #closed: Promise<BackupError>
  readonly #socketClosed: Promise<void>
  #resolveClosed!: (reason: BackupError) => void
  #state: QmpClientState = 'connecting'
  #greeting: QmpGreetingMessage | undefined
  #onGreeting: ((g: QmpGreetingMessage) => void) | undefined
  #closeReason: BackupError | undefined
  #nextId = 1

  private constructor(socket: Socket, opts: QmpConnectOptions) {
    this.#socket = socket
    this.#splitter = new QmpLineSplitter(opts.maxLineBytes ?? QMP_MAX_LINE)
    this.#events = new QmpEventHub(opts.eventBufferSize ?? DEFAULT_EVENT_BUFFER)
    this.#commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve
    })
    this.#socketClosed = new Promise((resolve) => {
      socket.once('close', () => {
        resolve()
      })
    })
    socket.once('connect', () => {
      if (this.#state === 'connecting') this.#state = 'greeting'
    })
    socket.on('data', (chunk: Buffer) => {
      this.#onData(chunk)
    })
    socket.on('error', (err) => {
      const what =
        this.#state === 'connecting' ? 'cannot connect to QMP socket' : 'QMP socket error'
      this.#fail(new BackupError('QMP_CLOSED', `${what}: ${err.message}`, { cause: err }))
    })
    socket.on('close', () => {
      this.#fail(new BackupError('QMP_CLOSED', 'QMP connection closed by the server'))
    })
  }

  /**
   * Connect to the QMP unix socket at `path`, read the greeting and leave capabilities
   * negotiation mode with `qmp_capabilities` (qmp-spec.rst §"Capabilities Negotiation"; no
   * optional capability is enabled, so replies come in command order). Rejects with
   * `QMP_CLOSED` (cannot connect, EOF), `QMP_PROTOCOL`, `QMP_TIMEOUT`, `ABORTED` or
   * `QmpCommandError`.
   *
   * A QEMU monitor serves one client at a time: while another client is connected the socket
   * accepts but no greeting comes, so this ends in `QMP_TIMEOUT` (checked on 7.2).
   */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    if (opts.signal?.aborted === true) throw abortedError('QMP connect', opts.signal)
    const client = new QmpClient(createConnection({ path }), opts)
    const disarm = armDeadline(
      `QMP connect to ${path}`,
      { signal: opts.signal, timeoutMs: opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS },
      (err) => {
        client.#fail(err)
      },
    )
    try {
      await client.#handshake()
      return client
    } catch (e) {
      await client.close()
      throw e
    } finally {
      disarm()
    }
  }

  async #handshake(): Promise<void> {
    await new Promise<QmpGreetingMessage>((resolve, reject) => {
      if (this.#closeReason) {
        reject(this.#closeReason)
        return
      }
      this.#onGreeting = resolve
      void this.#closed.then(reject)
    })
    this.#state = 'negotiating'
    await this.#call('qmp_capabilities', undefined, { timeoutMs: Infinity })
    if (this.#closeReason) throw this.#closeReason
    this.#state = 'ready'
  }

  /** QEMU's version from the greeting. */
  get version(): QmpVersionTriple {
    return this.#greetingOrThrow().version
  }

  /** QEMU's package string from the greeting, e.g. `Debian 1:7.2+dfsg-7+deb12u18+b3`. */
  get package(): string {
    return this.#greetingOrThrow().package
  }

  /** Capabilities offered in the greeting (none is enabled). */
  get capabilities(): readonly string[] {
    return this.#greetingOrThrow().capabilities
  }

  /** Current connection state. */
  get state(): QmpClientState {
    return this.#state
  }

  /**
   * Resolves (never rejects) once the connection is closed, with the reason: `QMP_CLOSED` for
   * EOF, socket errors and `close()`, `QMP_PROTOCOL` for garbage from the server.
   */
  get closed(): Promise<BackupError> {
    return this.#closed
  }

  /**
   * Run a typed command and resolve with its `return` value. An error response rejects with
   * {@link QmpCommandError} (`errorClass`, `desc`). Also rejects with `QMP_TIMEOUT` (default
   * `commandTimeoutMs`), `ABORTED`, `QMP_CLOSED`, or the `QMP_PROTOCOL` error that ended the
   * connection. A timeout or abort only stops waiting: the command may still take effect.
   */
  execute<C extends QmpCommandName>(command: C, ...rest: QmpExecuteRest<C>): Promise<QmpReturn<C>> {
    const [args, options] = rest
    return this.#call(command, args, options) as Promise<QmpReturn<C>>
  }

  /**
   * Run any command by name, untyped: an escape hatch for library users and tests that need a
   * command missing from {@link QmpCommands} (guestbackup itself uses only {@link execute}).
   * Same errors as {@link execute}; the result is QEMU's `return` value as parsed JSON.
   */
  executeRaw(
    command: string,
    args?: Readonly<Record<string, unknown>>,
    options?: QmpCallOptions,
  ): Promise<unknown> {
    return this.#call(command, args, options)
  }

  /**
   * Run an HMP command through `human-monitor-command` and resolve with its text output. Note
   * that `qemu-io` prints to QEMU's stdout, not into this output.
   */
  hmp(commandLine: string, options?: QmpCallOptions): Promise<string> {
    return this.execute('human-monitor-command', { 'command-line': commandLine }, options)
  }

  /** Marker for {@link waitForEvent}'s `since`: the sequence number of the newest event. */
  eventMark(): number {
    return this.#events.mark
  }

  /**
   * Wait for event `name` whose data satisfies `predicate`. By default only events arriving
   * after the call count; pass `since: eventMark()` taken before the triggering command to also
   * see events that already arrived. No timeout unless `timeoutMs` is given; rejects with
   * `QMP_CLOSED` when the connection ends first. See {@link QmpEventHub.wait}.
   */
  waitForEvent<E extends QmpEventName>(
    name: E,
    predicate?: (data: QmpEvents[E], event: QmpTypedEvent<E>) => boolean,
    options?: QmpWaitOptions,
  ): Promise<QmpTypedEvent<E>> {
    return this.#events.wait(name, predicate, options)
  }

  /** Async iterator over all events (see {@link QmpSubscribeOptions}); ends on close. */
  events(options?: QmpSubscribeOptions): AsyncIterableIterator<QmpEventRecord> {
    return this.#events.subscribe(options)
  }

  /** Events still in the ring buffer with `seq > since` (default: all retained), oldest first. */
  recentEvents(since?: number): QmpEventRecord[] {
    return this.#events.recent(since)
  }

  /** Close the connection (idempotent). Pending commands reject with `QMP_CLOSED`. */
  async close(): Promise<void> {
    this.#fail(new BackupError('QMP_CLOSED', 'QMP connection closed by the client'))
    await this.#socketClosed
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }

  #greetingOrThrow(): QmpGreetingMessage {
    if (!this.#greeting) throw new BackupError('QMP_PROTOCOL', 'no QMP greeting received yet')
    return this.#greeting
  }

  #call(command: string, args: object | undefined, options: QmpCallOptions = {}): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const what = `QMP ${command}`
      if (options.signal?.aborted === true) {
        reject(abortedError(what, options.signal))
        return
      }
      if (this.#closeReason) {
        reject(closedError(what, this.#closeReason))
        return
      }
      const id = this.#nextId++
      let bytes: Buffer
      try {
        bytes = encodeCommand({ execute: command, arguments: args, id })
      } catch (e) {
        reject(asError(e))
        return
      }
      const disarm = armDeadline(
        what,
        { signal: options.signal, timeoutMs: options.timeoutMs ?? this.#commandTimeoutMs },
        (err) => {
          this.#pending.delete(id)
          reject(err)
        },
      )
      this.#pending.set(id, { command, resolve, reject, disarm })
      this.#socket.write(bytes)
    })
  }

  #onData(chunk: Buffer): void {
    if (this.#closeReason) return
    let lines: string[]
    try {
      lines = this.#splitter.push(chunk)
    } catch (e) {
      this.#fail(e as BackupError)
      return
    }
    for (const line of lines) {
      if (this.#state === 'closed') return
      let msg: QmpMessage
      try {
        msg = parseMessage(line)
      } catch (e) {
        this.#fail(e as BackupError)
        return
      }
      this.#dispatch(msg)
    }
  }

  #dispatch(msg: QmpMessage): void {
    if (this.#state === 'greeting' || msg.kind === 'greeting') {
      if (this.#state !== 'greeting' || msg.kind !== 'greeting') {
        const what = msg.kind === 'greeting' ? 'a second greeting' : `a ${msg.kind} message`
        this.#fail(new BackupError('QMP_PROTOCOL', `unexpected ${what} in state ${this.#state}`))
        return
      }
      this.#greeting = msg
      this.#onGreeting?.(msg)
      return
    }
    switch (msg.kind) {
      case 'event':
        this.#events.push(msg)
        return
      case 'return':
      case 'error': {
        if (msg.id === undefined) {
          const desc = msg.kind === 'error' ? `${msg.errorClass}: ${msg.desc}` : 'a return'
          this.#fail(
            new BackupError('QMP_PROTOCOL', `QMP server sent a response without id (${desc})`),
          )
          return
        }
        const p = typeof msg.id === 'number' ? this.#pending.get(msg.id) : undefined
        if (!p || typeof msg.id !== 'number') return // unknown id: dropped (spec §"Commands Responses")
        this.#pending.delete(msg.id)
        p.disarm()
        if (msg.kind === 'return') p.resolve(msg.value)
        else p.reject(new QmpCommandError(p.command, msg.errorClass, msg.desc))
        return
      }
    }
  }

  /** Enter `closed` once: tear down the socket and settle everything with `reason`. */
  #fail(reason: BackupError): void {
    if (this.#closeReason) return
    this.#closeReason = reason
    this.#state = 'closed'
    this.#socket.destroy()
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    for (const p of pending) {
      p.disarm()
      p.reject(reason.code === 'QMP_CLOSED' ? closedError(`QMP ${p.command}`, reason) : reason)
    }
    this.#events.close(reason)
    this.#resolveClosed(reason)
  }
}
