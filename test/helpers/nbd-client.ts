/**
 * Shared setup of the NBD client tests against the fake server: a fixture that connects a client
 * to a fresh fake and cleans both up after each test, and a holder for controlling reply order.
 */
import { afterEach } from 'node:test'
import { isBackupError } from '../../src/errors.ts'
import { NbdClient } from '../../src/nbd/index.ts'
import { NBD_CMD } from '../../src/nbd/constants.ts'
import { FakeNbdServer } from './fake-nbd-server.ts'
import type { FakeNbdOptions, FakeRequest, FakeConnection } from './fake-nbd-server.ts'

export const code = (c: Parameters<typeof isBackupError>[1]) => (e: unknown) => isBackupError(e, c)

/**
 * Register an afterEach hook (call at the top level of a test file) that runs the `cleanup`
 * callbacks in reverse order, and return `setup`, which starts a fake and connects a client to
 * it; both are cleaned up after the test.
 */
export const nbdClientFixture = () => {
  const cleanup: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const f of cleanup.reverse()) await f()
    cleanup.length = 0
  })

  /** Start a fake and connect a client to it; both are cleaned up after the test. */
  const setup = async (
    opts: FakeNbdOptions = {},
    connect: Partial<Parameters<typeof NbdClient.connect>[0]> = {},
  ): Promise<{ srv: FakeNbdServer; client: NbdClient }> => {
    const srv = await FakeNbdServer.start(opts)
    cleanup.push(() => srv.close())
    const client = await NbdClient.connect({ path: srv.path, ...connect })
    cleanup.push(() => client.close())
    return { srv, client }
  }

  return { cleanup, setup }
}

/** Hold requests of type `cmd` until released, to control reply order and timing. */
export const holder = (cmd: number = NBD_CMD.READ) => {
  const held: [FakeRequest, FakeConnection][] = []
  let wake: (() => void) | undefined
  return {
    held,
    onRequest: (req: FakeRequest, conn: FakeConnection): boolean => {
      if (req.type !== cmd) return false
      held.push([req, conn])
      wake?.()
      return true
    },
    waitFor: async (n: number): Promise<void> => {
      while (held.length < n) await new Promise<void>((r) => (wake = r))
    },
  }
}
