import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { compareImages, createImage, imageInfo } from '../../src/qemu/img.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

const MiB = 1024 * 1024

interface Row {
  volid: string
  parent: string | null
  protected: boolean
  notes: string | null
}

// Incrementals of a stopped VM's qcow2 disk through persistent bitmaps (qemu-img bitmap), then
// retention that merges removed bases into their dependants so every kept point still restores.
for (const mechanism of ['nbd', 'file-handle'] as const) {
  describe(`cli: offline incremental chain and prune (${mechanism})`, () => {
    let dir: string
    let store: string
    const disk = (): string => join(dir, 'disk.qcow2')
    const copies = new Map<string, string>()
    const list = async (): Promise<Row[]> =>
      JSON.parse((await runCliInProcessOk(['list', '--store', store, '--json'])).stdout) as Row[]
    const backup = async (n: number): Promise<string> => {
      const ref = join(dir, `ref-${n}.raw`)
      await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk(), ref])
      const r = await runCliInProcessOk(
        backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk()}`, '--json'),
      )
      const { volid } = JSON.parse(r.stdout) as { volid: string }
      copies.set(volid, ref)
      return volid
    }
    const restoresAll = async (): Promise<void> => {
      for (const row of await list()) {
        const target = join(dir, `restore-${Math.random().toString(36).slice(2)}`)
        await runCliInProcessOk(['restore', '--store', store, row.volid, '--target', target])
        const ref = copies.get(row.volid) ?? ''
        assert.ok(
          await compareImages(join(target, 'drive-scsi0.raw'), 'raw', ref, 'raw'),
          row.volid,
        )
        await rm(target, { recursive: true })
      }
    }
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), `gb-inc-${mechanism}-`))
      store = join(dir, 'store')
      await writeFile(join(dir, 'c'), 'name: inc\n')
      await createImage(disk(), { format: 'qcow2', size: 64 * MiB })
      await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x01 0 16M', disk()])
      await runCliInProcessOk([
        'init',
        store,
        '--vm-backup-mode',
        'incremental',
        '--vm-backup-mechanism',
        mechanism,
      ])
    })
    after(async () => {
      await rm(dir, { recursive: true, force: true })
    })

    it('chains backups through the bitmap and restores every point', async () => {
      const first = await backup(0)
      const writes = [
        ['write -P 0x02 1M 1M', 'write -z 4M 1M'],
        ['discard 8M 1M', 'write -P 0x03 63M 1M'],
        ['write -P 0x04 0 64k'],
      ]
      for (const [i, w] of writes.entries()) {
        await run('qemu-io', ['-f', 'qcow2', ...w.flatMap((c) => ['-c', c]), disk()])
        await backup(i + 1)
      }
      const rows = await list()
      assert.equal(rows.length, 4)
      assert.equal(rows.at(-1)?.volid, first)
      assert.equal(rows.at(-1)?.parent, null)
      for (const r of rows.slice(0, -1)) assert.ok(r.parent, `${r.volid} is incremental`)
      const newest = rows[0]?.volid ?? ''
      const info = await imageInfo(
        join(store, newest.slice(newest.indexOf('backup/') + 7), 'drive-scsi0.qcow2'),
        'qcow2',
      )
      assert.ok((info['actual-size'] ?? 0) < 2 * MiB, 'the last incremental holds ~64 KiB')
      await restoresAll()
      // Exactly one bitmap of this store remains on the disk, and it is recording.
      const di = await imageInfo(disk(), 'qcow2')
      const bms = di['format-specific']?.data?.bitmaps ?? []
      // Named after the store's UUID (guestbackup-store.json), not its id.
      const { uuid } = JSON.parse(
        await readFile(join(store, 'guestbackup-store.json'), 'utf8'),
      ) as {
        uuid: string
      }
      assert.deepEqual(
        bms.map((b) => [b.name.replace(/\d+-[0-9a-f]{8}$/, 'N'), b.flags]),
        [[`gb-${uuid}-N`, ['auto']]],
      )
    })

    it('keeps notes and protection, and refuses to remove a protected backup', async () => {
      const rows = await list()
      const oldest = rows.at(-1)?.volid ?? ''
      await runCliInProcessOk([
        'notes',
        '--store',
        store,
        oldest,
        '--set',
        'first full\nsecond line',
      ])
      await runCliInProcessOk(['protect', '--store', store, oldest])
      const after1 = (await list()).at(-1)
      assert.equal(after1?.notes, 'first full')
      assert.equal(after1.protected, true)
      const r = await runCliInProcess(['remove', '--store', store, oldest])
      assert.equal(r.code, 1)
      assert.match(r.stderr, /protected/)
      await runCliInProcessOk(['protect', '--store', store, oldest, '--off'])
    })

    it('prunes to the newest two, merging removed bases so the rest still restores', async () => {
      const dry = await runCliInProcessOk([
        'prune',
        '--store',
        store,
        '--keep',
        'keep-last=2',
        '--dry-run',
      ])
      assert.equal(
        dry.stdout
          .trim()
          .split('\n')
          .filter((l) => / remove($| {2}merges)/.test(l)).length,
        2,
      )
      // Of the two removed, the newer is the base of a kept backup: its merge is announced.
      assert.match(
        dry.stdout,
        /remove {2}merges drive-scsi0 into store:backup\/100\/qemu-\S+ \(writes \d/,
      )
      assert.equal((await list()).length, 4)
      await runCliInProcessOk(['prune', '--store', store, '--keep', 'keep-last=2'])
      const rows = await list()
      assert.equal(rows.length, 2)
      assert.equal(rows.at(-1)?.parent, null, 'the oldest kept backup became standalone')
      await restoresAll()
      // And incrementals go on from the newest.
      await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x05 30M 1M', disk()])
      const v = await backup(9)
      assert.ok((await list()).find((x) => x.volid === v)?.parent)
      await restoresAll()
    })
  })
}
