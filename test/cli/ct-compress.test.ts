import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FrameIndexSchema } from '../../src/archive/zstd-frames.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'
import { treeManifest } from '../helpers/tree.ts'

// Issue 12, done-when: `--compress zstd` archives are smaller than uncompressed ones on a
// realistic tree, restore identically, and `tar -I zstd -t` lists them.
describe('cli: compressed container archives (--compress, --zstd, lxc-compress)', () => {
  let dir: string
  let root: string
  let conf: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-ctz-'))
    root = join(dir, 'root')
    conf = join(dir, 'ct.conf')
    await writeFile(conf, 'arch: amd64\nhostname: z\n')
    // A realistic tree: text configs and logs (compressible), a little binary.
    for (let d = 0; d < 20; d++) {
      const sub = join(root, 'etc', `d${d}`)
      await mkdir(sub, { recursive: true })
      for (let f = 0; f < 20; f++) {
        const lines = Array.from({ length: 200 }, (_, i) => `key${i}=value ${d} ${f} ${i * 7}`)
        await writeFile(join(sub, `f${f}.conf`), `${lines.join('\n')}\n`)
      }
    }
    await mkdir(join(root, 'usr', 'bin'), { recursive: true })
    await writeFile(join(root, 'usr', 'bin', 'blob'), Buffer.alloc(3 << 20, 0x5a))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** Back up `root` into a new store with `args`; the backup dir and the archive's name. */
  const backup = async (
    name: string,
    initArgs: string[],
    args: string[],
  ): Promise<{ store: string; volid: string; bdir: string; archive: string }> => {
    const store = join(dir, `store-${name}`)
    await runCliInProcessOk(['init', store, ...initArgs])
    const b = await runCliInProcessOk([
      ...backupArgs(store, 120, conf),
      '--rootfs',
      root,
      ...args,
      '--json',
    ])
    const { volid } = JSON.parse(b.stdout) as { volid: string }
    const bdir = join(store, volid.replace(/^[^:]*:backup\//, ''))
    const archive = (await readdir(bdir)).find((f) => /^archive\.(tar|sqfs)/.test(f))
    assert.ok(archive !== undefined)
    return { store, volid, bdir, archive }
  }

  const restoresIdentically = async (store: string, volid: string, name: string): Promise<void> => {
    const target = join(dir, `restore-${name}`)
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    const want = await treeManifest(root)
    const got = await treeManifest(join(target, 'rootfs'))
    delete want['.']
    delete got['.']
    assert.deepEqual(got, want)
  }

  it('zstd (a new store default): smaller, seekable frames, listed by tar -I zstd, restores identically, verifies', async () => {
    const plain = await backup('none', ['--lxc-compress', 'none'], [])
    assert.equal(plain.archive, 'archive.tar')
    const z = await backup('zstd', [], ['--zstd', '2'])
    assert.equal(z.archive, 'archive.tar.zst')
    const plainSize = (await stat(join(plain.bdir, plain.archive))).size
    const zSize = (await stat(join(z.bdir, z.archive))).size
    assert.ok(zSize * 5 < plainSize, `zstd ${zSize} bytes, uncompressed ${plainSize}`)
    const listed = execFileSync('tar', ['-I', 'zstd', '-tf', join(z.bdir, z.archive)]).toString()
    assert.match(listed, /\.\/etc\/d19\/f19\.conf/)
    // The frame index is in the manifest's digests and sums up to the file.
    const m = JSON.parse(await readFile(join(z.bdir, 'manifest.json'), 'utf8')) as {
      container: { file: string; digest: { frames?: string } }
      digests: Record<string, string>
    }
    assert.equal(m.container.digest.frames, 'archive.frames')
    assert.ok(m.digests['archive.frames'])
    const index = FrameIndexSchema.parse(
      JSON.parse(await readFile(join(z.bdir, 'archive.frames'), 'utf8')),
    )
    assert.equal(
      index.frames.reduce((s, [c]) => s + c, 0),
      zSize,
    )
    // The ratio and time are reported in the task log.
    const log = await readFile(join(z.bdir, 'backup.log'), 'utf8')
    assert.match(
      log,
      /compressed [\d.]+ MiB to [\d.]+ MiB \(zstd, 2 threads\): ratio [\d.]+ in [\d.]+s/,
    )
    await restoresIdentically(z.store, z.volid, 'zstd')
    const v = await runCliInProcessOk(['verify', '--store', z.store, z.volid])
    assert.match(v.stdout, / ok /)
  })

  for (const [flag, file, listFlag] of [
    ['gzip', 'archive.tar.gz', '-z'],
    ['lzo', 'archive.tar.lzo', '--lzop'],
    ['1', 'archive.tar.lzo', '--lzop'],
    ['0', 'archive.tar', '-a'],
  ] as const) {
    it(`--compress ${flag}: ${file}, listed by tar ${listFlag}, restores identically`, async () => {
      const r = await backup(`c${flag}`, [], ['--compress', flag])
      assert.equal(r.archive, file)
      execFileSync('tar', [listFlag, '-tf', join(r.bdir, r.archive)])
      await restoresIdentically(r.store, r.volid, `c${flag}`)
      const v = await runCliInProcessOk(['verify', '--store', r.store, r.volid])
      assert.match(v.stdout, / ok /)
    })
  }

  it('a flipped byte in a compressed archive fails verify', async () => {
    const r = await backup('flip', [], ['--compress', 'zstd'])
    const path = join(r.bdir, r.archive)
    const data = await readFile(path)
    const at = Math.floor(data.length / 2)
    data[at] = (data[at] ?? 0) ^ 0xff
    await writeFile(path, data)
    const v = await runCliInProcess(['verify', '--store', r.store, r.volid])
    assert.equal(v.code, 1)
    assert.match(v.stdout, /FAILED/)
  })

  it('refuses bad values with one line and touches nothing', async () => {
    const store = join(dir, 'store-bad')
    await runCliInProcessOk(['init', store])
    const cases: [string[], RegExp][] = [
      [['--compress', 'bzip2'], /expected zstd, gzip, lzo, 0 \(none\) or 1 \(lzo\)/],
      [['--zstd', '-1'], /expected a thread count/],
      [['--compress', 'gzip', '--zstd', '2'], /--zstd applies to --compress zstd, not gzip/],
    ]
    for (const [args, re] of cases) {
      const r = await runCliInProcess([...backupArgs(store, 121, conf), '--rootfs', root, ...args])
      assert.equal(r.code, 2, r.stderr)
      assert.match(r.stderr, re)
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    }
    const vm = await runCliInProcess([
      ...backupArgs(store, 122, conf),
      '--disk',
      `scsi0=${join(dir, 'nothing.raw')}`,
      '--compress',
      'zstd',
    ])
    assert.equal(vm.code, 2)
    assert.match(vm.stderr, /--compress and --zstd apply to container backups/)
    assert.deepEqual(
      (await readdir(store)).filter((f) => /^\d+$/.test(f)),
      [],
      'no guest directory was made',
    )
  })
})
