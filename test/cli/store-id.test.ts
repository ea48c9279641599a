import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { imageInfo } from '../../src/qemu/img.ts'
import { backupArgs, runCliInProcessOk } from '../helpers/cli.ts'

// The store id is a display name: bitmaps are keyed on the store's UUID, so renaming the store
// neither re-keys incrementals nor leaves orphan bitmaps in the VM's images.
describe('cli: a renamed store keeps its incrementals', () => {
  let dir: string
  let store: string
  let disk: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-storeid-'))
    store = join(dir, 'store')
    disk = join(dir, 'd.qcow2')
    await writeFile(join(dir, 'c'), 'name: s\n')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '8M'])
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x01 0 1M', disk])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('makes a UUID at init that no later init changes', async () => {
    const a = JSON.parse(
      (await runCliInProcessOk(['init', store, '--vm-backup-mode', 'incremental'])).stdout,
    ) as { uuid: string }
    assert.match(a.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-/)
    await runCliInProcessOk(backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`))
    const b = JSON.parse((await runCliInProcessOk(['init', store, '--id', 'renamed'])).stdout) as {
      id: string
      uuid: string
    }
    assert.deepEqual([b.id, b.uuid], ['renamed', a.uuid])
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x02 2M 1M', disk])
    await new Promise((r) => setTimeout(r, 1100))
    await runCliInProcessOk(backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`))
    const rows = JSON.parse(
      (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
    ) as {
      volid: string
      parent: string | null
    }[]
    assert.equal(rows.length, 2)
    assert.match(
      rows[0]?.parent ?? '',
      /^renamed:backup\/100\//,
      'the second backup is incremental',
    )
    const names = ((await imageInfo(disk, 'qcow2'))['format-specific']?.data?.bitmaps ?? []).map(
      (x) => x.name,
    )
    assert.equal(names.length, 1, names.join(' '))
    assert.ok(names[0]?.startsWith(`gb-${a.uuid}-`), names.join(' '))

    // Listed and dropped by the bitmaps command; the next backup is then full.
    const listed = JSON.parse(
      (await runCliInProcessOk(['bitmaps', '--disk', disk, '--json'])).stdout,
    ) as {
      bitmaps: { name: string }[]
    }
    assert.deepEqual(
      listed.bitmaps.map((x) => x.name),
      names,
    )
    const dropped = JSON.parse(
      (await runCliInProcessOk(['bitmaps', '--disk', disk, '--drop-all', '--json'])).stdout,
    ) as { dropped: string[]; bitmaps: unknown[] }
    assert.deepEqual([dropped.dropped, dropped.bitmaps], [names, []])
  })
})
