import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  SQUASHFS_ACL_WARNING,
  createSquashfs,
  extractDirectory,
  mountSquashfs,
  mountsAt,
  readMounts,
} from '../../src/archive/index.ts'
import type { CreateSquashfsResult } from '../../src/archive/index.ts'
import { isBackupError } from '../../src/errors.ts'
import type { ErrorCode } from '../../src/errors.ts'
import { TokenBucket } from '../../src/io/throttle.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import {
  SPARSE_FILE,
  SPARSE_SIZE,
  TREE_EXCLUDED,
  TREE_EXCLUDES,
  allocatedBytes,
  buildTree,
  treeManifest,
  withoutAcls,
  withoutPaths,
} from '../helpers/tree.ts'
import type { Manifest } from '../helpers/tree.ts'
import { leftoverTools } from './procs.ts'

const fails = (code: ErrorCode) => (e: unknown) => isBackupError(e, code)

describe('squashfs archives', () => {
  let tmp: TempDir
  let src: string
  let source: Manifest
  let image: string
  let created: CreateSquashfsResult
  let n = 0
  const fresh = async (name: string): Promise<string> => {
    const p = join(tmp.path, `${name}-${n++}`)
    await mkdir(p)
    return p
  }
  /** Mounts below our temp dir (there must be none between tests). */
  const ourMounts = async () =>
    (await readMounts()).filter((m) => m.mountPoint.startsWith(tmp.path))

  before(async () => {
    tmp = await makeTempDir('gb-sqfs-test-')
    src = join(tmp.path, 'src')
    await mkdir(src)
    await buildTree(src)
    source = await treeManifest(src)
    image = join(await fresh('image'), 'archive.sqfs')
    created = await createSquashfs({ directory: src, excludes: TREE_EXCLUDES, output: image })
  })
  after(async () => {
    assert.deepEqual(await ourMounts(), [])
    assert.deepEqual(await leftoverTools(), [])
    await tmp.remove()
  })

  it('creates an image and warns that ACLs are lost', async () => {
    const st = await stat(image)
    assert.equal(created.bytes, st.size)
    assert.equal(st.mode & 0o777, 0o600)
    assert.deepEqual(await readdir(join(image, '..')), ['archive.sqfs'])
    assert.ok(created.warnings.includes(SQUASHFS_ACL_WARNING), String(created.warnings))
    assert.ok(created.warnings.some((w) => w.includes("'cache/' ends with '/'")))
    assert.equal(created.warnings.length, 2, String(created.warnings))
  })

  it('mounts with squashfuse: the same tree without ACLs; unmount leaves nothing', async () => {
    const mnt = await fresh('mnt')
    const mount = await mountSquashfs(image, mnt)
    try {
      assert.equal(mount.path, mnt)
      assert.equal((await mountsAt(mnt)).length, 1)
      const seen = await treeManifest(mount.path)
      // squashfuse 0.1.104 lists security.* as trusted.* (vasi/squashfuse#83).
      const cap = seen['usr/bin/cap-tool']!.xattrs
      const listed = cap['trusted.capability']
      if (listed !== undefined) {
        cap['security.capability'] = listed
        delete cap['trusted.capability']
      }
      assert.deepEqual(seen, withoutAcls(withoutPaths(source, TREE_EXCLUDED)))
    } finally {
      await mount.unmount()
    }
    assert.deepEqual(await mountsAt(mnt), [])
    assert.deepEqual(await leftoverTools(), [])
    await mount.unmount() // idempotent
  })

  it('extractDirectory copies a mounted image: equal except ACLs and ./dev/*', async () => {
    const target = await fresh('target')
    {
      // A mount point the kernel escapes in mountinfo (space → \040).
      await using mount = await mountSquashfs(image, await fresh('mnt with space'))
      const r = await extractDirectory({ source: mount.path, target })
      assert.deepEqual(r.warnings, [])
    }
    assert.deepEqual(await ourMounts(), [])
    const restored = await treeManifest(target)
    assert.deepEqual(
      restored,
      withoutAcls(withoutPaths(source, [...TREE_EXCLUDED, 'dev/placeholder'])),
    )
    // squashfuse reports full st_blocks, so tar sees no holes: the copy is not sparse.
    assert.ok((await allocatedBytes(join(target, SPARSE_FILE))) >= SPARSE_SIZE)
  })

  it('extractDirectory of a plain directory keeps everything, including ACLs and holes', async () => {
    const target = await fresh('target')
    await extractDirectory({ source: src, target })
    assert.deepEqual(await treeManifest(target), withoutPaths(source, ['dev/placeholder']))
    assert.ok((await allocatedBytes(join(target, SPARSE_FILE))) < SPARSE_SIZE / 10)
    await writeFile(join(target, 'x'), '')
    await assert.rejects(extractDirectory({ source: src, target }), fails('USAGE'))
    const empty = await fresh('empty')
    await assert.rejects(
      extractDirectory({ source: join(src, 'nope'), target: empty }),
      fails('USAGE'),
    )
    assert.deepEqual(await readdir(empty), [])
  })

  it('abort during extractDirectory kills both tars', async () => {
    const ac = new AbortController()
    const bucket = new TokenBucket({
      bytesPerSecond: 64 * 1024,
      burst: 64 * 1024,
      sleep: (ms, signal) => {
        ac.abort() // at the first throttled chunk: both tars are running
        return sleep(ms, undefined, { signal })
      },
    })
    const target = await fresh('target')
    const job = extractDirectory({ source: src, target, bandwidth: bucket, signal: ac.signal })
    await assert.rejects(job, fails('ABORTED'))
    assert.deepEqual(await leftoverTools(), [])
  })

  it("the high-level 'squashfuse' program works but splits hardlinks", async () => {
    await using mount = await mountSquashfs(image, await fresh('mnt'), { program: 'squashfuse' })
    const a = await stat(join(mount.path, 'data/original'))
    const b = await stat(join(mount.path, 'data/hardlink'))
    assert.equal(a.nlink, 3)
    assert.notEqual(a.ino, b.ino)
    assert.equal(await readFile(join(mount.path, 'etc/hostname'), 'utf8'), 'testhost\n')
  })

  it('refuses bad mount arguments and reports squashfuse errors', async () => {
    const mnt = await fresh('mnt')
    await assert.rejects(mountSquashfs(join(tmp.path, 'nope.sqfs'), mnt), fails('USAGE'))
    await assert.rejects(mountSquashfs(image, join(tmp.path, 'nope')), fails('USAGE'))
    await assert.rejects(mountSquashfs(image, image), fails('USAGE'))
    {
      await using _mount = await mountSquashfs(image, mnt)
      await assert.rejects(mountSquashfs(image, mnt), fails('USAGE'))
    }
    const bogus = join(tmp.path, 'bogus.sqfs')
    await writeFile(bogus, randomBytes(64 * 1024))
    await assert.rejects(mountSquashfs(bogus, mnt), (e: unknown) => {
      assert.ok(isBackupError(e, 'ARCHIVE_TOOL_FAILED'))
      assert.match(String(e.details?.['stderr']), /./)
      return true
    })
    assert.deepEqual(await ourMounts(), [])
    assert.deepEqual(await leftoverTools(), [])
  })

  it('aborting a mount at any point leaves no mount and no process', async () => {
    const mnt = await fresh('mnt')
    await assert.rejects(
      mountSquashfs(image, mnt, { signal: AbortSignal.abort() }),
      fails('ABORTED'),
    )
    for (const delay of [0, 1, 2, 5, 10, 20, 50]) {
      const ac = new AbortController()
      const job = mountSquashfs(image, mnt, { signal: ac.signal })
      setTimeout(() => {
        ac.abort()
      }, delay)
      try {
        await (await job).unmount() // mounted before the abort came
      } catch (e) {
        assert.ok(isBackupError(e, 'ABORTED'), String(e))
      }
      assert.deepEqual(await mountsAt(mnt), [], `delay ${delay}`)
      assert.deepEqual(await leftoverTools(), [], `delay ${delay}`)
    }
  })

  it('detaches a busy mount lazily and reaps squashfuse once the last file closes', async () => {
    const mnt = await fresh('mnt')
    const mount = await mountSquashfs(image, mnt)
    const fh = await open(join(mount.path, 'etc/hostname'))
    const unmounting = mount.unmount()
    await sleep(200)
    assert.deepEqual(await mountsAt(mnt), [], 'detached while busy')
    assert.equal((await fh.readFile('utf8')).length, 9)
    await fh.close()
    await unmounting
    assert.deepEqual(await leftoverTools(), [])
  })

  it('createSquashfs failures leave no file behind', async () => {
    const dir = await fresh('fail')
    const output = join(dir, 'a.sqfs')
    await assert.rejects(
      createSquashfs({ directory: join(dir, 'missing'), output }),
      (e: unknown) => {
        assert.ok(isBackupError(e, 'ARCHIVE_TOOL_FAILED'))
        assert.match(String(e.details?.['stderr']), /missing/)
        return true
      },
    )
    assert.deepEqual(await readdir(dir), [])
    const signal = AbortSignal.abort()
    await assert.rejects(createSquashfs({ directory: src, output, signal }), fails('ABORTED'))
    await assert.rejects(
      createSquashfs({ directory: src, output, excludes: ['a\nb'] }),
      fails('USAGE'),
    )
    const compressionLevel = 0
    await assert.rejects(
      createSquashfs({ directory: src, output, compressionLevel }),
      fails('USAGE'),
    )
    await writeFile(output, 'precious')
    await assert.rejects(createSquashfs({ directory: src, output }), fails('USAGE'))
    assert.equal(await readFile(output, 'utf8'), 'precious')
  })

  it('abort kills mksquashfs and removes the partial image', async () => {
    const big = await fresh('big')
    const fh = await open(join(big, 'random.bin'), 'w')
    for (let i = 0; i < 32; i++) await fh.write(randomBytes(1024 * 1024))
    await fh.close()
    const dir = await fresh('abort')
    const output = join(dir, 'a.sqfs')
    const ac = new AbortController()
    const job = createSquashfs({ directory: big, output, signal: ac.signal })
    for (let i = 0; i < 1000 && (await readdir(dir)).length === 0; i++) await sleep(2)
    assert.deepEqual(await readdir(dir), ['a.sqfs.partial'], 'mksquashfs started')
    ac.abort()
    await assert.rejects(job, fails('ABORTED'))
    assert.deepEqual(await readdir(dir), [])
    assert.deepEqual(await leftoverTools(), [])
  })
})
