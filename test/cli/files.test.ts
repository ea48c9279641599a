import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import {
  appendFile,
  link,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

interface Entry {
  path: string
  type: string
  size: number
  mode: number | null
  uid: number | null
  link: string | null
}
interface Got {
  members: number
  bytesRead: number | null
  archiveBytes: number | null
  archive: string
}

// Issue 12, done-when: `files … ls`, `find` and `get` work on tar, compressed tar and squashfs
// backups; `get` of one file from a 1 GiB archive reads a small fraction of it.
describe('cli: files ls, find and get of a container backup', () => {
  let dir: string
  let root: string
  let conf: string
  const stores: Record<string, { store: string; volid: string }> = {}

  const backupInto = async (name: string, init: string[], tree = root): Promise<void> => {
    const store = join(dir, `store-${name}`)
    await runCliInProcessOk(['init', store, ...init])
    const b = await runCliInProcessOk([...backupArgs(store, 130, conf), '--rootfs', tree, '--json'])
    stores[name] = { store, volid: (JSON.parse(b.stdout) as { volid: string }).volid }
  }
  const files = async (name: string, ...args: string[]): Promise<string> => {
    const s = stores[name]
    assert.ok(s)
    return (await runCliInProcessOk(['files', '--store', s.store, s.volid, ...args, '--json']))
      .stdout
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-files-'))
    root = join(dir, 'root')
    conf = join(dir, 'ct.conf')
    await writeFile(conf, 'arch: amd64\nhostname: f\n')
    await mkdir(join(root, 'etc', 'app'), { recursive: true })
    await mkdir(join(root, 'var', 'lib'), { recursive: true })
    await writeFile(join(root, 'etc', 'hostname'), 'f\n')
    await writeFile(join(root, 'etc', 'app', 'a.conf'), 'a=1\n', { mode: 0o640 })
    await writeFile(join(root, 'etc', 'app', 'b.conf'), 'b=2\n')
    await symlink('a.conf', join(root, 'etc', 'app', 'current'))
    // 40 MiB that does not compress: the archive spans several zstd frames.
    await writeFile(join(root, 'var', 'lib', 'blob'), randomBytes(40 << 20))
    // Archived after the blob (tar goes in directory order: it is the link, not the first copy).
    await writeFile(join(root, 'var', 'lib', 'orig'), 'linked\n')
    await link(join(root, 'var', 'lib', 'orig'), join(root, 'etc', 'app', 'zz-link'))
    await backupInto('zstd', [])
    await backupInto('tar', ['--lxc-compress', 'none'])
    await backupInto('gzip', ['--lxc-compress', 'gzip'])
    await backupInto('squashfs', ['--lxc-backup-mode', 'squashfs'])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  for (const name of ['zstd', 'tar', 'gzip', 'squashfs']) {
    it(`${name}: ls, find and get answer from the backup`, async () => {
      const top = (JSON.parse(await files(name, 'ls')) as Entry[]).map((e) => e.path)
      assert.deepEqual(top, ['etc', 'var'])
      const app = JSON.parse(await files(name, 'ls', '/etc/app/')) as Entry[]
      assert.deepEqual(
        app.map((e) => [e.path, e.type === 'hardlink' ? 'file' : e.type]),
        [
          ['etc/app/a.conf', 'file'],
          ['etc/app/b.conf', 'file'],
          ['etc/app/current', 'symlink'],
          ['etc/app/zz-link', 'file'],
        ],
      )
      const a = app.find((e) => e.path === 'etc/app/a.conf')
      assert.ok(a)
      assert.equal(a.mode, 0o640)
      assert.equal(a.uid, 0)
      assert.equal(app.find((e) => e.path === 'etc/app/current')?.link, 'a.conf')
      const found = (JSON.parse(await files(name, 'find', '*.conf')) as Entry[]).map((e) => e.path)
      assert.deepEqual(found.sort(), ['etc/app/a.conf', 'etc/app/b.conf'])
      const deep = (JSON.parse(await files(name, 'find', 'etc/**')) as Entry[]).length
      assert.equal(deep, 6) // etc/hostname, etc/app and its four entries

      const to = join(dir, `get-${name}`)
      const got = JSON.parse(await files(name, 'get', 'etc/app', '--to', to)) as Got
      assert.equal(await readFile(join(to, 'etc', 'app', 'a.conf'), 'utf8'), 'a=1\n')
      // The hard link's first copy, outside what was asked, comes along for tar to link to.
      assert.equal(await readFile(join(to, 'etc', 'app', 'zz-link'), 'utf8'), 'linked\n')
      assert.ok(got.members >= 5, `${got.members} members`)
      const one = join(dir, `one-${name}`)
      const r = JSON.parse(await files(name, 'get', 'etc/hostname', '--to', one)) as Got
      assert.deepEqual(await readdir(one), ['etc'])
      assert.deepEqual(await readdir(join(one, 'etc')), ['hostname'])
      if (name === 'squashfs') assert.equal(r.bytesRead, null)
      else if (name === 'gzip') assert.equal(r.bytesRead, r.archiveBytes, 'gzip cannot seek')
      else {
        // One frame (zstd) or one member (tar) of a 40 MiB archive.
        assert.ok(r.bytesRead !== null && r.archiveBytes !== null)
        assert.ok(r.bytesRead * 2 < r.archiveBytes, `read ${r.bytesRead} of ${r.archiveBytes}`)
      }
    })
  }

  it('refuses what is not in the backup, .., a non-empty target, a wrong action: one line each', async () => {
    const s = stores['zstd']
    assert.ok(s)
    const busy = join(dir, 'busy')
    await mkdir(busy)
    await writeFile(join(busy, 'x'), '')
    const cases: [string[], number, RegExp][] = [
      [['get', 'etc/nope', '--to', join(dir, 'n1')], 1, /etc\/nope: not in the backup/],
      [['get', '../etc', '--to', join(dir, 'n2')], 2, /contains \.\./],
      [['get', 'etc/hostname', '--to', busy], 2, /not empty/],
      [['get', 'etc/hostname'], 2, /files get needs --to DIR/],
      [['ls', 'etc/nothing'], 1, /etc\/nothing: not in the backup/],
      [['cat', 'etc/hostname'], 2, /unknown action 'cat'/],
    ]
    for (const [args, code, re] of cases) {
      const r = await runCliInProcess(['files', '--store', s.store, s.volid, ...args])
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, re)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    }
    assert.deepEqual(await readdir(busy), ['x'])
  })

  it('a catalog that does not match the manifest is not trusted', async () => {
    const s = stores['tar']
    assert.ok(s)
    const bdir = join(s.store, s.volid.replace(/^[^:]*:backup\//, ''))
    await appendFile(join(bdir, 'archive.members'), '\n')
    const r = await runCliInProcess(['files', '--store', s.store, s.volid, 'ls'])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /the catalog cannot be trusted: archive\.members differs/)
  })

  it('get of one file from a 1 GiB archive reads a small fraction of it', async () => {
    const big = join(dir, 'big')
    await mkdir(join(big, 'data'), { recursive: true })
    await writeFile(join(big, 'aaa.txt'), 'first\n')
    // 1 GiB of non-zero data (no holes for tar --sparse to skip), written in 64 MiB pieces.
    const piece = Buffer.alloc(64 << 20, 0x61)
    for (let i = 0; i < 16; i++) await appendFile(join(big, 'data', 'huge'), piece)
    await writeFile(join(big, 'zzz.txt'), 'last\n')
    await backupInto('big', ['--lxc-compress', 'none'], big)
    await rm(big, { recursive: true, force: true })
    const to = join(dir, 'get-big')
    const r = JSON.parse(await files('big', 'get', 'zzz.txt', '--to', to)) as Got
    assert.equal(await readFile(join(to, 'zzz.txt'), 'utf8'), 'last\n')
    assert.ok(r.archiveBytes !== null && r.archiveBytes > 1 << 30)
    assert.ok(r.bytesRead !== null && r.bytesRead < 64 * 1024, `read ${r.bytesRead} bytes`)
    // The text output says it too.
    const s = stores['big']
    assert.ok(s)
    const text = await runCliInProcessOk([
      'files',
      '--store',
      s.store,
      s.volid,
      'get',
      'aaa.txt',
      '--to',
      join(dir, 'get-big2'),
    ])
    assert.match(
      text.stdout,
      /^1 members of archive\.tar into .*; read [\d.]+ KiB of 1\.0 GiB \(0\.0 %\) of the archive\n$/,
    )
  })
})
