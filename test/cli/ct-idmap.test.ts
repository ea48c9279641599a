import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chown, mkdir, mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { treeManifest } from '../helpers/tree.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

// An unprivileged container (root = host uid 100000) is archived and restored as its mapped
// root inside a user namespace, as pve-container does (VZDump/LXC.pm, LXC/Create.pm).
const MAP = ['--idmap', 'u:0:100000:65536', '--idmap', 'g 0 100000 65536']

const buildCt = async (root: string): Promise<void> => {
  await mkdir(join(root, 'etc'), { recursive: true })
  await writeFile(join(root, 'etc', 'hostname'), 'ct\n', { mode: 0o644 })
  await writeFile(join(root, 'secret'), 'only 5:7\n', { mode: 0o600 })
  await writeFile(join(root, 'acl'), 'acl\n', { mode: 0o640 })
  execFileSync('setfacl', ['-m', 'u:100033:rw', join(root, 'acl')])
  execFileSync('setfattr', ['-n', 'user.note', '-v', 'x', join(root, 'etc', 'hostname')])
  await chown(join(root, 'etc', 'hostname'), 100000, 100000)
  await chown(join(root, 'etc'), 100000, 100000)
  await chown(join(root, 'acl'), 100001, 100002)
  await chown(join(root, 'secret'), 100005, 100007)
  await chown(root, 100000, 100000)
  await utimes(join(root, 'secret'), 1_700_000_000, 1_700_000_000)
}

/** The manifest with owners shifted by `by` (a tree seen from the host vs the container). */
const shifted = (m: Awaited<ReturnType<typeof treeManifest>>, by: number) =>
  Object.fromEntries(
    Object.entries(m).map(([k, e]) => [
      k,
      {
        ...e,
        uid: e.uid + by,
        gid: e.gid + by,
        xattrs: Object.fromEntries(
          Object.entries(e.xattrs).map(([n, v]) => [
            n,
            v.replace(/user:(\d+):/g, (_s, id: string) => `user:${Number(id) + by}:`),
          ]),
        ),
      },
    ]),
  )

describe('cli: unprivileged container backup and restore (--idmap)', () => {
  let dir: string
  let root: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-idmap-'))
    root = join(dir, 'root')
    await mkdir(root)
    await buildCt(root)
    await writeFile(join(dir, 'ct.conf'), 'arch: amd64\nhostname: t\nunprivileged: 1\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  for (const mode of ['tar', 'squashfs'] as const) {
    it(`archives as the mapped root and restores the tree exactly (${mode})`, async () => {
      const store = join(dir, `store-${mode}`)
      await runCliInProcessOk(['init', store, '--lxc-backup-mode', mode])
      // The map comes from the config's `unprivileged: 1` (pve-container parse_id_maps).
      const args = backupArgs(store, 300, join(dir, 'ct.conf'))
      const b = await runCliInProcessOk([...args, '--rootfs', root, '--json'])
      const { volid } = JSON.parse(b.stdout) as { volid: string }
      const volname = volid.replace(/^[^:]*:/, '')
      const bdir = join(store, volname.replace(/^backup\//, 'backup/'))
      if (mode === 'tar') {
        // The archive holds the container's view: 5/7, not 100005/100007.
        const files = execFileSync('sh', [
          '-c',
          `ls ${store}/*/*/*/archive.tar* ${store}/*/*/archive.tar* 2>/dev/null | grep -v members || true`,
        ])
          .toString()
          .trim()
          .split('\n')
        const archive = files.find((f) => f !== '')
        assert.ok(archive, `no archive.tar below ${store} (${bdir})`)
        const listing = execFileSync('tar', ['-tvf', archive, '--numeric-owner']).toString()
        assert.match(listing, /5\/7 .* \.\/secret/)
        assert.match(listing, /0\/0 .* \.\/etc\/hostname/)
        assert.doesNotMatch(listing, /1000\d\d\//)
      }
      // The map is recorded and listed.
      const list = JSON.parse(
        (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
      ) as { idmap?: string[] }[]
      assert.deepEqual(list[0]?.idmap, ['u 0 100000 65536', 'g 0 100000 65536'])
      // Recorded unprivileged: without --idmap or --privileged the restore is refused.
      const refused = await runCliInProcess([
        'restore',
        '--store',
        store,
        volname,
        '--target',
        join(dir, `no-${mode}`),
      ])
      assert.notEqual(refused.code, 0)
      assert.match(
        refused.stderr,
        /unprivileged container: give --idmap u:0:100000:65536 --idmap g:0:100000:65536 .* or --privileged/,
      )
      const target = join(dir, `restore-${mode}`)
      await runCliInProcessOk(['restore', '--store', store, volname, '--target', target, ...MAP])
      const want = await treeManifest(root)
      const got = await treeManifest(join(target, 'rootfs'))
      // squashfs too: the ACLs recorded beside the image (getfacl in the namespace: the
      // container's ids) are set by setfacl in the namespace, so u:100033 comes back.
      assert.match(got['acl']?.xattrs['system.posix_acl_access'] ?? '', /user:100033:rw-/)
      assert.deepEqual(got, want)
      // --privileged: the container's view, unshifted.
      const flat = join(dir, `priv-${mode}`)
      await runCliInProcessOk([
        'restore',
        '--store',
        store,
        volname,
        '--target',
        flat,
        '--privileged',
      ])
      const unshifted = await treeManifest(join(flat, 'rootfs'))
      assert.deepEqual(shifted(unshifted, 100000), want)
    })
  }

  it('a root-owned file the mapped root cannot read fails the backup, naming it', async () => {
    const r2 = join(dir, 'root2')
    await mkdir(r2)
    await buildCt(r2)
    await writeFile(join(r2, 'hostkey'), 'root only\n', { mode: 0o600 })
    const store = join(dir, 'store-denied')
    await runCliInProcessOk(['init', store])
    const res = await runCliInProcess([
      ...backupArgs(store, 301, join(dir, 'ct.conf')),
      '--rootfs',
      r2,
      ...MAP,
    ])
    assert.notEqual(res.code, 0)
    assert.match(res.stderr, /\.\/hostkey: Cannot open: Permission denied/)
    // The 0600 file of 100005 was readable (the walk got that far), and nothing was kept.
    assert.equal((await readFile(join(r2, 'secret'), 'utf8')).length > 0, true)
  })

  it('refuses a bad --idmap before touching the store', async () => {
    const res = await runCliInProcess([
      ...backupArgs(join(dir, 'nostore'), 302, join(dir, 'ct.conf')),
      '--rootfs',
      root,
      '--idmap',
      'u:0:100000:65536',
    ])
    assert.notEqual(res.code, 0)
    assert.match(res.stderr, /the id map has no 'g' entry/)
  })
})
