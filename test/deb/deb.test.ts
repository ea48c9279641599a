import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const exec = promisify(execFile)
const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const EPOCH = 1767225600 // 2026-01-01T00:00:00Z
const MODULES = [
  'PVE/Storage/Custom/GuestBackupPlugin.pm',
  'PVE/BackupProvider/Plugin/GuestBackup.pm',
  'PVE/GuestBackup/Call.pm',
]

const hasDpkgDeb = await exec('dpkg-deb', ['--version']).then(
  () => true,
  () => false,
)

interface Entry {
  mode: string
  owner: string
  mtime: number
  path: string
}

// `make deb`'s script, run into a temp dir with placeholder Perl modules (never in the tree):
// structure only, not an install (see README "Installing the package").
describe('deb: scripts/build-deb.sh', { skip: hasDpkgDeb ? false : 'no dpkg-deb' }, () => {
  let dir: string
  let deb: string
  let entries: Entry[]
  const version = async (): Promise<string> =>
    (JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-deb-'))
    for (const pm of MODULES) {
      const file = join(dir, 'pve', pm)
      await mkdir(dirname(file), { recursive: true })
      const pkg = pm.replace(/\.pm$/, '').replaceAll('/', '::')
      await writeFile(file, `package ${pkg};\nuse strict;\n1;\n`)
    }
    await exec('bash', [join(ROOT, 'scripts/build-deb.sh'), '--out', join(dir, 'out')], {
      env: {
        ...process.env,
        GUESTBACKUP_PVE_DIR: join(dir, 'pve'),
        SOURCE_DATE_EPOCH: String(EPOCH),
        DEB_MAINTAINER: 'Test <test@example.org>',
      },
      maxBuffer: 16 << 20,
    })
    deb = join(dir, 'out', `guestbackup_${await version()}_all.deb`)
    // Full listing with numeric times: mode, owner, size, mtime, path.
    const { stdout } = await exec(
      'sh',
      ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -tv --numeric-owner --full-time -f -', 'sh', deb],
      { env: { ...process.env, TZ: 'UTC' }, maxBuffer: 16 << 20 },
    )
    entries = stdout
      .trim()
      .split('\n')
      .map((line) => {
        const [mode, owner, , day, time, ...rest] = line.split(/\s+/)
        return {
          mode: mode!,
          owner: owner!,
          mtime: Date.parse(`${day!}T${time!}Z`) / 1000,
          path: rest.join(' ').replace(/^\.\//, '/'),
        }
      })
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('holds the launcher, the bundled CLI, the production dependencies and the Perl modules', () => {
    const paths = new Set(entries.map((e) => e.path))
    for (const p of [
      '/usr/bin/guestbackup',
      '/usr/lib/guestbackup/package.json',
      '/usr/lib/guestbackup/dist/bundle/bin.js',
      '/usr/lib/guestbackup/node_modules/commander/package.json',
      '/usr/lib/guestbackup/node_modules/pino/package.json',
      '/usr/lib/guestbackup/node_modules/zod/package.json',
      '/usr/share/doc/guestbackup/copyright',
      '/usr/share/doc/guestbackup/changelog.gz',
      '/usr/share/man/man1/guestbackup.1.gz',
      '/usr/lib/systemd/system/guestbackup-job@.service',
      '/usr/lib/systemd/system/guestbackup-job@.timer',
      ...MODULES.map((pm) => `/usr/share/perl5/${pm}`),
    ]) {
      assert.ok(paths.has(p), `${p} missing`)
    }
    const dev = ['typescript', 'tsx', 'eslint', 'prettier', 'fast-check', '@types']
    for (const p of paths) {
      assert.ok(!dev.some((d) => p.startsWith(`/usr/lib/guestbackup/node_modules/${d}/`)), p)
      assert.doesNotMatch(p, /\.(d\.[cm]?ts|map|ts)$/, p)
      assert.ok(!p.startsWith('/usr/lib/guestbackup/src/'), p)
    }
  })

  it('is root:root with normalized modes and the SOURCE_DATE_EPOCH mtime', () => {
    for (const e of entries) {
      assert.equal(e.owner, '0/0', e.path)
      assert.equal(e.mtime, EPOCH, e.path)
      if (e.mode.startsWith('d')) assert.equal(e.mode, 'drwxr-xr-x', e.path)
      else assert.match(e.mode, /^-rw(-|x)r-(-|x)r-(-|x)$/, e.path)
    }
    const launcher = entries.find((e) => e.path === '/usr/bin/guestbackup')
    assert.equal(launcher?.mode, '-rwxr-xr-x')
  })

  it('declares its version, architecture and dependencies', async () => {
    const field = async (name: string): Promise<string> =>
      (await exec('dpkg-deb', ['-f', deb, name])).stdout.trim()
    assert.equal(await field('Package'), 'guestbackup')
    assert.equal(await field('Version'), await version())
    assert.equal(await field('Architecture'), 'all')
    const depends = (await field('Depends')).split(/,\s*/)
    for (const d of [
      'nodejs (>= 20.19)',
      'qemu-utils',
      'pve-qemu-kvm | qemu-system-common',
      'libnbd-bin',
      'squashfs-tools',
      'squashfuse',
      'fuse3',
      'zstd',
      'perl',
    ]) {
      assert.ok(depends.includes(d), `Depends lacks ${d}: ${depends.join(', ')}`)
    }
  })

  it('launches node on the installed CLI', async () => {
    const { stdout } = await exec('sh', [
      '-c',
      'dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/bin/guestbackup',
      'sh',
      deb,
    ])
    assert.match(
      stdout,
      /^exec \/usr\/bin\/node --max-semi-space-size=4 \/usr\/lib\/guestbackup\/dist\/bundle\/bin\.js "\$@"$/m,
    )
  })
})
