/**
 * An in-process fake QMP server on a unix socket, with hooks for fault injection: the test's
 * handler sees every command and decides to answer, fail, stay silent, send garbage, flood
 * events or hang up.
 */
import { once } from 'node:events'
import { createServer } from 'node:net'
import type { Socket } from 'node:net'
import { join } from 'node:path'

/** QEMU 7.2's greeting (as captured from qemu-system-x86_64 7.2.22). */
export const GREETING_7_2 =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, ' +
  '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}'

/** A command as received by the fake server. */
export interface FakeCommand {
  readonly execute: string
  readonly arguments: Readonly<Record<string, unknown>> | undefined
  /** The id the client sent (echoed in replies). */
  readonly id: unknown
}

/** What a handler can do on the connection. */
export interface FakePeer {
  /** Answer `cmd` with `{"return": value}` (default `{}`). */
  reply(cmd: FakeCommand, value?: unknown): void
  /** Answer `cmd` with `{"error": {class, desc}}`. */
  fail(cmd: FakeCommand, errorClass: string, desc: string): void
  /** Send an event (QEMU's field order and CRLF). */
  event(name: string, data?: Record<string, unknown>): void
  /** Send bytes as they are (no terminator added). */
  raw(text: string | Uint8Array): void
  /** Send `count` events `name` with `data(i)`, respecting socket backpressure. */
  flood(count: number, name: string, data?: (i: number) => Record<string, unknown>): Promise<void>
  /** Hang up at once. */
  destroy(): void
}

/** Called for every command, `qmp_capabilities` included. */
export type FakeHandler = (cmd: FakeCommand, peer: FakePeer) => void | Promise<void>

/** Options of {@link startFakeQmpServer}. */
export interface FakeQmpServerOptions {
  /** Directory for the socket. */
  dir: string
  /** Greeting line sent on connect; `null` sends none. Default {@link GREETING_7_2}. */
  greeting?: string | null
  /** Default: {@link answerAll}. */
  handler?: FakeHandler
}

/** A running fake server. */
export interface FakeQmpServer extends AsyncDisposable {
  readonly path: string
  /** Every command received, in order, over all connections. */
  readonly received: FakeCommand[]
  /** Resolves when the next client connects. */
  nextConnection(): Promise<void>
  close(): Promise<void>
}

/** The default handler: every command succeeds with `{}`. */
export const answerAll: FakeHandler = (cmd, peer) => {
  peer.reply(cmd)
}

const timestamp = (): { seconds: number; microseconds: number } => {
  const ms = Date.now()
  return { seconds: Math.floor(ms / 1000), microseconds: (ms % 1000) * 1000 }
}

const makePeer = (socket: Socket): FakePeer => {
  const send = (obj: unknown): void => {
    if (!socket.destroyed) socket.write(`${JSON.stringify(obj)}\r\n`)
  }
  return {
    reply: (cmd, value = {}) => {
      send({ return: value, id: cmd.id })
    },
    fail: (cmd, errorClass, desc) => {
      send({ error: { class: errorClass, desc }, id: cmd.id })
    },
    event: (name, data) => {
      send({ timestamp: timestamp(), event: name, ...(data ? { data } : {}) })
    },
    raw: (text) => {
      if (!socket.destroyed) socket.write(text)
    },
    flood: async (count, name, data) => {
      for (let i = 0; i < count && !socket.destroyed; i++) {
        const line = `${JSON.stringify({ timestamp: timestamp(), event: name, data: data?.(i) ?? {} })}\r\n`
        if (!socket.write(line)) await once(socket, 'drain')
      }
    },
    destroy: () => {
      socket.destroy()
    },
  }
}

/** Start a fake QMP server listening on `<dir>/fake-qmp.sock`. */
export const startFakeQmpServer = async (opts: FakeQmpServerOptions): Promise<FakeQmpServer> => {
  const path = join(opts.dir, 'fake-qmp.sock')
  const handler = opts.handler ?? answerAll
  const greeting = opts.greeting === undefined ? GREETING_7_2 : opts.greeting
  const received: FakeCommand[] = []
  const sockets = new Set<Socket>()
  let connected: (() => void) | undefined
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined) // the client may hang up at any time
    connected?.()
    const peer = makePeer(socket)
    if (greeting !== null) peer.raw(`${greeting}\r\n`)
    let buf = ''
    socket.setEncoding('utf8')
    socket.on('data', (s: string) => {
      buf += s
      let nl: number
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl).trim()
        buf = buf.slice(nl + 1)
        if (line === '') continue
        let msg: { execute?: unknown; arguments?: Record<string, unknown>; id?: unknown }
        try {
          msg = JSON.parse(line) as typeof msg
        } catch {
          // What QEMU does with unparsable input: an error without id.
          peer.raw('{"error": {"class": "GenericError", "desc": "JSON parse error"}}\r\n')
          continue
        }
        const cmd: FakeCommand = {
          execute: String(msg.execute),
          arguments: msg.arguments,
          id: msg.id,
        }
        received.push(cmd)
        void Promise.resolve(handler(cmd, peer)).catch((e: unknown) => {
          console.error('fake QMP handler failed', e)
          socket.destroy()
        })
      }
    })
  })
  server.listen(path)
  await once(server, 'listening')
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy()
    if (!server.listening) return
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve()
      })
    })
  }
  return {
    path,
    received,
    nextConnection: () =>
      new Promise((resolve) => {
        connected = resolve
      }),
    close,
    [Symbol.asyncDispose]: close,
  }
}
