import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Dir, isPlainName, readInputFile } from '../../src/io/beneath.ts'
import { isBackupError } from '../../src/errors.ts'

const code = (c: string, why?: RegExp) => (e: unknown) => {
  assert.ok(isBackupError(e), String(e))
  assert.equal(e.code, c, e.message)
  if (why !== undefined) assert.match(e.message, why)
  return true
}

describe('io/beneath: directory handles that never follow links', () => {
  let base: string
  let outside: string
  let store: string
  let root: Dir
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'gb-beneath-'))
    outside = join(base, 'outside')
    store = join(base, 'store')
    await mkdir(outside)
    await mkdir(join(store, 'real'), { recursive: true })
    await writeFile(join(outside, 'secret'), 'SECRET')
    await writeFile(join(store, 'real', 'file'), 'hello')
    await symlink(outside, join(store, 'linkdir'))
    await symlink(join(outside, 'secret'), join(store, 'real', 'linkfile'))
    await symlink(join(outside, 'nothing'), join(store, 'real', 'dangling'))
    execFileSync('mkfifo', [join(store, 'real', 'fifo')])
    execFileSync('mknod', [join(store, 'real', 'null'), 'c', '1', '3'])
    root = await Dir.open(store)
  })
  after(async () => {
    await root.close()
    await rm(base, { recursive: true, force: true })
  })

  it('accepts only plain names', () => {
    for (const bad of ['', '.', '..', 'a/b', '/x', 'a\0b', 'x'.repeat(256)]) {
      assert.equal(isPlainName(bad), false, bad)
      assert.throws(() => root.at(bad), code('UNSAFE_PATH', /plain file name/))
    }
    assert.equal(isPlainName('.lock'), true)
  })

  it('opens real directories and refuses a symlinked one', async () => {
    await using real = await root.openDir('real')
    assert.equal(await real.readFile('file', 100), 'hello')
    await assert.rejects(root.openDir('linkdir'), code('UNSAFE_PATH', /symbolic link/))
    await assert.rejects(root.openDir('nope'), code('NOT_FOUND'))
    assert.equal(await root.tryOpenDir('nope'), undefined)
  })

  it('refuses links, FIFOs and device nodes as files, at once', async () => {
    await using real = await root.openDir('real')
    await assert.rejects(real.readFile('linkfile', 100), code('UNSAFE_PATH', /symbolic link/))
    await assert.rejects(real.readFile('dangling', 100), code('UNSAFE_PATH', /symbolic link/))
    await assert.rejects(real.readFile('fifo', 100), code('UNSAFE_PATH', /FIFO/))
    await assert.rejects(real.readFile('null', 100), code('UNSAFE_PATH', /device node/))
    await assert.rejects(real.openDir('file'), code('UNSAFE_PATH', /regular file, not a directory/))
  })

  it('refuses to cross a mount point (/proc is another file system than /)', async () => {
    await using top = await Dir.open('/')
    await assert.rejects(top.openDir('proc'), code('UNSAFE_PATH', /mount point/))
  })

  it('bounds what it reads', async () => {
    await using real = await root.openDir('real')
    await assert.rejects(real.readFile('file', 4), code('UNSAFE_PATH', /larger than 4 bytes/))
  })

  it('replaces a planted link on atomic writes instead of writing through it', async () => {
    await using real = await root.openDir('real')
    await symlink(join(outside, 'secret'), join(store, 'real', 'target'))
    await real.writeFileAtomic('target', 'mine')
    assert.equal(await readFile(join(outside, 'secret'), 'utf8'), 'SECRET')
    assert.equal((await lstat(join(store, 'real', 'target'))).isFile(), true)
    assert.equal(await readFile(join(store, 'real', 'target'), 'utf8'), 'mine')
  })

  it('creates files exclusively: a dangling link is not created through', async () => {
    await using real = await root.openDir('real')
    await assert.rejects(real.createFile('dangling'), { code: 'EEXIST' })
    await assert.rejects(lstat(join(outside, 'nothing')), { code: 'ENOENT' })
    await assert.rejects(real.copyIn(join(store, 'real', 'file'), 'linkfile'), { code: 'EEXIST' })
    assert.equal(await readFile(join(outside, 'secret'), 'utf8'), 'SECRET')
  })

  it('removes trees without following links inside them', async () => {
    await mkdir(join(store, 'doomed', 'sub'), { recursive: true })
    await symlink(outside, join(store, 'doomed', 'sub', 'out'))
    await symlink(join(outside, 'secret'), join(store, 'doomed', 'secret'))
    assert.equal(await root.removeTree('doomed'), true)
    assert.equal(await readFile(join(outside, 'secret'), 'utf8'), 'SECRET')
    assert.equal(await root.removeTree('doomed'), false)
    // A link as the tree itself: only the link goes.
    await symlink(outside, join(store, 'doomed2'))
    assert.equal(await root.removeTree('doomed2'), true)
    assert.equal(await readFile(join(outside, 'secret'), 'utf8'), 'SECRET')
  })

  it('reports a missing file to pin as NOT_FOUND', async () => {
    await using real = await root.openDir('real')
    await assert.rejects(real.pin('missing'), code('NOT_FOUND', /missing does not exist/))
  })

  it('pins a file so children reach exactly it, whatever the name becomes', async () => {
    await using real = await root.openDir('real')
    await using pin = await real.pin('file')
    assert.match(pin.path, /^\/proc\/\d+\/fd\/\d+$/)
    await real.rename('file', 'moved')
    await symlink(join(outside, 'secret'), join(store, 'real', 'file'))
    assert.equal(execFileSync('cat', [pin.path]).toString(), 'hello')
    assert.equal(await readlink(join(store, 'real', 'file')), join(outside, 'secret'))
  })
})

describe('io/beneath: readInputFile (configs given on the command line)', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-input-'))
    await writeFile(join(dir, 'ok.conf'), 'name: x\n')
    execFileSync('mkfifo', [join(dir, 'fifo')])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('reads a regular file', async () => {
    assert.equal(await readInputFile(join(dir, 'ok.conf'), 'config', 100), 'name: x\n')
  })

  it('refuses what is not a regular config file, without blocking', async () => {
    const t0 = Date.now()
    await assert.rejects(readInputFile(join(dir, 'fifo'), 'config', 100), code('USAGE', /FIFO/))
    await assert.rejects(readInputFile('/dev/zero', 'config', 100), code('USAGE', /device node/))
    await assert.rejects(readInputFile(dir, 'config', 100), code('USAGE', /a directory/))
    await assert.rejects(
      readInputFile('/proc/self/environ', 'config', 1 << 20),
      code('USAGE', /pseudo-file/),
    )
    await assert.rejects(
      readInputFile(join(dir, 'ok.conf'), 'config', 3),
      code('USAGE', /^config \S+ok\.conf is larger than 3 bytes$/),
    )
    await assert.rejects(
      readInputFile(join(dir, 'none'), 'config', 3),
      code('USAGE', /cannot read/),
    )
    assert.ok(Date.now() - t0 < 5000)
  })
})
