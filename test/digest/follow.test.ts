import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { describe, it } from 'node:test'
import { hashFollowing } from '../../src/digest/follow.ts'
import { isBackupError } from '../../src/errors.ts'

const sha256 = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex')

describe('hashFollowing', () => {
  it('hashes every byte a process appends while it runs, the last writes included', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gb-follow-'))
    try {
      const file = join(dir, 'f')
      await writeFile(file, '')
      // 40 appends of 1 MiB with pauses, so the thread catches up and waits several times; the
      // last append lands just before the exit.
      const writer = spawn('sh', [
        '-c',
        'for i in $(seq 40); do head -c 1048576 /dev/urandom >> "$1"; sleep 0.01; done; printf tail >> "$1"',
        'sh',
        file,
      ])
      const done = once(writer, 'exit')
      const r = await hashFollowing(file, { writerDone: done })
      assert.equal(r.bytes, 40 * 1048576 + 4)
      assert.equal(r.digest, await sha256(file))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('stops when aborted while the writer still runs', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gb-follow-'))
    try {
      const file = join(dir, 'f')
      await writeFile(file, 'x')
      const ac = new AbortController()
      const p = hashFollowing(file, { writerDone: new Promise(() => undefined), signal: ac.signal })
      setTimeout(() => {
        ac.abort()
      }, 50)
      await assert.rejects(p, (e: unknown) => isBackupError(e, 'ABORTED'))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('fails with IO naming the file when it cannot be opened', async () => {
    await assert.rejects(
      hashFollowing('/nonexistent/gb-follow', { writerDone: Promise.resolve() }),
      (e: unknown) => isBackupError(e, 'IO') && e.message.includes('/nonexistent/gb-follow'),
    )
  })
})
