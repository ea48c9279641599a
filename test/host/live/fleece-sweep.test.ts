import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sweepFleeceDirs } from '../../../src/host/live/fleece.ts'

describe('host/live: sweepFleeceDirs', () => {
  it("removes this guest's dirs of dead runs and of this process, never a live run's", async () => {
    const parent = await mkdtemp(join(tmpdir(), 'gb-fleece-sweep-'))
    // Another run that is still going: a process that lives while the sweep runs.
    const live = spawn('sleep', ['30'])
    try {
      const dead = spawnSync('true').pid
      const names = {
        dead: `guestbackup-fleece-500-${dead}-abcdef`,
        mine: `guestbackup-fleece-500-${process.pid}-abcdef`,
        live: `guestbackup-fleece-500-${live.pid}-abcdef`,
        other: `guestbackup-fleece-501-${dead}-abcdef`,
      }
      for (const n of Object.values(names)) await mkdir(join(parent, n))
      const removed = await sweepFleeceDirs(500, parent)
      assert.deepEqual(removed.sort(), [names.dead, names.mine].sort())
      assert.deepEqual((await readdir(parent)).sort(), [names.live, names.other].sort())
    } finally {
      live.kill()
      await rm(parent, { recursive: true, force: true })
    }
  })
})
