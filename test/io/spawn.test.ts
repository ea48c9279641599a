import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnTool } from '../../src/io/spawn.ts'
import { BackupError } from '../../src/errors.ts'

describe('spawnTool', () => {
  it('stops a tool started with a signal that is already aborted', async () => {
    const ac = new AbortController()
    ac.abort(new Error('stop'))
    // `sleep 30` would keep the test (and a CLI) alive for 30 s if nobody ended it.
    const tool = spawnTool('sleep', ['30'], { stdin: 'ignore', signal: ac.signal })
    await assert.rejects(
      tool.done,
      (e: unknown) => e instanceof BackupError && e.code === 'ABORTED',
    )
    assert.equal(tool.child.signalCode, 'SIGTERM')
  })

  it('stops a running tool when its signal aborts', async () => {
    const ac = new AbortController()
    const tool = spawnTool('sleep', ['30'], { stdin: 'ignore', signal: ac.signal })
    ac.abort(new Error('stop'))
    await assert.rejects(
      tool.done,
      (e: unknown) => e instanceof BackupError && e.code === 'ABORTED',
    )
    assert.equal(tool.child.signalCode, 'SIGTERM')
  })
})
