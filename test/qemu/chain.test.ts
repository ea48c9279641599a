import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Dir } from '../../src/io/beneath.ts'
import {
  chainJson,
  chainSpec,
  MAX_CHAIN_DEPTH,
  openChain,
  readOnlyChainSpec,
  restoreSourceJson,
} from '../../src/qemu/chain.ts'
import { convertImage } from '../../src/qemu/img.ts'
import { isBackupError } from '../../src/errors.ts'

const sh = promisify(execFile)
const img = (args: string[], cwd: string) => sh('qemu-img', args, { cwd })
/** `qemu-img create -u -b BACKING -F FMT NAME SIZE` in `cwd` (header only, nothing opened). */
const overlay = (cwd: string, name: string, backing: string, fmt = 'qcow2', size = '1M') =>
  img(['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', fmt, name, size], cwd)

const DIRS = /^b[a-z0-9-]+$/

// Hostile images (see QEMU's docs/system/images.rst on untrusted images): each must be refused,
// by the rule named in `details.rule`, before QEMU opens anything as a chain.
describe('qemu/chain: untrusted qcow2 chains', () => {
  let root: string
  let top: Dir
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'gb-chain-'))
    for (const d of ['outside', 'b-base', 'b-inc']) await mkdir(join(root, d))
    await writeFile(join(root, 'outside', 'secret.txt'), 'TOP SECRET'.repeat(100))
    await img(['create', '-q', '-f', 'qcow2', 'secret.qcow2', '1M'], join(root, 'outside'))
    const base = join(root, 'b-base')
    await img(['create', '-q', '-f', 'qcow2', 'd.qcow2', '1M'], base)
    await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', join(base, 'd.qcow2')])
    await overlay(join(root, 'b-inc'), 'd.qcow2', '../b-base/d.qcow2')
    await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 64k 64k', join(root, 'b-inc/d.qcow2')])
    top = await Dir.open(root)
  })
  after(async () => {
    await top.close()
    await rm(root, { recursive: true, force: true })
  })

  /** A fresh backup-like directory `b-<name>` holding `d.qcow2` made by `make`. */
  const hostile = async (name: string, make: (dir: string) => Promise<unknown>) => {
    const dir = join(root, `b-${name}`)
    await mkdir(dir)
    await make(dir)
    return `b-${name}`
  }
  const refused = async (dirName: string, code: string, rule?: string): Promise<void> => {
    await assert.rejects(openChain(top, dirName, 'd.qcow2', { dirName: DIRS }), (e: unknown) => {
      assert.ok(isBackupError(e), String(e))
      assert.equal(e.code, code, e.message)
      if (rule !== undefined) assert.equal(e.details?.['rule'], rule, e.message)
      return true
    })
  }

  it('accepts a chain of sibling dirs and restores it through the pinned spec', async () => {
    await using chain = await openChain(top, 'b-inc', 'd.qcow2', { dirName: DIRS })
    assert.deepEqual(
      chain.links.map((l) => [l.dirName, l.backing]),
      [
        ['b-inc', '../b-base/d.qcow2'],
        ['b-base', undefined],
      ],
    )
    // The spec names the pinned files, not the paths: a rename after validation changes nothing.
    await rename(join(root, 'b-base'), join(root, 'b-moved'))
    const out = join(root, 'out.raw')
    try {
      await convertImage(chainJson(chain.links), out, {
        sourceFormat: 'qcow2',
        targetFormat: 'raw',
      })
    } finally {
      await rename(join(root, 'b-moved'), join(root, 'b-base'))
    }
    const { stdout } = await sh('qemu-io', [
      ...['-f', 'raw', '-c', 'read -P 0x11 0 64k', '-c', 'read -P 0x22 64k 64k', out],
    ])
    assert.doesNotMatch(stdout, /fail/i)
  })

  it('reports an abort as such, not as an unreadable image', async () => {
    await assert.rejects(
      openChain(top, 'b-inc', 'd.qcow2', { dirName: DIRS, signal: AbortSignal.abort() }),
      (e: unknown) => isBackupError(e, 'ABORTED'),
    )
  })

  it('refuses an absolute backing path', async () => {
    const d = await hostile('abs', (dir) =>
      overlay(dir, 'd.qcow2', join(root, 'outside/secret.qcow2')),
    )
    await refused(d, 'UNSAFE_IMAGE', 'backing-name')
  })

  it('refuses a backing in the same directory (not the layout)', async () => {
    const d = await hostile('same', async (dir) => {
      await img(['create', '-q', '-f', 'qcow2', 'other.qcow2', '1M'], dir)
      await overlay(dir, 'd.qcow2', 'other.qcow2')
    })
    await refused(d, 'UNSAFE_IMAGE', 'backing-name')
  })

  it('refuses a ../ backing into a directory that is no backup', async () => {
    const d = await hostile('dotdot', (dir) => overlay(dir, 'd.qcow2', '../outside/secret.qcow2'))
    await refused(d, 'UNSAFE_IMAGE', 'outside')
  })

  it('refuses a deeper ../../ backing', async () => {
    const d = await hostile('deep', (dir) =>
      overlay(dir, 'd.qcow2', '../../x/b-base/d.qcow2', 'qcow2'),
    )
    await refused(d, 'UNSAFE_IMAGE', 'backing-name')
  })

  it('refuses a json: backing', async () => {
    const spec = `json:{"driver":"raw","file":{"driver":"file","filename":"${join(root, 'outside/secret.txt')}"}}`
    const d = await hostile('json', (dir) => overlay(dir, 'd.qcow2', spec, 'raw'))
    await refused(d, 'UNSAFE_IMAGE', 'protocol')
  })

  it('refuses an nbd: backing', async () => {
    const d = await hostile('nbd', (dir) =>
      overlay(dir, 'd.qcow2', 'nbd+unix:///?socket=/tmp/evil.sock', 'raw'),
    )
    await refused(d, 'UNSAFE_IMAGE', 'protocol')
  })

  it('refuses a symlinked image, even one pointing to a valid image', async () => {
    const d = await hostile('symfile', (dir) =>
      symlink(join(root, 'outside/secret.qcow2'), join(dir, 'd.qcow2')),
    )
    await refused(d, 'UNSAFE_PATH')
  })

  it('refuses a symlinked backing directory', async () => {
    await symlink(join(root, 'outside'), join(root, 'b-linkdir'))
    await rename(join(root, 'outside/secret.qcow2'), join(root, 'outside/d.qcow2'))
    try {
      const d = await hostile('vialink', (dir) => overlay(dir, 'd.qcow2', '../b-linkdir/d.qcow2'))
      await refused(d, 'UNSAFE_PATH')
    } finally {
      await rename(join(root, 'outside/d.qcow2'), join(root, 'outside/secret.qcow2'))
    }
  })

  it('refuses a FIFO posing as an image without blocking', async () => {
    const d = await hostile('fifo', (dir) => sh('mkfifo', [join(dir, 'd.qcow2')]))
    await refused(d, 'UNSAFE_PATH')
  })

  it('refuses a backing file without backing format (would be probed)', async () => {
    const d = await hostile('probe', async (dir) => {
      await writeFile(join(dir, 'guest.raw'), Buffer.alloc(1024 * 1024))
      await overlay(dir, 'd.qcow2', '../b-base/d.qcow2')
      // qemu-img no longer writes such images: hide the backing-format header extension
      // (type 0xe2792aca) behind an unknown type, which QEMU ignores.
      const file = join(dir, 'd.qcow2')
      const bytes = await readFile(file)
      const at = bytes.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]))
      assert.ok(at > 0 && at < 4096)
      bytes.writeUInt32BE(0x12345678, at)
      await writeFile(file, bytes)
      const { stdout } = await img(['info', '--output=json', '-f', 'qcow2', file], dir)
      assert.doesNotMatch(stdout, /backing-filename-format/)
    })
    await refused(d, 'UNSAFE_IMAGE', 'backing-format')
  })

  it('refuses an external data file', async () => {
    const d = await hostile('data', (dir) =>
      img(
        [
          ...['create', '-q', '-f', 'qcow2', '-o'],
          `data_file=${join(root, 'outside/secret.txt')},data_file_raw=on`,
          ...['d.qcow2', '1M'],
        ],
        dir,
      ),
    )
    await refused(d, 'UNSAFE_IMAGE', 'data-file')
  })

  it('refuses a loop', async () => {
    await mkdir(join(root, 'b-loop1'))
    await mkdir(join(root, 'b-loop2'))
    await overlay(join(root, 'b-loop1'), 'd.qcow2', '../b-loop2/d.qcow2')
    await overlay(join(root, 'b-loop2'), 'd.qcow2', '../b-loop1/d.qcow2')
    await refused('b-loop1', 'UNSAFE_IMAGE', 'loop')
  })

  it('refuses a raw file posing as the top image', async () => {
    const d = await hostile('notqcow', (dir) => writeFile(join(dir, 'd.qcow2'), 'hello'))
    await refused(d, 'UNSAFE_IMAGE', 'unreadable')
  })

  it('refuses a chain whose virtual sizes differ', async () => {
    const d = await hostile('big', (dir) =>
      overlay(dir, 'd.qcow2', '../b-base/d.qcow2', 'qcow2', '2M'),
    )
    await refused(d, 'UNSAFE_IMAGE', 'size')
  })

  it('refuses a backing name that is not a plain file name', async () => {
    const d = await hostile('dotname', (dir) => overlay(dir, 'd.qcow2', '../b-base/..'))
    await refused(d, 'UNSAFE_IMAGE', 'name')
  })

  it(`refuses a chain deeper than ${MAX_CHAIN_DEPTH}`, async () => {
    // b-d0 is a base; b-d<i> builds on b-d<i-1>: a chain one longer than the limit.
    await mkdir(join(root, 'b-d0'))
    await img(['create', '-q', '-f', 'qcow2', 'd.qcow2', '1M'], join(root, 'b-d0'))
    for (let i = 1; i <= MAX_CHAIN_DEPTH; i++) {
      await mkdir(join(root, `b-d${i}`))
      await overlay(join(root, `b-d${i}`), 'd.qcow2', `../b-d${i - 1}/d.qcow2`)
    }
    await refused(`b-d${MAX_CHAIN_DEPTH}`, 'UNSAFE_IMAGE', 'depth')
    // One shorter is accepted.
    await using ok = await openChain(top, `b-d${MAX_CHAIN_DEPTH - 1}`, 'd.qcow2', { dirName: DIRS })
    assert.equal(ok.links.length, MAX_CHAIN_DEPTH)
  })

  it('reports a missing backing image as such', async () => {
    const d = await hostile('missing', (dir) => overlay(dir, 'd.qcow2', '../b-gone/d.qcow2'))
    await refused(d, 'IMAGE_INVALID')
  })

  it('asks qemu-img once per unchanged image, again after a write', async () => {
    const base = await hostile('cache-base', (dir) =>
      img(['create', '-q', '-f', 'qcow2', 'd.qcow2', '1M'], dir),
    )
    const inc = await hostile('cache-inc', (dir) => overlay(dir, 'd.qcow2', `../${base}/d.qcow2`))
    // qemu-img is found through PATH (also by prlimit): a wrapper first in PATH logs each call.
    const bin = join(root, 'bin')
    const calls = join(root, 'qemu-img.calls')
    await mkdir(bin)
    await writeFile(
      join(bin, 'qemu-img'),
      `#!/bin/sh\necho "$*" >>'${calls}'\nexec /usr/bin/qemu-img "$@"\n`,
      { mode: 0o755 },
    )
    await writeFile(calls, '')
    const path = process.env['PATH']
    process.env['PATH'] = `${bin}:${path ?? ''}`
    const infos = async (): Promise<number> =>
      (await readFile(calls, 'utf8')).split('\n').filter((l) => l.startsWith('info ')).length
    try {
      const walk = async (): Promise<number> => {
        await using chain = await openChain(top, inc, 'd.qcow2', { dirName: DIRS })
        return chain.links.length
      }
      assert.equal(await walk(), 2)
      assert.equal(await infos(), 2)
      assert.equal(await walk(), 2)
      assert.equal(await infos(), 2, 'the second walk of an unchanged chain asked qemu-img again')
      // Set the base's corrupt bit (incompatible_features bit 1, the u64 at byte 72:
      // docs/interop/qcow2.txt): the changed file is asked again and refused.
      const f = join(root, base, 'd.qcow2')
      const head = await readFile(f)
      head[79] = (head[79] ?? 0) | 2
      await writeFile(f, head)
      await refused(inc, 'UNSAFE_IMAGE', 'corrupt')
      assert.equal(await infos(), 3)
    } finally {
      process.env['PATH'] = path
    }
  })

  it('a restore spec follows nothing from the headers: the base ends the chain, even over a header naming a backing', async () => {
    await using chain = await openChain(top, 'b-inc', 'd.qcow2', { dirName: DIRS })
    const [inc, base] = chain.links
    assert.ok(inc !== undefined && base !== undefined)
    // Only the top image, given as a base (backing null): its header's ../b-base is not opened.
    const alone = { driver: 'qcow2', file: { driver: 'file', filename: inc.path }, backing: null }
    const out = join(root, 'alone.raw')
    await convertImage(restoreSourceJson(alone), out, { sourceFormat: 'raw', targetFormat: 'raw' })
    const { stdout } = await sh('qemu-io', [
      ...['-f', 'raw', '-c', 'read -P 0 0 64k', '-c', 'read -P 0x22 64k 64k', out],
    ])
    assert.doesNotMatch(stdout, /Pattern verification failed/)
    // The whole chain, as the provider gives it.
    const whole = join(root, 'whole.raw')
    await convertImage(restoreSourceJson(chainSpec(chain.links)), whole, {
      sourceFormat: 'raw',
      targetFormat: 'raw',
    })
    const r = await sh('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 64k', whole])
    assert.doesNotMatch(r.stdout, /Pattern verification failed/)
  })

  it('a restore spec is refused unless every node is qcow2 over a file with backing given', () => {
    const file = { driver: 'file', filename: '/proc/1/fd/3' }
    const ok = { driver: 'qcow2', file, backing: { driver: 'qcow2', file, backing: null } }
    assert.deepEqual(readOnlyChainSpec(ok), {
      driver: 'qcow2',
      'read-only': true,
      file: { ...file, 'read-only': true },
      backing: {
        driver: 'qcow2',
        'read-only': true,
        file: { ...file, 'read-only': true },
        backing: null,
      },
    })
    const deep = (n: number): unknown =>
      n === 0 ? null : { driver: 'qcow2', file, backing: deep(n - 1) }
    assert.doesNotThrow(() => readOnlyChainSpec(deep(MAX_CHAIN_DEPTH)))
    const bad: [string, unknown, RegExp][] = [
      ['a data file', { ...ok, 'data-file': file }, /not a qcow2 image with file and backing/],
      ['backing left out', { driver: 'qcow2', file }, /not a qcow2 image with file and backing/],
      ['a raw node', { ...ok, driver: 'raw' }, /not a qcow2 image with file and backing/],
      ['a bad backing', { ...ok, backing: 'x.qcow2' }, /not a qcow2 image with file and backing/],
      ['an NBD file', { ...ok, file: { driver: 'nbd', path: '/s' } }, /not a plain file/],
      ['file options', { ...ok, file: { ...file, locking: 'off' } }, /not a plain file/],
      ['a relative name', { ...ok, file: { driver: 'file', filename: 'x' } }, /absolute path/],
      ['too deep', deep(MAX_CHAIN_DEPTH + 1), /deeper than/],
    ]
    for (const [what, spec, why] of bad) {
      assert.throws(
        () => readOnlyChainSpec(spec),
        (e: unknown) =>
          isBackupError(e, 'UNSAFE_IMAGE') && e.details?.['rule'] === 'spec' && why.test(e.message),
        what,
      )
    }
  })
})
