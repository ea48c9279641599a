import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  chmod,
  chown,
  link,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  open,
  readdir,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { attrDump, dropEntries } from '../helpers/attr-dump.ts'
import type { AttrDump } from '../helpers/attr-dump.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

// One tree with every kind of metadata, backed up as tar and as squashfs: both restores must be
// identical (tar, Proxmox's archiver, is the reference), POSIX ACLs included.

const MiB = 1024 * 1024
/** A name of 200 bytes. */
const LONG = `${'n'.repeat(196)}.txt`
/** A name that is not UTF-8 (0xff 0xfe). */
const RAW = Buffer.concat([Buffer.from('raw-'), Buffer.from([0xff, 0xfe]), Buffer.from('.bin')])
const at = (root: string, ...parts: (string | Buffer)[]): Buffer =>
  Buffer.concat([Buffer.from(root), ...parts.flatMap((p) => [Buffer.from('/'), Buffer.from(p)])])
const sh = (cmd: string, ...args: string[]): void => {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
}

const buildTree = async (root: string): Promise<void> => {
  await mkdir(join(root, 'etc'), { recursive: true })
  await writeFile(join(root, 'etc/acl-file'), 'acl\n', { mode: 0o640 })
  sh('setfacl', '-m', 'u:1234:rwx,g:2345:r', join(root, 'etc/acl-file'))
  await mkdir(join(root, 'shared'), { mode: 0o775 })
  sh('setfacl', '-m', 'g:2345:rx', '-d', '-m', 'u:1234:rwx', join(root, 'shared'))
  await mkdir(join(root, 'defaults-only'))
  sh('setfacl', '-d', '-m', 'g:99:rx', join(root, 'defaults-only'))
  await writeFile(join(root, 'etc/with-xattr'), 'x\n')
  sh('setfattr', '-n', 'user.test', '-v', 'hello', join(root, 'etc/with-xattr'))
  await mkdir(join(root, 'usr/bin'), { recursive: true })
  await writeFile(join(root, 'usr/bin/cap-tool'), '#!/bin/sh\n', { mode: 0o755 })
  // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted (what `setcap cap_net_bind_service+p` writes).
  const cap = `0s${Buffer.from('0100000200040000000000000000000000000000', 'hex').toString('base64')}`
  sh('setfattr', '-n', 'security.capability', '-v', cap, join(root, 'usr/bin/cap-tool'))
  await writeFile(join(root, 'usr/bin/setuid-tool'), '#!/bin/sh\n', { mode: 0o4755 })
  await chmod(join(root, 'usr/bin/setuid-tool'), 0o4755)
  // ACLs on a setuid file and on one with a capability: setting them must keep both.
  sh('setfacl', '-m', 'u:1234:rx', join(root, 'usr/bin/setuid-tool'))
  sh('setfacl', '-m', 'u:1234:rx', join(root, 'usr/bin/cap-tool'))
  await mkdir(join(root, 'data/sub'), { recursive: true })
  await writeFile(join(root, 'data/original'), 'linked three times\n')
  await link(join(root, 'data/original'), join(root, 'data/hardlink'))
  await link(join(root, 'data/original'), join(root, 'data/sub/third'))
  const sparse = await open(join(root, 'data/sparse.img'), 'w')
  await sparse.write(Buffer.alloc(MiB, 0x5a), 0, MiB, 16 * MiB)
  await sparse.truncate(64 * MiB)
  await sparse.close()
  await mkdir(join(root, 'nodes'))
  sh('mknod', '-m', '0660', join(root, 'nodes/null'), 'c', '1', '3')
  sh('mkfifo', '-m', '0620', join(root, 'nodes/fifo'))
  // A socket left behind by a process that exited without unlinking it (a closed server would).
  const sock = join(root, 'nodes/sock')
  const listen = `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.exit(0))`
  sh(process.execPath, '-e', listen)
  assert.ok((await lstat(sock)).isSocket())
  await mkdir(join(root, 'names'))
  await writeFile(join(root, 'names', LONG), 'a 200-byte name\n')
  await writeFile(at(root, 'names', RAW), 'not UTF-8\n')
  // Arguments are UTF-8 strings: the raw name is made by printf in a shell.
  execFileSync('sh', ['-c', `setfacl -m u:4321:r "$(printf 'raw-\\377\\376.bin')"`], {
    cwd: join(root, 'names'),
  })
  await symlink('../etc/acl-file', join(root, 'names/link'))
  await mkdir(join(root, 'home/user'), { recursive: true, mode: 0o750 })
  await writeFile(join(root, 'home/user/notes'), 'notes\n', { mode: 0o600 })
  await chown(join(root, 'home/user/notes'), 1000, 1000)
  await chown(join(root, 'home/user'), 1000, 1000)
  // Fixed mtimes, children before parents.
  let i = 0
  const walk = async (p: Buffer): Promise<void> => {
    if ((await lstat(p)).isDirectory()) {
      const names = await readdir(p, { encoding: 'buffer' })
      for (const n of names.sort((a, b) => Buffer.compare(a, b)))
        await walk(Buffer.concat([p, Buffer.from('/'), n]))
    }
    const t = 1_700_000_000 + 100 * i++
    await lutimes(p, t, t)
  }
  await walk(Buffer.from(root))
}

describe('cli: tar and squashfs container backups restore identical trees', () => {
  let dir: string
  let root: string
  const restored: Partial<Record<'tar' | 'squashfs', AttrDump>> = {}
  const volids: Partial<Record<'tar' | 'squashfs', string>> = {}
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-ct-identical-'))
    root = join(dir, 'root')
    await mkdir(root)
    await buildTree(root)
    await writeFile(join(dir, 'ct.conf'), 'arch: amd64\nhostname: t\n')
    for (const mode of ['tar', 'squashfs'] as const) {
      const store = join(dir, `store-${mode}`)
      await runCliInProcessOk(['init', store, '--lxc-backup-mode', mode])
      const args = [...backupArgs(store, 210, join(dir, 'ct.conf')), '--rootfs', root, '--json']
      const { volid } = JSON.parse((await runCliInProcessOk(args)).stdout) as { volid: string }
      volids[mode] = volid
      const target = join(dir, `restore-${mode}`)
      await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
      restored[mode] = await attrDump(join(target, 'rootfs'))
    }
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('the tar restore is the source without its socket (tar skips sockets)', async () => {
    const source = dropEntries(await attrDump(root), (_k, e) => e.type === 'socket')
    assert.deepEqual(restored.tar, source)
  })

  it('the squashfs restore equals the tar restore: ACLs, xattrs, capabilities, nodes, names', () => {
    const sqfs = restored.squashfs ?? {}
    assert.deepEqual(sqfs, restored.tar)
    // What the equality covers, asserted directly (so that a tree losing it in both fails).
    assert.deepEqual(sqfs['etc/acl-file']?.acls, [
      'user::rw-',
      'user:1234:rwx',
      'group::r--',
      'group:2345:r--',
      'mask::rwx',
      'other::---',
    ])
    assert.ok(sqfs['shared']?.acls?.includes('default:user:1234:rwx'), 'default ACL of shared')
    assert.ok(sqfs['defaults-only']?.acls?.includes('default:group:99:r-x'), 'default-only dir')
    assert.ok(sqfs[`names/${RAW.toString('latin1')}`]?.acls?.includes('user:4321:r--'))
    assert.ok(sqfs[`names/${LONG}`] !== undefined, 'the 200-byte name')
    assert.equal(sqfs['etc/with-xattr']?.xattrs['user.test'], '0x68656c6c6f')
    assert.ok('security.capability' in (sqfs['usr/bin/cap-tool']?.xattrs ?? {}))
    const setuid = sqfs['usr/bin/setuid-tool']
    assert.ok(setuid)
    assert.ok(setuid.acls?.includes('user:1234:r-x'))
    assert.equal(setuid.mode, '4755')
    assert.ok(sqfs['usr/bin/cap-tool']?.acls?.includes('user:1234:r-x'))
    assert.equal(sqfs['nodes/null']?.rdev, '1:3')
    assert.equal(sqfs['nodes/fifo']?.type, 'fifo')
    assert.equal(sqfs['nodes/sock'], undefined, 'sockets are dropped as tar drops them')
    assert.equal(sqfs['data/sub/third']?.hardlinkGroup, 'data/hardlink')
    assert.equal(sqfs['data/sparse.img']?.sparse, true, 'the sparse file stays sparse')
  })

  it('verify checks the ACL record against its digest', async () => {
    const store = join(dir, 'store-squashfs')
    const volid = volids.squashfs ?? ''
    const ok = await runCliInProcess(['verify', '--store', store, volid])
    assert.equal(ok.code, 0, ok.stderr)
    const found = execFileSync('find', [store, '-name', 'archive.acls']).toString().trim()
    assert.notEqual(found, '', 'the backup has archive.acls')
    const text = execFileSync('cat', [found]).toString('latin1')
    assert.match(text, /^# file: etc\/acl-file$/m)
    await writeFile(found, text.replace('user:1234:rwx', 'user:1234:r--'), 'latin1')
    const bad = await runCliInProcess(['verify', '--store', store, volid])
    assert.notEqual(bad.code, 0)
    assert.match(bad.stdout + bad.stderr, /archive\.acls differs from its digest/)
  })
})
