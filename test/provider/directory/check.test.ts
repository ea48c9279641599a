import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  cp,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../../src/io/spawn.ts'
import { lockGuest } from '../../../src/io/lock.ts'
import { HOLDER_FILE, newHolder } from '../../../src/io/lock-record.ts'
import { Dir } from '../../../src/io/beneath.ts'
import { checkStore } from '../../../src/provider/directory/check.ts'
import type { Finding } from '../../../src/provider/directory/check.ts'
import { parseVolname, StoreLayout } from '../../../src/provider/directory/layout.ts'
import { openStore } from '../../../src/provider/directory/store.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'
import { diffSnapshots, snapshotTree } from '../../helpers/tamper.ts'

const MiB = 1024 * 1024
const OLD = new Date('2020-02-02T02:02:02Z')

/** The findings as `kind path-relative-to-store: detail`, sorted, for assertions. */
const view = (store: string, fs: readonly Finding[]): string[] =>
  fs.map((f) => `${f.kind} ${f.path.slice(store.length + 1)}: ${f.detail}`).sort()

describe('provider/directory/check: the store fsck', () => {
  let dir: string
  let template: string
  const chain: string[] = []
  const raws: string[] = []
  let other = ''
  const dirOf = (store: string, volname: string): string => {
    const ref = parseVolname(volname)
    return join(store, String(ref.vmid), ref.dirName)
  }
  const copy = async (): Promise<string> => {
    const store = join(dir, `store-${Math.random().toString(36).slice(2)}`)
    await cp(template, store, { recursive: true })
    return store
  }
  const check = (store: string, repair = false): Promise<Finding[]> =>
    checkStore(new StoreLayout(store), { repair })

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-check-'))
    template = join(dir, 'template')
    const qcow = join(dir, 'd.qcow2')
    const raw = join(dir, 'd.raw')
    await writeFile(join(dir, 'c'), 'name: chk\n')
    await writeFile(raw, Buffer.alloc(MiB, 3))
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '8M'])
    await runCliInProcessOk(['init', template, '--vm-backup-mode', 'incremental', '--id', 'k'])
    const backup = async (vmid: number, disk: string): Promise<string> => {
      const r = await runCliInProcessOk(
        backupArgs(template, vmid, join(dir, 'c'), '--disk', `scsi0=${disk}`, '--json'),
      )
      return (JSON.parse(r.stdout) as { volid: string }).volid.slice('k:'.length)
    }
    for (const i of [1, 2, 3]) {
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${i} ${i}M 64k`, qcow])
      chain.push(await backup(100, qcow))
      raws.push(await backup(101, raw))
    }
    other = await backup(102, raw)
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('finds nothing in a consistent store', async () => {
    assert.ok((await openStore(template)).listVolumes().then((v) => v.length === 7))
    assert.deepEqual(await check(template), [])
  })

  it('takes the .verify records verify writes for the backups they belong to', async () => {
    const store = await copy()
    await runCliInProcessOk(['verify', '--store', store])
    const records = (await readdir(join(store, '101'))).filter((n) => n.endsWith('.verify'))
    assert.equal(records.length, 3)
    assert.deepEqual(view(store, await check(store)), [])
    // A record whose backup is gone is an attribute left behind, not a foreign entry.
    const gone = parseVolname(other).dirName
    await rm(join(store, '102', gone), { recursive: true })
    assert.deepEqual(view(store, await check(store)), [
      `orphan-file 102/${gone}.verify: an attribute of ${gone}, which does not exist`,
    ])
  })

  it('finds what killed runs and hand edits left, changes nothing, then repairs it all', async () => {
    const store = await copy()
    const [b0, b1, b2] = chain.map((v) => dirOf(store, v))
    const [f0, f1, f2] = raws.map((v) => dirOf(store, v))
    const g101 = join(store, '101')
    const g102 = join(store, '102')
    // (b) a parent deleted by hand: the next backup's chain is broken.
    await rm(b1 ?? '', { recursive: true })
    // (a) an image in a backup dir that its manifest does not list.
    await run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      join(b0 ?? '', 'drive-scsi9.qcow2'),
      '1M',
    ])
    // (c) manifest vs files: a file of another size, a block digest file, the manifest itself.
    await writeFile(join(f0 ?? '', 'guest.conf'), 'name: changed by hand\n')
    const blocks = join(f1 ?? '', 'drive-scsi0.blocks')
    const b = await readFile(blocks)
    b[0] = (b[0] ?? 0) ^ 0xff
    await writeFile(blocks, b)
    const mf = join(f2 ?? '', 'manifest.json')
    await writeFile(mf, (await readFile(mf, 'utf8')).replace('"warnings": []', '"warnings": [ ]'))
    // (d) leftovers of killed runs: a lock, a work dir, temp files, an incomplete backup.
    // A killed run's lock: the record of a process of this host that is gone (src/io/lock.ts).
    await mkdir(join(g101, '.lock'))
    const dead = (await run('sh', ['-c', 'echo $$'])).stdout.trim()
    const holder = { ...newHolder('backup', 'ab'.repeat(16)), pid: Number(dead) }
    await writeFile(join(g101, '.lock', HOLDER_FILE), JSON.stringify(holder))
    await utimes(join(g101, '.lock'), OLD, OLD)
    await mkdir(join(g101, '.partial-qemu-2020-01-01T00:00:00Z'))
    await writeFile(join(g101, '.partial-qemu-2020-01-01T00:00:00Z', 'guest.conf'), 'x')
    await writeFile(join(g101, '.bitmaps.json.0123456789ab.tmp'), '{')
    await utimes(join(g101, '.bitmaps.json.0123456789ab.tmp'), OLD, OLD)
    await writeFile(join(store, '.guestbackup-store.json.abcdef012345.tmp'), '{')
    await utimes(join(store, '.guestbackup-store.json.abcdef012345.tmp'), OLD, OLD)
    await writeFile(join(g101, '.young.abcdef012345.tmp'), '') // a write in progress
    await mkdir(join(g101, 'qemu-2021-01-01T00:00:00Z'))
    await writeFile(join(g101, 'qemu-2021-01-01T00:00:00Z', 'guest.conf'), 'x')
    await mkdir(join(g102, 'lxc-2021-01-01T00:00:00Z'))
    await writeFile(join(g102, 'lxc-2021-01-01T00:00:00Z', 'archive.tar'), 'x')
    await writeFile(join(g101, 'qemu-2019-01-01T00:00:00Z.notes'), 'notes of nothing')
    // (d) a removal killed after its journal was written.
    const journal = { version: 1, volname: other, merges: [] }
    await writeFile(join(g102, '.removing.json'), JSON.stringify(journal))
    // (e) a bitmap record naming a backup that is gone (and, after the repair, a set aside one).
    const record = JSON.parse(await readFile(join(store, '100', 'bitmaps.json'), 'utf8')) as {
      devices: Record<string, { volname: string; size: number }>
    }
    assert.equal(record.devices['drive-scsi0']?.volname, chain[2])

    const before = await snapshotTree(store)
    const found = await check(store)
    assert.deepEqual(diffSnapshots(before, await snapshotTree(store)), [], 'read-only')
    const r = (v: string | undefined): string => (v ?? '').slice(store.length + 1)
    // Ages are whole seconds: the check and this line may fall on either side of one.
    const ages = (l: string[]): string[] => l.map((x) => x.replace(/\d+ s ago/, 'N s ago'))
    assert.deepEqual(
      ages(view(store, found)),
      ages([
        `broken-chain ${r(b2)}: drive-scsi0: it builds on ${chain[1]}, which no longer exists`,
        `incomplete-backup 101/qemu-2021-01-01T00:00:00Z: a backup directory without manifest, left incomplete by a killed run (or a manifest deleted by hand)`,
        `incomplete-backup 102/lxc-2021-01-01T00:00:00Z: a backup directory without manifest, left incomplete by a killed run (or a manifest deleted by hand)`,
        `manifest-mismatch ${r(f0)}: guest.conf has 22 bytes, the manifest says 10; guest.conf does not match its digest`,
        `manifest-mismatch ${r(f1)}: ${f1}/drive-scsi0.blocks does not match the manifest's digest`,
        `manifest-mismatch ${r(f2)}: manifest.json does not match manifest.sha256`,
        `orphan-file 101/qemu-2019-01-01T00:00:00Z.notes: an attribute of qemu-2019-01-01T00:00:00Z, which does not exist`,
        `orphan-image ${r(b0)}/drive-scsi9.qcow2: not listed by the manifest of ${parseVolname(chain[0] ?? '').dirName}`,
        `pending-removal 102/.removing.json: the removal of ${other} was interrupted (0 merges)`,
        `stale-bitmap-record 100/bitmaps.json: the bitmaps of drive-scsi0 are recorded for ${chain[2]}, which is unusable`,
        `stale-lock 101/.lock: a lock entry (changed ${Math.round((Date.now() - OLD.getTime()) / 1000)} s ago): a running command holds it, or a killed one left it`,
        `stale-temp-file .guestbackup-store.json.abcdef012345.tmp: a temporary file left ${Math.round((Date.now() - OLD.getTime()) / 1000)} s ago by an interrupted write`,
        `stale-temp-file 101/.bitmaps.json.0123456789ab.tmp: a temporary file left ${Math.round((Date.now() - OLD.getTime()) / 1000)} s ago by an interrupted write`,
        `stale-work-dir 101/.partial-qemu-2020-01-01T00:00:00Z: the work directory of a backup in progress, or of a killed one`,
      ]),
    )
    assert.ok(found.every((f) => !f.repaired && f.repair !== ''))
    // list no longer shows the child of the deleted parent as a normal backup.
    const listed = await (await openStore(store)).listVolumes({ vmid: 100 })
    assert.deepEqual(
      listed.map((v) => [v.volid, v.broken]),
      [
        [`k:${chain[2]}`, `it builds on ${chain[1]}, which no longer exists`],
        [`k:${chain[0]}`, undefined],
      ],
    )

    const repaired = await check(store, true)
    assert.deepEqual(
      repaired.filter((f) => !f.repaired).map((f) => `${f.kind}: ${f.detail}`),
      [],
    )
    assert.equal(repaired.length, found.length)
    assert.deepEqual(await check(store), [], 'consistent after the repair')
    // Unusable backups are set aside, not deleted; a VM's next backup is full.
    const g100 = await readdir(join(store, '100'))
    assert.ok(g100.includes(`${parseVolname(chain[2] ?? '').dirName}.broken`), g100.join(' '))
    assert.match(await readFile(join(store, '100', 'force-full'), 'utf8'), /was set aside/)
    assert.ok((await readdir(g101)).includes('qemu-2021-01-01T00:00:00Z.broken'))
    assert.ok(!(await readdir(g102)).includes('lxc-2021-01-01T00:00:00Z'))
    assert.ok(!(await readdir(g102)).includes(parseVolname(other).dirName), 'removal completed')
    assert.ok((await readdir(g101)).includes('.young.abcdef012345.tmp'), 'young temp kept')
    const volumes = (await (await openStore(store)).listVolumes()).map((v) => v.volid)
    assert.deepEqual(volumes, [`k:${chain[0]}`])
  })

  it('finds a chain whose parent image was deleted by hand, and what builds on it', async () => {
    const store = await copy()
    const [d1, d2] = [chain[1], chain[2]].map((v) => parseVolname(v ?? '').dirName)
    await rm(join(store, '100', d1 ?? '', 'drive-scsi0.qcow2'))
    const found = await check(store)
    assert.deepEqual(view(store, found), [
      `broken-chain 100/${d1}: drive-scsi0: image ${store}/100/${d1}/drive-scsi0.qcow2 is missing`,
      `broken-chain 100/${d2}: drive-scsi0: it builds on ${chain[1]}, which is unusable`,
      `manifest-mismatch 100/${d1}: drive-scsi0.qcow2 is listed by the manifest but missing`,
      `stale-bitmap-record 100/bitmaps.json: the bitmaps of drive-scsi0 are recorded for ${chain[2]}, which is unusable`,
    ])
    assert.ok((await check(store, true)).every((f) => f.repaired))
    assert.deepEqual(await check(store), [])
  })

  it('reports what guestbackup never writes and never touches it', async () => {
    const store = await copy()
    await writeFile(join(store, 'README'), 'mine')
    await writeFile(join(store, '100', 'disk.qcow2'), 'not an image')
    await symlink('/etc', join(store, '100', 'qemu-2022-01-01T00:00:00Z'))
    await writeFile(join(dirOf(store, chain[0] ?? ''), 'my-notes.txt'), 'x')
    await mkdir(join(store, '101', 'subdir'))
    const before = await snapshotTree(store)
    const found = await check(store, true)
    // Only the guest directories changed: their locks were taken and released.
    assert.deepEqual(
      diffSnapshots(before, await snapshotTree(store)).filter(
        (d) => !/^changed 10\d: mtimeMs/.test(d),
      ),
      [],
    )
    const d0 = parseVolname(chain[0] ?? '').dirName
    assert.deepEqual(view(store, found), [
      'foreign-entry 100/qemu-2022-01-01T00:00:00Z: an unknown entry that is not a regular file',
      `foreign-entry 100/${d0}/my-notes.txt: an unknown file`,
      'foreign-entry 101/subdir: an unknown entry that is not a regular file',
      'foreign-entry README: an unknown file',
      'orphan-image 100/disk.qcow2: an image outside any backup',
    ])
    assert.ok(found.every((f) => !f.repaired && f.repair.startsWith('none')))
  })

  it('leaves a guest whose lock is held alone', async () => {
    const store = await copy()
    await mkdir(join(store, '101', '.partial-qemu-2020-01-01T00:00:00Z'))
    await using guest = await Dir.open(join(store, '101'))
    await using _lock = await lockGuest(guest, { operation: 'backup' })
    const found = await check(store, true)
    assert.deepEqual(
      found.map((f) => [f.kind, f.repaired]),
      [
        ['guest-locked', false],
        ['stale-work-dir', false],
      ],
    )
    assert.ok((await readdir(join(store, '101'))).includes('.partial-qemu-2020-01-01T00:00:00Z'))
  })
})
