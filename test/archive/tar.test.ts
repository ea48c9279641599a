import assert from 'node:assert/strict'
import { chmod, lstat, mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { checkTarArchive, createTarArchive, extractTarArchive } from '../../src/archive/index.ts'
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
  withoutPaths,
} from '../helpers/tree.ts'
import type { Manifest } from '../helpers/tree.ts'
import { craftTar } from './craft-tar.ts'
import type { CraftMember } from './craft-tar.ts'
import { leftoverTools } from './procs.ts'

const ZSTD = { type: 'zstd', threads: 2 } as const

const KiB = 1024
const MiB = 1024 * KiB

const fails = (code: ErrorCode) => (e: unknown) => isBackupError(e, code)

/** A bucket on a fake clock: records every wait instead of sleeping. */
const fakeBucket = (bytesPerSecond: number, burst: number) => {
  let clock = 0
  const waits: number[] = []
  const bucket = new TokenBucket({
    bytesPerSecond,
    burst,
    now: () => clock,
    sleep: (ms) => {
      waits.push(ms)
      clock += ms
      return Promise.resolve()
    },
  })
  return { bucket, slept: () => waits.reduce((a, b) => a + b, 0) }
}

describe('tar archives', () => {
  let tmp: TempDir
  let src: string
  let source: Manifest
  let n = 0
  const fresh = async (name: string): Promise<string> => {
    const p = join(tmp.path, `${name}-${n++}`)
    await mkdir(p)
    return p
  }
  /** What a restore must contain: the tree without excluded paths and without `./dev/*`. */
  const expected = (): Manifest => withoutPaths(source, [...TREE_EXCLUDED, 'dev/placeholder'])

  before(async () => {
    tmp = await makeTempDir('gb-tar-test-')
    src = join(tmp.path, 'src')
    await mkdir(src)
    await buildTree(src)
    source = await treeManifest(src)
    assert.ok((await allocatedBytes(join(src, SPARSE_FILE))) < SPARSE_SIZE / 10)
  })
  after(async () => {
    assert.deepEqual(await leftoverTools(), [])
    await tmp.remove()
  })

  it('archives a tree tar finishes at once, every time, with its member list', async () => {
    // tar may exit before its output is read: nothing of it may be lost (tar.ts relay).
    const tiny = await fresh('tiny')
    await writeFile(join(tiny, 'hostname'), 'ct\n')
    for (let i = 0; i < 20; i++) {
      const dir = await fresh('tiny-out')
      const r = await createTarArchive({
        directory: tiny,
        output: join(dir, 'a.tar'),
        members: join(dir, 'a.members'),
      })
      assert.equal(r.members?.count, 2, `round ${i}`)
      assert.equal((await stat(join(dir, 'a.tar'))).size, r.bytes)
    }
  })

  it('round-trips the tree: metadata, xattrs, ACLs, hardlinks, sparse files; excludes', async () => {
    const dir = await fresh('roundtrip')
    const output = join(dir, 'archive.tar')
    const r = await createTarArchive({ directory: src, excludes: TREE_EXCLUDES, output })
    assert.equal(r.bytes, (await stat(output)).size)
    assert.equal(r.tarBytes, r.bytes)
    assert.equal((await stat(output)).mode & 0o777, 0o600)
    assert.deepEqual(await readdir(dir), ['archive.tar'])
    assert.equal(r.warnings.length, 1)
    assert.match(r.warnings[0]!, /'cache\/' ends with '\/'/)

    const target = await fresh('target')
    const x = await extractTarArchive({ archive: output, target })
    assert.ok(x.members > 40)
    const restored = await treeManifest(target)
    assert.deepEqual(restored, expected())
    for (const p of [...TREE_EXCLUDED, 'dev/placeholder']) assert.equal(restored[p], undefined, p)
    assert.ok(restored['usr/var/log/kept.log'], 'unanchored /var/log kept usr/var/log')
    assert.ok(restored['var/cache/keep.bin'], "'cache/' matches nothing")
    assert.ok(restored['tmp'], '/tmp/* keeps /tmp itself')
    assert.ok((await allocatedBytes(join(target, SPARSE_FILE))) < SPARSE_SIZE / 10, 'sparse')
  })

  it('round-trips through zstd', async () => {
    const dir = await fresh('zstd')
    const output = join(dir, 'archive.tar.zst')
    const r = await createTarArchive({
      directory: src,
      excludes: TREE_EXCLUDES,
      output,
      compress: ZSTD,
    })
    assert.equal(r.bytes, (await stat(output)).size)
    assert.ok(r.bytes < r.tarBytes)
    const fh = await open(output)
    const magic = Buffer.alloc(4)
    await fh.read(magic, 0, 4, 0)
    await fh.close()
    assert.deepEqual([...magic], [0x28, 0xb5, 0x2f, 0xfd])
    const target = await fresh('target')
    await extractTarArchive({ archive: output, target })
    assert.deepEqual(await treeManifest(target), expected())
    assert.ok((await allocatedBytes(join(target, SPARSE_FILE))) < SPARSE_SIZE / 10, 'sparse')
  })

  it('archives only the given sources', async () => {
    const dir = await fresh('sources')
    const output = join(dir, 'archive.tar')
    await createTarArchive({ directory: src, sources: ['./etc', './home/user'], output })
    const target = await fresh('target')
    await extractTarArchive({ archive: output, target })
    const restored = await treeManifest(target)
    const inSources = (p: string) => /^(\.|etc|etc\/.*|home|home\/user|home\/user\/.*)$/.test(p)
    assert.deepEqual(
      Object.keys(restored).filter((p) => !inSources(p)),
      [],
    )
    assert.deepEqual(restored['etc/acl-file'], source['etc/acl-file'])
    assert.deepEqual(restored['home/user/notes.txt'], source['home/user/notes.txt'])
  })

  it('limits bandwidth on the uncompressed stream (fake clock)', async () => {
    const rate = MiB
    const burst = 256 * KiB
    const { bucket, slept } = fakeBucket(rate, burst)
    const dir = await fresh('bw')
    const output = join(dir, 'archive.tar.zst')
    const r = await createTarArchive({
      directory: src,
      output,
      bandwidth: bucket,
      compress: ZSTD,
    })
    assert.ok(r.tarBytes > 1.2 * MiB)
    const expectedMs = ((r.tarBytes - burst) / rate) * 1000
    assert.ok(Math.abs(slept() - expectedMs) < 1, `${slept()} ms vs ${expectedMs} ms`)

    const read = fakeBucket(64 * KiB, 64 * KiB)
    await extractTarArchive({
      archive: output,
      target: await fresh('target'),
      bandwidth: read.bucket,
    })
    // tar may stop reading at the end-of-archive marker, before the rest of its last record.
    const readMs = ((r.bytes - 64 * KiB) / (64 * KiB)) * 1000
    const record = (10 * KiB * 1000) / (64 * KiB)
    assert.ok(read.slept() > readMs - record - 1, `${read.slept()} ms vs ${readMs} ms`)
    assert.ok(read.slept() < readMs + 1, `${read.slept()} ms vs ${readMs} ms`)
  })

  it('fails with tar stderr and leaves no file when the directory does not exist', async () => {
    const dir = await fresh('fail')
    const output = join(dir, 'archive.tar')
    await assert.rejects(
      createTarArchive({ directory: join(dir, 'missing'), output, compress: ZSTD }),
      (e: unknown) => {
        assert.ok(isBackupError(e, 'ARCHIVE_TOOL_FAILED'))
        assert.match(e.message, /missing: Cannot open: No such file or directory/)
        assert.match(String(e.details?.['stderr']), /Cannot open/)
        return true
      },
    )
    assert.deepEqual(await readdir(dir), [])
  })

  it('treats tar exit code 1 (file changed as we read it) as a warning', async () => {
    const bin = await fresh('fakebin')
    const fake = join(bin, 'tar')
    const script =
      '#!/bin/sh\n/usr/bin/tar "$@" || exit $?\necho "tar: ./x: file changed as we read it" >&2\nexit 1\n'
    await writeFile(fake, script)
    await chmod(fake, 0o755)
    const path = process.env['PATH']
    process.env['PATH'] = `${bin}:${path ?? ''}`
    try {
      const dir = await fresh('exit1')
      const r = await createTarArchive({
        directory: src,
        sources: ['./etc'],
        output: join(dir, 'a.tar'),
      })
      assert.ok(r.warnings.includes('tar: ./x: file changed as we read it'))
      assert.ok(r.warnings.some((w) => w.includes('exit code 1')))
      assert.deepEqual(await readdir(dir), ['a.tar'])
    } finally {
      process.env['PATH'] = path
    }
  })

  it('abort kills tar and zstd and leaves no partial file', async () => {
    const ac = new AbortController()
    const bucket = new TokenBucket({
      bytesPerSecond: 64 * KiB,
      burst: 64 * KiB,
      sleep: (ms, signal) => {
        ac.abort() // abort at the first throttled chunk: tar is still running
        return sleep(ms, undefined, { signal })
      },
    })
    const dir = await fresh('abort')
    const output = join(dir, 'archive.tar.zst')
    const job = createTarArchive({
      directory: src,
      output,
      bandwidth: bucket,
      compress: ZSTD,
      signal: ac.signal,
    })
    await assert.rejects(job, fails('ABORTED'))
    assert.deepEqual(await readdir(dir), [])
    assert.deepEqual(await leftoverTools(), [])
    await assert.rejects(
      createTarArchive({ directory: src, output, signal: AbortSignal.abort() }),
      fails('ABORTED'),
    )
  })

  it('abort during extraction kills tar and the decompressor', async () => {
    const dir = await fresh('abort-x')
    const archive = join(dir, 'archive.tar.zst')
    await createTarArchive({ directory: src, output: archive, compress: ZSTD })
    const ac = new AbortController()
    const bucket = new TokenBucket({
      bytesPerSecond: 16 * KiB,
      burst: 16 * KiB,
      sleep: (ms, signal) => {
        ac.abort()
        return sleep(ms, undefined, { signal })
      },
    })
    const target = await fresh('target')
    await assert.rejects(
      extractTarArchive({ archive, target, bandwidth: bucket, signal: ac.signal }),
      fails('ABORTED'),
    )
    assert.deepEqual(await leftoverTools(), [])
  })

  it('refuses bad arguments before running anything', async () => {
    const dir = await fresh('usage')
    const output = join(dir, 'a.tar')
    for (const sources of [[], [''], ['/etc'], ['../x'], ['./a/../..']]) {
      await assert.rejects(createTarArchive({ directory: src, sources, output }), fails('USAGE'))
    }
    await assert.rejects(
      createTarArchive({ directory: src, excludes: [''], output }),
      fails('USAGE'),
    )
    await writeFile(output, 'precious')
    await assert.rejects(createTarArchive({ directory: src, output }), fails('USAGE'))
    assert.equal(await readFile(output, 'utf8'), 'precious')
    assert.deepEqual(await readdir(dir), ['a.tar'])
  })

  it('extracts only into an existing, empty directory and touches nothing otherwise', async () => {
    const dir = await fresh('nonempty')
    const archive = join(dir, 'a.tar')
    await createTarArchive({ directory: src, sources: ['./etc'], output: archive })
    const target = await fresh('target')
    await writeFile(join(target, 'keep'), 'keep')
    await assert.rejects(extractTarArchive({ archive, target }), fails('USAGE'))
    assert.deepEqual(await readdir(target), ['keep'])
    await assert.rejects(extractTarArchive({ archive, target: join(dir, 'nope') }), fails('USAGE'))
    await assert.rejects(extractTarArchive({ archive, target: archive }), fails('USAGE'))
    await assert.rejects(
      extractTarArchive({ archive: join(dir, 'a.zip'), target: await fresh('t') }),
      fails('USAGE'),
    )
    await assert.rejects(extractTarArchive({ archive: dir + '/x.tar', target }), fails('USAGE'))
    assert.equal((await checkTarArchive(archive)).members, 4)
  })
})

describe('hostile and bogus archives', () => {
  let tmp: TempDir
  let n = 0
  before(async () => {
    tmp = await makeTempDir('gb-tar-hostile-')
  })
  after(async () => {
    assert.deepEqual(await leftoverTools(), [])
    await tmp.remove()
  })

  /** Write the crafted archive next to an empty `target`; returns the paths. */
  const setup = async (members: readonly CraftMember[] | Buffer) => {
    const base = join(tmp.path, `case-${n++}`)
    const target = join(base, 'target')
    await mkdir(target, { recursive: true })
    const archive = join(tmp.path, `case-${n}.tar`)
    await writeFile(archive, Buffer.isBuffer(members) ? members : craftTar(members))
    return { base, target, archive }
  }

  it('does not write `../` members outside the target', async () => {
    const { base, target, archive } = await setup([
      { name: 'ok', data: 'fine' },
      { name: '../evil', data: 'evil' },
      { name: 'a/../../evil2', data: 'evil' },
    ])
    await assert.rejects(extractTarArchive({ archive, target }), (e: unknown) => {
      assert.ok(isBackupError(e, 'ARCHIVE_TOOL_FAILED'))
      assert.match(e.message, /Member name contains '\.\.'/)
      return true
    })
    assert.deepEqual(await readdir(base), ['target'])
  })

  it('strips leading `/` so absolute members land inside the target', async () => {
    const { base, target, archive } = await setup([{ name: `${tmp.path}/abs-evil`, data: 'x' }])
    const r = await extractTarArchive({ archive, target })
    assert.ok(r.warnings.some((w) => w.includes("Removing leading `/'")))
    await assert.rejects(lstat(join(tmp.path, 'abs-evil')))
    assert.equal(await readFile(join(target, tmp.path, 'abs-evil'), 'utf8'), 'x')
    assert.deepEqual(await readdir(base), ['target'])
  })

  it('does not follow archived symlinks or hardlinks out of the target', async () => {
    const outside = join(tmp.path, 'outside')
    await mkdir(outside)
    await writeFile(join(outside, 'secret'), 'secret')
    const { target, archive } = await setup([
      { name: 'escape', type: '2', linkname: outside },
      { name: 'escape/pwned', data: 'pwned' },
      { name: 'up', type: '2', linkname: '..' },
      { name: 'up/pwned2', data: 'pwned' },
      { name: 'hl', type: '1', linkname: join(outside, 'secret') },
    ])
    await assert.rejects(extractTarArchive({ archive, target }), fails('ARCHIVE_TOOL_FAILED'))
    assert.deepEqual(await readdir(outside), ['secret'])
    assert.equal((await stat(join(outside, 'secret'))).nlink, 1)
    assert.deepEqual(await readdir(join(target, '..')), ['target'])
  })

  it('does not create anything below ./dev/', async () => {
    const { target, archive } = await setup([
      { name: './', type: '5' },
      { name: './dev/', type: '5' },
      { name: './dev/evil', data: 'x' },
      { name: './etc', data: 'y' },
    ])
    await extractTarArchive({ archive, target })
    assert.deepEqual((await readdir(target)).sort(), ['dev', 'etc'])
    assert.deepEqual(await readdir(join(target, 'dev')), [])
  })

  it('rejects multi-volume members before extracting', async () => {
    const { target, archive } = await setup([
      { name: 'ok', data: 'fine' },
      { name: 'continued', type: 'M', data: 'rest of a file' },
    ])
    await assert.rejects(extractTarArchive({ archive, target }), (e: unknown) => {
      assert.ok(isBackupError(e, 'ARCHIVE_INVALID'))
      assert.match(e.message, /multi-volume/)
      return true
    })
    assert.deepEqual(await readdir(target), [])
  })

  it('tolerates data after the end-of-archive marker, where tar stops reading', async () => {
    const tail = Buffer.alloc(1024 * KiB, 'x')
    const { target, archive } = await setup(
      Buffer.concat([craftTar([{ name: 'a', data: 'a' }]), tail]),
    )
    assert.equal((await extractTarArchive({ archive, target })).members, 1)
    assert.equal(await readFile(join(target, 'a'), 'utf8'), 'a')
  })

  it('rejects empty and garbage archives', async () => {
    for (const bytes of [craftTar([]), Buffer.alloc(0), Buffer.alloc(10 * KiB, 'garbage')]) {
      const { target, archive } = await setup(bytes)
      await assert.rejects(extractTarArchive({ archive, target }), fails('ARCHIVE_INVALID'))
      assert.deepEqual(await readdir(target), [])
    }
  })
})
