import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { compareImages } from '../../src/qemu/img.ts'
import { backupArgs, cli, runCliInProcessOk } from '../helpers/cli.ts'

// Two prunes of one guest at once: the data stays right and neither fails for backups the other
// already removed (what is gone is not an error).
describe('cli: concurrent prunes', () => {
  let dir: string
  let store: string
  const refs = new Map<string, string>()
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cprune-'))
    store = join(dir, 'store')
    const disk = join(dir, 'd.qcow2')
    await writeFile(join(dir, 'c'), 'name: p\n')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M'])
    await runCliInProcessOk(['init', store, '--vm-backup-mode', 'incremental'])
    for (let i = 0; i < 4; i++) {
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${i + 1} ${i * 2}M 3M`, disk])
      const ref = join(dir, `ref-${i}.raw`)
      await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, ref])
      const r = await runCliInProcessOk(
        backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`, '--json'),
      )
      refs.set((JSON.parse(r.stdout) as { volid: string }).volid, ref)
      await new Promise((res) => setTimeout(res, 1100))
    }
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('both succeed and the kept backup restores identical', async () => {
    const args = ['prune', '--store', store, '--keep', 'keep-last=1']
    // Two processes, as two cron jobs would be: the store's lock must hold between processes.
    const [a, b] = await Promise.all([cli(args), cli(args)])
    assert.equal(a.code, 0, a.stderr)
    assert.equal(b.code, 0, b.stderr)
    const rows = JSON.parse(
      (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
    ) as {
      volid: string
    }[]
    assert.equal(rows.length, 1)
    const volid = rows[0]?.volid ?? ''
    const target = join(dir, 'restore')
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    assert.ok(
      await compareImages(join(target, 'drive-scsi0.raw'), 'raw', refs.get(volid) ?? '', 'raw'),
    )
  })
})
