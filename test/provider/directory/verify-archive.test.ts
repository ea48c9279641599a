import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { appendFile, mkdir, mkdtemp, open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildTree, TREE_EXCLUDES } from '../../helpers/tree.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'
import { Dir } from '../../../src/io/beneath.ts'
import { parseVolname } from '../../../src/provider/directory/layout.ts'
import { readManifest } from '../../../src/provider/directory/manifest.ts'
import type { Manifest } from '../../../src/provider/directory/manifest.ts'
import { proveRestoredTree, verifyArchive } from '../../../src/provider/directory/verify-archive.ts'
import type { TarMember } from '../../../src/archive/tar-members.ts'

const signal = new AbortController().signal

/** Flip one bit of the byte at `offset` of `path` (twice restores it). */
const flip = async (path: string, offset: number): Promise<void> => {
  await using fh = await open(path, 'r+')
  const b = Buffer.alloc(1)
  await fh.read(b, 0, 1, offset)
  b[0] = (b[0] ?? 0) ^ 0x10
  await fh.write(b, 0, 1, offset)
}

describe('provider/directory/verify-archive', () => {
  let dir: string
  let root: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-verify-ct-'))
    root = join(dir, 'root')
    await mkdir(root)
    await buildTree(root)
    await writeFile(join(dir, 'ct.conf'), 'arch: amd64\nhostname: t\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** Back up the tree in `mode`, restore it; the backup's dir, manifest and restored root. */
  const backup = async (
    mode: 'tar' | 'squashfs',
  ): Promise<{ bdir: Dir; m: Manifest; path: string; restored: string }> => {
    const store = join(dir, `store-${mode}`)
    await runCliInProcessOk([
      'init',
      store,
      '--id',
      'st',
      '--lxc-backup-mode',
      mode,
      '--lxc-compress',
      'none',
    ])
    const args = backupArgs(store, 300, join(dir, 'ct.conf'))
    for (const e of TREE_EXCLUDES) args.push('--exclude-path', e)
    const b = await runCliInProcessOk([...args, '--rootfs', root, '--json'])
    const { volid } = JSON.parse(b.stdout) as { volid: string }
    const target = join(dir, `restore-${mode}`)
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    const ref = parseVolname(volid.replace(/^[^:]*:/, ''))
    const path = join(store, '300', ref.dirName)
    const bdir = await Dir.open(path)
    return { bdir, m: await readManifest(bdir, ref), path, restored: join(target, 'rootfs') }
  }

  /** The tree changes that must be refused, each undone after its check. */
  const treeChanges = async (
    check: () => Promise<string | undefined>,
    restored: string,
  ): Promise<void> => {
    const f = join(restored, 'etc/hostname')
    await flip(f, 2)
    assert.match((await check()) ?? '', /etc\/hostname differs from the backup/)
    await flip(f, 2)
    await appendFile(f, 'x')
    assert.match((await check()) ?? '', /etc\/hostname has \d+ bytes/)
    await writeFile(f, 'testhost\n')
    const gone = join(restored, 'usr/share/doc/readme.txt')
    await rename(gone, join(dir, 'aside'))
    assert.match((await check()) ?? '', /usr\/share\/doc\/readme\.txt is missing/)
    await rename(join(dir, 'aside'), gone)
    await writeFile(join(restored, 'etc/extra'), 'extra\n')
    assert.match((await check()) ?? '', /\.\/etc\/extra is in the restored tree, not in the backup/)
    await rm(join(restored, 'etc/extra'))
    assert.equal(await check(), undefined)
  }

  it('tar: passes intact, names the member of a flipped byte, proves a restore', async () => {
    const { bdir, m, path, restored } = await backup('tar')
    await using _ = bdir
    assert.deepEqual(m.container?.digest, { algorithm: 'sha256', members: 'archive.members' })
    assert.ok(
      m.digests?.['archive.tar'] !== undefined && m.digests['archive.members'] !== undefined,
    )
    let progress = 0
    const onProgress = (done: number): void => {
      progress = done
    }
    assert.equal(await verifyArchive(bdir, m, { signal, onProgress }), undefined)
    assert.equal(progress, m.files['archive.tar'])
    assert.equal(await proveRestoredTree(bdir, m, restored, { signal }), undefined)

    const archive = join(path, 'archive.tar')
    const data = await readFile(archive)
    const members = (await readFile(join(path, 'archive.members'), 'utf8'))
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as TarMember)
    // In a member's content.
    const at = data.indexOf('lorem ipsum') + 5000
    await flip(archive, at)
    assert.match(
      (await verifyArchive(bdir, m, { signal })) ?? '',
      /^member \.\/usr\/share\/doc\/readme\.txt \(at byte \d+ of the tar stream\) differs from the backup$/,
    )
    await flip(archive, at)
    // In a header block (its checksum then fails).
    const hostname = members.find((r) => r.path === './etc/hostname')
    assert.ok(hostname)
    await flip(archive, hostname.offset + 10)
    assert.match(
      (await verifyArchive(bdir, m, { signal })) ?? '',
      new RegExp(`header at byte ${hostname.offset} is damaged`),
    )
    await flip(archive, hostname.offset + 10)
    // After the end-of-archive blocks, in no member.
    await flip(archive, data.length - 3)
    assert.match((await verifyArchive(bdir, m, { signal })) ?? '', /in no member/)
    await flip(archive, data.length - 3)
    // The members file itself.
    await flip(join(path, 'archive.members'), 20)
    assert.equal(
      await verifyArchive(bdir, m, { signal }),
      'archive.members differs from the backup',
    )
    assert.equal(
      await proveRestoredTree(bdir, m, restored, { signal }),
      'archive.members differs from the backup',
    )
    await flip(join(path, 'archive.members'), 20)
    assert.equal(await verifyArchive(bdir, m, { signal }), undefined)

    await treeChanges(() => proveRestoredTree(bdir, m, restored, { signal }), restored)
  })

  it('squashfs: passes intact, catches a flipped byte, proves a restore', async () => {
    const { bdir, m, path, restored } = await backup('squashfs')
    await using _ = bdir
    assert.deepEqual(m.container?.digest, { algorithm: 'sha256' })
    assert.equal(await verifyArchive(bdir, m, { signal }), undefined)
    const archive = join(path, 'archive.sqfs')
    const size = m.files['archive.sqfs'] ?? 0
    await flip(archive, Math.floor(size / 2))
    assert.match(
      (await verifyArchive(bdir, m, { signal })) ?? '',
      /^archive\.sqfs differs from the backup/,
    )
    await flip(archive, Math.floor(size / 2))
    assert.equal(await verifyArchive(bdir, m, { signal }), undefined)
    assert.equal(await proveRestoredTree(bdir, m, restored, { signal }), undefined)
    await treeChanges(() => proveRestoredTree(bdir, m, restored, { signal }), restored)
  })
})
