import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeTempDir, sweepStaleTempDirs } from '../../src/io/tmpdir.ts'

describe('io/tmpdir', () => {
  it('sweeps dirs of dead processes and keeps live ones', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'gb-sweep-'))
    try {
      // A pid that surely is not running: a child that already exited.
      const dead = spawnSync('true').pid
      await mkdir(join(parent, `guestbackup-job-${dead}-abcdef`))
      await mkdir(join(parent, `guestbackup-fleece-100-${dead}-abcdef`))
      await mkdir(join(parent, 'guestbackup-other-name'))
      const mine = await makeTempDir('guestbackup-job-', parent)
      const removed = await sweepStaleTempDirs(parent)
      assert.deepEqual(removed.sort(), [
        `guestbackup-fleece-100-${dead}-abcdef`,
        `guestbackup-job-${dead}-abcdef`,
      ])
      assert.deepEqual(
        (await readdir(parent)).sort(),
        ['guestbackup-other-name', mine.path.slice(parent.length + 1)].sort(),
      )
      await mine.remove()
    } finally {
      await rm(parent, { recursive: true, force: true })
    }
  })
})
