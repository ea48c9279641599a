import { after, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { cp, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../../src/errors.ts'
import { Dir } from '../../../src/io/beneath.ts'
import { run } from '../../../src/io/spawn.ts'
import { parseVolname, StoreLayout } from '../../../src/provider/directory/layout.ts'
import { freeBackup, planRemoval } from '../../../src/provider/directory/merge.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'

const MiB = 1024 * 1024

// Removing a base that a kept backup builds on: refused before anything is written when the
// space is short or the headers disagree with the manifests.
describe('provider/directory/merge: checks before a removal writes', () => {
  let dir: string
  let template: string
  let store: string
  const vols: string[] = []
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-merge-'))
    template = join(dir, 'template')
    const disk = join(dir, 'd.qcow2')
    await writeFile(join(dir, 'c'), 'name: m\n')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M'])
    await runCliInProcessOk(['init', template, '--vm-backup-mode', 'incremental', '--id', 'm'])
    for (const [i, at] of ['0', '4M', '8M'].entries()) {
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${i + 1} ${at} 2M`, disk])
      const r = await runCliInProcessOk(
        backupArgs(template, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`, '--json'),
      )
      vols.push((JSON.parse(r.stdout) as { volid: string }).volid.slice('m:'.length))
      await new Promise((res) => setTimeout(res, 1100))
    }
  })
  beforeEach(async () => {
    store = join(dir, `store-${Math.random().toString(36).slice(2)}`)
    await cp(template, store, { recursive: true })
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const snapshot = async (): Promise<string[]> => {
    const out: string[] = []
    const walk = async (d: string): Promise<void> => {
      for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) =>
        a.name < b.name ? -1 : 1,
      )) {
        const p = join(d, e.name)
        if (e.isDirectory()) await walk(p)
        else if (e.name !== '.lock')
          out.push(
            `${p.slice(store.length)} ${(await stat(p)).size} ${(await readFile(p)).toString('base64').length}`,
          )
      }
    }
    await walk(store)
    return out
  }

  const free = async (volname: string, opts: Parameters<typeof freeBackup>[3] = {}) => {
    const layout = new StoreLayout(store)
    await using root = await layout.openRoot()
    await using guest = await root.openDir('100')
    await freeBackup(layout, guest, parseVolname(volname), opts)
  }

  it('plans the merge into the dependant with the bytes it writes', async () => {
    const layout = new StoreLayout(store)
    await using root = await Dir.open(store)
    await using guest = await root.openDir('100')
    const [base, child] = vols as [string, string]
    const plan = await planRemoval(layout, guest, parseVolname(base))
    assert.deepEqual(
      plan.map((m) => [m.child, m.device, m.parent]),
      [[child, 'drive-scsi0', null]],
    )
    assert.ok((plan[0]?.bytes ?? 0) >= 2 * MiB, String(plan[0]?.bytes))
  })

  it('refuses with NO_SPACE before writing when the merge cannot fit', async () => {
    const before = await snapshot()
    await assert.rejects(
      free(vols[0] ?? '', { freeBytes: () => Promise.resolve(MiB) }),
      (e: unknown) => isBackupError(e, 'NO_SPACE') && /merges \d+ bytes/.test(e.message),
    )
    assert.deepEqual(await snapshot(), before)
  })

  it('refuses when a header names the base but the manifest says not', async () => {
    const child = parseVolname(vols[1] ?? '')
    const file = join(store, '100', child.dirName, 'manifest.json')
    const m = JSON.parse(await readFile(file, 'utf8')) as {
      parent?: string
      disks: Record<string, { parent?: string }>
    }
    delete m.parent
    for (const d of Object.values(m.disks)) delete d.parent
    await writeFile(file, JSON.stringify(m))
    const before = await snapshot()
    await assert.rejects(
      free(vols[0] ?? ''),
      (e: unknown) =>
        isBackupError(e, 'ARCHIVE_INVALID') &&
        /builds on .* but its manifest says not/.test(e.message),
    )
    assert.deepEqual(await snapshot(), before)
  })

  /** The journal of removing `base`, merged into `child` (drive-scsi0, no parent after). */
  const plantJournal = async (base: string, child: string): Promise<void> => {
    const journal = {
      version: 1,
      volname: base,
      merges: [{ child, device: 'drive-scsi0', parent: null }],
    }
    await writeFile(join(store, '100', '.removing.json'), JSON.stringify(journal))
  }
  /** What a removal of `base` did before a kill right after the rename: `child` merged. */
  const mergedUpToRename = async (base: string, child: string): Promise<void> => {
    const img = (v: string) => join(dirOf(v), 'drive-scsi0.qcow2')
    await run('qemu-img', ['commit', '-q', '-d', '-f', 'qcow2', img(child)])
    await rm(join(dirOf(base), 'manifest.json'))
    await cp(img(base), img(child))
    await rm(img(base))
  }
  const dirOf = (v: string | undefined): string => join(store, '100', parseVolname(v ?? '').dirName)
  const refusedUnchanged = async (volname: string, code: string, why: RegExp) => {
    const before = await snapshot()
    await assert.rejects(free(volname), (e: unknown) => {
      assert.ok(isBackupError(e), String(e))
      assert.equal(e.code, code, e.message)
      assert.match(e.message, why)
      return true
    })
    assert.deepEqual(await snapshot(), before)
  }

  it('refuses a backup that does not exist, and a protected one', async () => {
    await refusedUnchanged('backup/100/qemu-2001-01-01T00:00:00Z', 'NOT_FOUND', /does not exist/)
    await writeFile(`${dirOf(vols[0])}.protected`, '')
    await refusedUnchanged(vols[0] ?? '', 'PROTECTED', /protected/)
  })

  it("refuses when the dependant's header skips the base the manifest names", async () => {
    // The newest backup's header names the oldest directly; its manifest still names the middle.
    const top = join(dirOf(vols[2]), 'drive-scsi0.qcow2')
    const oldest = `../${parseVolname(vols[0] ?? '').dirName}/drive-scsi0.qcow2`
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', oldest, top])
    await refusedUnchanged(vols[1] ?? '', 'ARCHIVE_INVALID', /does not build on/)
  })

  it("refuses when the base's own header disagrees with its manifest", async () => {
    await run('qemu-img', [
      'rebase',
      '-u',
      '-f',
      'qcow2',
      '-b',
      '',
      join(dirOf(vols[1]), 'drive-scsi0.qcow2'),
    ])
    await refusedUnchanged(vols[1] ?? '', 'ARCHIVE_INVALID', /does not match its manifest/)
  })

  type Disks = Record<string, { parent?: string; file: string; digest?: { blocks: string } }>
  const editManifest = async (
    volname: string | undefined,
    edit: (m: { parent?: string; disks: Disks }) => void,
  ) => {
    const file = join(dirOf(volname), 'manifest.json')
    const m = JSON.parse(await readFile(file, 'utf8')) as { parent?: string; disks: Disks }
    edit(m)
    await writeFile(file, JSON.stringify(m))
  }

  it('refuses when a newer backup has an unreadable manifest', async () => {
    await writeFile(join(dirOf(vols[1]), 'manifest.json'), '{')
    await refusedUnchanged(vols[0] ?? '', 'ARCHIVE_INVALID', /unreadable manifest\) builds on it/)
  })

  it('refuses when a dependant builds a disk on the base that the base lacks', async () => {
    await editManifest(vols[1], (m) => {
      const d = m.disks['drive-scsi0']
      assert.ok(d !== undefined)
      m.disks['drive-scsi1'] = {
        ...d,
        file: 'drive-scsi1.qcow2',
        ...(d.digest === undefined
          ? {}
          : { digest: { ...d.digest, blocks: 'drive-scsi1.blocks' } }),
      }
    })
    await refusedUnchanged(
      vols[0] ?? '',
      'ARCHIVE_INVALID',
      /builds drive-scsi1 on .*which lacks it/,
    )
  })

  it('refuses when two backups build the same disk on the base', async () => {
    // Both newer backups claim the oldest as their parent; guestbackup writes one at most.
    await editManifest(vols[2], (m) => {
      m.parent = vols[0] ?? ''
      for (const d of Object.values(m.disks)) d.parent = vols[0] ?? ''
    })
    await refusedUnchanged(vols[0] ?? '', 'ARCHIVE_INVALID', /several backups build drive-scsi0/)
  })

  it('resumes a journaled removal, and refuses one whose dependant lost its base', async () => {
    const [base, child] = vols as [string, string]
    await plantJournal(base, child)
    // Killed after the base's image went but before the dependant was merged: never guess.
    await rm(join(dirOf(base), 'drive-scsi0.qcow2'))
    const others = async () =>
      (await snapshot()).filter((l) => !l.includes(parseVolname(base).dirName))
    const before = await others()
    await assert.rejects(
      free(vols[2] ?? ''),
      (e: unknown) =>
        isBackupError(e, 'ARCHIVE_INVALID') && e.message.includes('neither merged nor mergeable'),
    )
    // The removal only went as far as unlisting the base it was asked to remove.
    assert.deepEqual(await others(), before)
  })

  it('completes a journaled removal killed after the rename', async () => {
    const [base, child] = vols as [string, string]
    await plantJournal(base, child)
    await mergedUpToRename(base, child)
    await free(vols[2] ?? '', {})
    const names = await readdir(join(store, '100'))
    assert.ok(!names.includes(parseVolname(base).dirName))
    assert.ok(!names.includes('.removing.json'))
    const m = JSON.parse(await readFile(join(dirOf(child), 'manifest.json'), 'utf8')) as {
      parent?: string
    }
    assert.equal(m.parent, undefined)
  })

  it("refuses to resume when the dependant's image builds on another backup than the journal says", async () => {
    const [oldest, base, child] = vols as [string, string, string]
    // The journal says the merge leaves the child without parent; its header names the oldest.
    await plantJournal(base, child)
    await rm(join(dirOf(base), 'drive-scsi0.qcow2'))
    const top = join(dirOf(child), 'drive-scsi0.qcow2')
    const onOldest = `../${parseVolname(oldest).dirName}/drive-scsi0.qcow2`
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', onOldest, top])
    // Resuming unlists the doomed base first (its manifest goes); nothing else may change.
    const unlisted = `${parseVolname(base).dirName}/manifest.json`
    const others = async () => (await snapshot()).filter((l) => !l.includes(unlisted))
    const before = await others()
    await assert.rejects(
      free(oldest),
      (e: unknown) =>
        isBackupError(e, 'ARCHIVE_INVALID') &&
        e.message.startsWith(
          `the image of ${child} drive-scsi0 is neither merged nor mergeable: the store`,
        ),
    )
    assert.deepEqual(await others(), before)
  })

  it("refuses to resume when the dependant's manifest lost the merged disk", async () => {
    const [base, child] = vols as [string, string]
    await plantJournal(base, child)
    await mergedUpToRename(base, child)
    await editManifest(child, (m) => {
      m.disks = {}
    })
    await assert.rejects(
      free(vols[2] ?? ''),
      (e: unknown) =>
        isBackupError(e, 'ARCHIVE_INVALID') &&
        e.message.includes(' lost drive-scsi0: the store is inconsistent'),
    )
    assert.ok((await readdir(join(store, '100'))).includes('.removing.json'))
  })

  it('merges and removes when all is consistent', async () => {
    await free(vols[0] ?? '')
    const names = await readdir(join(store, '100'))
    assert.ok(!names.includes(parseVolname(vols[0] ?? '').dirName))
    assert.ok(!names.includes('.removing.json'))
  })
})
