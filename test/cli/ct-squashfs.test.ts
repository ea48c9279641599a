import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { run } from '../../src/io/spawn.ts'
import { backupArgs, runCliInProcessOk } from '../helpers/cli.ts'
import {
  SPARSE_FILE,
  SPARSE_SIZE,
  allocatedBytes,
  buildTree,
  treeManifest,
} from '../helpers/tree.ts'

describe('cli: container restore from a squashfs store', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-ct-sqfs-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('goes through unsquashfs: sparse files stay sparse, capabilities kept, trusted.* dropped', async () => {
    const root = join(dir, 'root')
    await mkdir(root)
    await buildTree(root)
    await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(root, 'etc')])
    await writeFile(join(dir, 'ct.conf'), 'arch: amd64\nhostname: t\n')
    const store = join(dir, 'store')
    await runCliInProcessOk(['init', store, '--lxc-backup-mode', 'squashfs'])
    const b = await runCliInProcessOk([
      ...backupArgs(store, 201, join(dir, 'ct.conf')),
      '--rootfs',
      root,
      '--json',
    ])
    const { volid } = JSON.parse(b.stdout) as { volid: string }
    const target = join(dir, 'restore')
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    const restored = join(target, 'rootfs')
    // A copy through the squashfuse mount is fully allocated (squashfuse reports full st_blocks).
    const alloc = await allocatedBytes(join(restored, SPARSE_FILE))
    assert.ok(alloc < SPARSE_SIZE / 10, `sparse file allocates ${alloc} bytes`)
    const got = await treeManifest(restored)
    assert.ok('security.capability' in (got['usr/bin/cap-tool']?.xattrs ?? {}))
    assert.deepEqual(Object.keys(got['etc']?.xattrs ?? {}), [])
    assert.equal(got['etc/with-xattr']?.xattrs['user.test'], '0x68656c6c6f') // 'hello', hex as the manifest reads it
  })
})
