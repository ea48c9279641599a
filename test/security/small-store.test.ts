/**
 * A store on a small file system: freeing the base of a chain merges it into its dependant, and
 * that must never need more free space than the dependant's data, and must refuse before it
 * writes anything when that space is short (a half-done merge on a full disk would wedge the
 * store).
 *
 * The file system is a real ext4 of 64 MiB served from an image file by fuse2fs (see
 * test/helpers/small-fs.ts), so statfs, ENOSPC and the space qemu-img's commit allocates are the
 * kernel's, with no loop device and no mount(8).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '../../src/io/spawn.ts'
import { parseVolname } from '../../src/provider/directory/layout.ts'
import { backupArgs, cli, cliOk } from '../helpers/cli.ts'
import { smallFs } from '../helpers/small-fs.ts'
import { randomWrites } from '../helpers/random-data.ts'
import type { SmallFs } from '../helpers/small-fs.ts'

interface Row {
  volid: string
  parent: string | null
}

describe('security: prune on a store with little free space', () => {
  let dir: string
  let fs: SmallFs
  let store: string
  const refs = new Map<string, string>()
  const leaveFree = (bytes: number): Promise<void> => fs.leaveFree(bytes)

  const list = async (): Promise<Row[]> =>
    JSON.parse((await cliOk(['list', '--store', store, '--json'])).stdout) as Row[]

  /** Every listed backup restores exactly the disk as it was at its instant. */
  const assertRestorable = async (): Promise<void> => {
    for (const row of await list()) {
      const ref = refs.get(row.volid)
      assert.ok(ref !== undefined, `${row.volid} is not one of the backups made`)
      const target = join(dir, 'restore')
      await cliOk(['restore', '--store', store, row.volid, '--target', target])
      await run('qemu-img', [
        'compare',
        '-q',
        '-f',
        'raw',
        '-F',
        'raw',
        join(target, 'drive-scsi0.raw'),
        ref,
      ])
      await rm(target, { recursive: true, force: true })
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-small-'))
    fs = await smallFs(dir, 'mnt')
    store = join(fs.mnt, 'store')
    await cliOk(['init', store, '--vm-backup-mode', 'incremental', '--id', 'small'])

    // A chain of four: a full backup, then three incrementals that each rewrite part of it.
    const disk = join(dir, 'disk.qcow2')
    const conf = join(dir, 'guest.conf')
    await writeFile(conf, 'name: small\n')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M'])
    const writes = [
      ['write -P 0x11 0 8M', 'write -P 0x12 16M 4M'],
      ['write -P 0x21 2M 3M'],
      ['write -P 0x31 4M 2M', 'write -P 0x32 40M 1M'],
      ['write -P 0x41 1M 2M'],
    ]
    for (const [i, cmds] of writes.entries()) {
      // Random data: the store compresses, and the sizes below are of the data written.
      for (const c of await randomWrites(dir, cmds)) {
        await run('qemu-io', ['-f', 'qcow2', '-c', c, disk])
      }
      const r = await cliOk(backupArgs(store, 100, conf, '--disk', `scsi0=${disk}`, '--json'))
      const { volid } = JSON.parse(r.stdout) as { volid: string }
      const ref = join(dir, `ref-${i}.raw`)
      await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, ref])
      refs.set(volid, ref)
      await sleep(1100) // backup times have a resolution of one second
    }
    const rows = await list()
    assert.equal(rows.length, 4)
    // Newest first: three incrementals on the full backup.
    assert.deepEqual(
      rows.map((r) => r.parent === null),
      [false, false, false, true],
    )
  })

  after(async () => {
    await fs.unmount()
    await rm(dir, { recursive: true, force: true })
  })

  /** Bytes the child's image takes on disk: the data the merge must be able to write. */
  const childAllocated = async (): Promise<number> => {
    const child = (await list())[2]?.volid ?? ''
    const dirName = parseVolname(child.slice('small:'.length)).dirName
    return (await stat(join(store, '100', dirName, 'drive-scsi0.qcow2'))).blocks * 512
  }

  /** The merge size the refusal named. */
  let need = 0

  const storeFiles = async (): Promise<string[]> =>
    (await readdir(store, { recursive: true })).filter((n) => !n.endsWith('.lock')).sort()

  it('refuses before writing when the merge cannot fit, and the store stays usable', async () => {
    await leaveFree(64 * 1024)
    const before = await storeFiles()
    const r = await cli(['prune', '--store', store, '--keep', 'keep-last=3'])
    assert.equal(r.code, 1, r.stderr)
    const m = /merges (\d+) bytes/.exec(r.stderr)
    need = Number(m?.[1])
    // The store compresses: qemu-img commit writes a compressed dependant's clusters out
    // whole, so the merge needs its data bytes besides what its image takes (merge.ts).
    const taken = await childAllocated()
    assert.ok(need > taken && need <= 2 * taken, `${need} bytes, the image takes ${taken}`)
    const lines = r.stderr.trim().split('\n')
    const refusal = (what: string): RegExp =>
      new RegExp(
        `^${what}no space left in the store ${store} \\(removing \\S+ merges \\d+ bytes into its dependants, but only \\d+ bytes are free\\)$`,
      )
    assert.match(lines[0] ?? '', refusal('error: cannot remove small:\\S+: '))
    assert.equal(lines.length, 2, r.stderr) // and the summary line
    assert.deepEqual(await storeFiles(), before)
    // `remove` of the base, which has a dependant, is refused the same way: one line.
    const oldest = (await list()).at(-1)?.volid ?? ''
    const rm = await cli(['remove', '--store', store, oldest])
    assert.equal(rm.code, 1, rm.stderr)
    assert.match(rm.stderr.trim(), refusal('guestbackup: '), rm.stderr)
    assert.equal(rm.stderr.trim().split('\n').length, 1, rm.stderr)
    assert.deepEqual(await storeFiles(), before)
    assert.equal((await list()).length, 4)
    await assertRestorable()
  })

  it("frees the base of a chain of four with only the dependant's size free", async () => {
    assert.ok(need > 0, 'the refusal above named the merge size')
    // The merge's bytes plus room for the journal and the rewritten manifest (a few blocks).
    await leaveFree(need + 8 * 1024)
    await cliOk(['prune', '--store', store, '--keep', 'keep-last=3'])
    const rows = await list()
    assert.equal(rows.length, 3)
    assert.equal(rows.at(-1)?.parent, null, 'the oldest kept backup is now a full one')
    await assertRestorable()
  })
})
