import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  MKSQUASHFS_MEM,
  createSquashfs,
  extractSquashfs,
  mountSquashfs,
} from '../../src/archive/index.ts'
import { isBackupError } from '../../src/errors.ts'
import type { ErrorCode } from '../../src/errors.ts'
import { run } from '../../src/io/spawn.ts'
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

/** The extended attributes the restore drops (the tar copy's `--xattrs-include` keeps neither). */
const DROPPED = { 'etc/with-xattr': ['trusted.test', 'security.test'] } as const

describe('squashfs restore with unsquashfs', () => {
  let tmp: TempDir
  let src: string
  let source: Manifest
  let image: string
  let n = 0
  const fresh = async (name: string): Promise<string> => {
    const p = join(tmp.path, `${name}-${n++}`)
    await mkdir(p)
    return p
  }

  before(async () => {
    tmp = await makeTempDir('gb-unsqfs-test-')
    src = join(tmp.path, 'src')
    await mkdir(src)
    await buildTree(src)
    for (const [file, names] of Object.entries(DROPPED)) {
      for (const name of names) await run('setfattr', ['-n', name, '-v', 'x', join(src, file)])
    }
    source = await treeManifest(src)
    image = join(await fresh('image'), 'archive.sqfs')
    await createSquashfs({ directory: src, excludes: TREE_EXCLUDES, output: image })
  })
  after(async () => {
    assert.deepEqual(await leftoverTools(), [])
    await tmp.remove()
  })

  it('restores the tree: user xattrs and capabilities, no trusted.*/security.*, no ./dev/*, sparse', async () => {
    const target = await fresh('target')
    {
      await using mount = await mountSquashfs(image, await fresh('mnt'))
      const r = await extractSquashfs({ image, mount: mount.path, target })
      assert.deepEqual(r.warnings, [])
      assert.ok(r.members > 40, String(r.members))
    }
    const want = withoutAcls(withoutPaths(source, [...TREE_EXCLUDED, 'dev/placeholder']))
    for (const [file, names] of Object.entries(DROPPED)) {
      const entry = want[file]
      assert.ok(entry !== undefined)
      for (const name of names) assert.ok(name in entry.xattrs, `${name} is in the source`)
      const keep = ([k]: [string, string]): boolean => !(names as readonly string[]).includes(k)
      entry.xattrs = Object.fromEntries(Object.entries(entry.xattrs).filter(keep))
    }
    assert.ok('security.capability' in (want['usr/bin/cap-tool']?.xattrs ?? {}))
    assert.deepEqual(await treeManifest(target), want)
    assert.ok((await allocatedBytes(join(target, SPARSE_FILE))) < SPARSE_SIZE / 10)
  })

  it('skips dot names below ./dev/ too', async () => {
    const dir = await fresh('dotdev')
    await mkdir(join(dir, 'dev/sub'), { recursive: true })
    await writeFile(join(dir, 'dev/.hidden'), 'x')
    await writeFile(join(dir, 'dev/sub/x'), 'x')
    await writeFile(join(dir, 'kept'), 'x')
    const img = join(await fresh('img'), 'a.sqfs')
    await createSquashfs({ directory: dir, output: img })
    const target = await fresh('target')
    await using mount = await mountSquashfs(img, await fresh('mnt'))
    await extractSquashfs({ image: img, mount: mount.path, target })
    assert.deepEqual((await readdir(target)).sort(), ['dev', 'kept'])
    assert.deepEqual(await readdir(join(target, 'dev')), [])
  })

  it('copies through the mount when a name makes the listing ambiguous, and says so', async () => {
    const dir = await fresh('newline')
    await writeFile(join(dir, 'a\nb'), 'x')
    const img = join(await fresh('img'), 'a.sqfs')
    await createSquashfs({ directory: dir, output: img })
    const target = await fresh('target')
    await using mount = await mountSquashfs(img, await fresh('mnt'))
    const r = await extractSquashfs({ image: img, mount: mount.path, target })
    assert.match(
      r.warnings[0] ?? '',
      /listing line "b" is ambiguous: copied the tree from the mount/,
    )
    assert.deepEqual(await readdir(target), ['a\nb'])
  })

  it('refuses a bad image, a bad target or mount, and touches nothing', async () => {
    const mnt = await fresh('mnt')
    await using mount = await mountSquashfs(image, mnt)
    const bogus = join(tmp.path, 'bogus.sqfs')
    await writeFile(bogus, randomBytes(64 * 1024))
    const target = await fresh('target')
    await assert.rejects(
      extractSquashfs({ image: bogus, mount: mount.path, target }),
      fails('ARCHIVE_INVALID'),
    )
    assert.deepEqual(await readdir(target), [])
    await writeFile(join(target, 'x'), 'precious')
    await assert.rejects(extractSquashfs({ image, mount: mount.path, target }), fails('USAGE'))
    assert.equal(await readFile(join(target, 'x'), 'utf8'), 'precious')
    const empty = await fresh('empty')
    const nope = join(tmp.path, 'nope')
    await assert.rejects(extractSquashfs({ image, mount: nope, target: empty }), fails('USAGE'))
    assert.deepEqual(await readdir(empty), [])
    const tools = await leftoverTools()
    assert.deepEqual(
      tools.filter((t) => t.comm !== 'squashfuse_ll'),
      [],
    )
  })

  it('abort kills unsquashfs', async () => {
    const big = await fresh('big')
    const fh = await open(join(big, 'random.bin'), 'w')
    for (let i = 0; i < 64; i++) await fh.write(randomBytes(1024 * 1024))
    await fh.close()
    const img = join(await fresh('img'), 'a.sqfs')
    await createSquashfs({ directory: big, output: img })
    const target = await fresh('target')
    {
      await using mount = await mountSquashfs(img, await fresh('mnt'))
      const ac = new AbortController()
      const job = extractSquashfs({ image: img, mount: mount.path, target, signal: ac.signal })
      for (let i = 0; i < 2000 && (await readdir(target)).length === 0; i++) await sleep(2)
      ac.abort()
      await assert.rejects(job, fails('ABORTED'))
    }
    assert.deepEqual(await leftoverTools(), [])
  })

  it(`mksquashfs runs with -mem ${MKSQUASHFS_MEM}`, async () => {
    const big = await fresh('big')
    const fh = await open(join(big, 'random.bin'), 'w')
    for (let i = 0; i < 64; i++) await fh.write(randomBytes(1024 * 1024))
    await fh.close()
    const ac = new AbortController()
    const output = join(tmp.path, 'mem.sqfs')
    const job = createSquashfs({ directory: big, output, signal: ac.signal })
    const state = { settled: false }
    void job.then(
      () => (state.settled = true),
      () => (state.settled = true),
    )
    // The children's command lines, read as cheaply as possible while mksquashfs runs.
    let args: string[] | undefined
    while (args === undefined && !state.settled) {
      for (const task of await readdir(`/proc/${process.pid}/task`)) {
        const kids = await readFile(`/proc/${process.pid}/task/${task}/children`, 'utf8')
        for (const pid of kids.split(' ').filter((p) => p !== '')) {
          const cmd = (await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '')).split('\0')
          if (cmd[0] === 'mksquashfs') args = cmd
        }
      }
    }
    ac.abort()
    await job.catch(() => undefined)
    assert.ok(args !== undefined, 'mksquashfs was seen')
    const i = args.indexOf('-mem')
    assert.ok(i > 0, String(args))
    assert.equal(args[i + 1], MKSQUASHFS_MEM)
  })
})
