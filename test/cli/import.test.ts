import { it } from 'node:test'
import assert from 'node:assert/strict'

// Nothing of src/ is imported statically: the import under test must be the first one.
it('cli: importing run() installs no process listener and does not exit', async () => {
  const events = ['SIGINT', 'SIGTERM', 'SIGXFSZ', 'SIGHUP', 'exit', 'uncaughtException']
  const counts = (): number[] => events.map((e) => process.listenerCount(e))
  const before = counts()
  const exitCode = process.exitCode
  const { run } = await import('../../src/cli/run.ts')
  assert.equal(typeof run, 'function')
  assert.deepEqual(counts(), before, events.join(' '))
  assert.equal(process.exitCode, exitCode)
})
