/**
 * The qemu-nbd that serves a backup's new image, and our connections to it, started once, on
 * first use: a full backup of an empty disk writes nothing and never starts it (its image is
 * what `qemu-img create` wrote, flushed when qemu-img closed it). Starting qemu-nbd, the NBD
 * handshakes and the stop cost ~0.1 s here, most of a backup's fixed cost.
 */
import type { CopyTarget } from '../../copy/copy.ts'
import { nbdTarget } from '../../copy/nbd.ts'
import { NbdClient } from '../../nbd/client.ts'
import { startQemuNbd } from '../../qemu/nbd-server.ts'
import type { QemuNbd, QemuNbdOptions } from '../../qemu/nbd-server.ts'

/** A promise whose rejection is never unhandled; awaiting it still throws. */
const observed = <T>(p: Promise<T>): Promise<T> => {
  p.catch(() => undefined)
  return p
}

/**
 * Open `n` connections at once (each handshake is a few round trips with the server); every
 * one that opens is recorded in `open`, also when another fails, so the caller closes it.
 */
export const connectAll = async (
  n: number,
  open: NbdClient[],
  opts: Parameters<typeof NbdClient.connect>[0],
): Promise<NbdClient[]> => {
  const settled = await Promise.allSettled(Array.from({ length: n }, () => NbdClient.connect(opts)))
  const out: NbdClient[] = []
  for (const r of settled) if (r.status === 'fulfilled') out.push(r.value)
  open.push(...out)
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed !== undefined) throw failed.reason
  return out
}

/** See the module comment. `close()` stops what was started; nothing is started before use. */
export class TargetServer {
  readonly #opts: QemuNbdOptions & { signal: AbortSignal }
  readonly #connections: number
  readonly #open: NbdClient[] = []
  #server: Promise<QemuNbd> | undefined
  #clients: Promise<NbdClient[]> | undefined

  /** `connections`: NBD connections for writes (flushed every one at the end). */
  constructor(opts: QemuNbdOptions & { signal: AbortSignal }, connections: number) {
    this.#opts = opts
    this.#connections = connections
  }

  /** Start the server and connect now, without waiting (a failure surfaces at first use). */
  start(): void {
    this.clients().catch(() => undefined)
  }

  /** The running server (started by this call if not yet). */
  server(): Promise<QemuNbd> {
    this.#server ??= observed(startQemuNbd(this.#opts))
    return this.#server
  }

  /** The write connections (the server started and connected by this call if not yet). */
  clients(): Promise<NbdClient[]> {
    this.#clients ??= observed(
      (async () => {
        const server = await this.server()
        return connectAll(this.#connections, this.#open, {
          path: server.socketPath,
          signal: this.#opts.signal,
        })
      })(),
    )
    return this.#clients
  }

  /** One connection, for reads. */
  async first(): Promise<NbdClient> {
    const [c] = await this.clients()
    if (c === undefined) throw new Error('no target connection')
    return c
  }

  /**
   * The image as a copy target, writes round-robin over the connections; `flush` flushes every
   * connection if the server was started (else nothing was written).
   */
  copyTarget(): CopyTarget {
    let target: CopyTarget | undefined
    const get = async (): Promise<CopyTarget> => (target ??= nbdTarget(await this.clients()))
    return {
      write: async (offset, data, signal) => {
        await (await get()).write(offset, data, signal)
      },
      writeZeroes: async (offset, length, signal) => {
        await (await get()).writeZeroes(offset, length, signal)
      },
      flush: async (signal) => {
        if (this.#clients !== undefined) await (await get()).flush(signal)
      },
    }
  }

  /** Close the connections, then stop the server (SIGTERM: qemu-nbd flushes and closes the qcow2). */
  async close(): Promise<void> {
    await this.#clients?.catch(() => undefined)
    for (const c of this.#open) await c.close()
    this.#open.length = 0
    const server = await this.#server?.catch(() => undefined)
    await server?.stop()
  }
}
