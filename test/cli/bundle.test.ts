import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { exec, execOk } from '../helpers/process-group.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** The relative chunks `file` imports statically (`import … from "./chunk-X.js"`). */
const staticImports = async (dir: string, file: string): Promise<string[]> => {
  const text = await readFile(join(dir, file), 'utf8')
  return [...text.matchAll(/^(?:import|} from) .*"\.\/([^"]+\.js)";$/gm)].map((m) => m[1] ?? '')
}

// The esbuild bundle bin/guestbackup prefers (scripts/bundle.ts), built into a temp dir laid out
// as a checkout (package.json two levels above the bundle, as the CLI reads its version there).
describe('cli: the esbuild bundle', () => {
  let dir: string
  let bundle: string
  let bin: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-bundle-'))
    bundle = join(dir, 'dist', 'bundle')
    await copyFile(join(ROOT, 'package.json'), join(dir, 'package.json'))
    await execOk(process.execPath, [
      '--import',
      'tsx',
      join(ROOT, 'scripts', 'bundle.ts'),
      '--outdir',
      bundle,
    ])
    bin = join(bundle, 'bin.js')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('runs a backup on its own: no node_modules, pino logging, hashing threads', async () => {
    // Nothing above the temp dir resolves packages: the bundle must carry commander, pino, zod.
    const work = join(dir, 'work')
    await mkdir(work)
    const disk = join(work, 'disk.raw')
    await writeFile(disk, Buffer.alloc(1024 * 1024, 7))
    await writeFile(join(work, 'vm.conf'), 'name: t\nscsi0: local:100/vm-100-disk-0.raw\n')
    const store = join(work, 'store')
    await execOk(process.execPath, [bin, 'init', store])
    const r = await exec(process.execPath, [
      ...[bin, '--log-json', '-v', 'backup', '--store', store, '--vmid', '100'],
      ...['--config', join(work, 'vm.conf'), '--disk', `scsi0=${disk}`, '--json'],
    ])
    assert.equal(r.code, 0, r.stderr)
    assert.equal((JSON.parse(r.stdout) as { status: string }).status, 'ok')
    const lines = r.stderr.trim().split('\n')
    assert.ok(
      lines.some((l) => l.includes('the stored image reads back to the digests')),
      r.stderr,
    )
    for (const l of lines) assert.equal(typeof (JSON.parse(l) as { msg: string }).msg, 'string')
  })

  it('starts --version and --help without any chunk a command loads', async () => {
    // Keep bin.js and what it imports statically; every chunk reached only through a command's
    // import() goes. Help and version must not need them (program.ts loads commands lazily).
    const keep = new Set(['bin.js'])
    for (let grew = true; grew;) {
      grew = false
      for (const f of [...keep]) {
        for (const c of await staticImports(bundle, f)) {
          if (!keep.has(c)) {
            keep.add(c)
            grew = true
          }
        }
      }
    }
    const all = await readdir(bundle)
    const lazy = all.filter((f) => !keep.has(f))
    // The commands, the store and QEMU code, pino and zod are chunks of their own.
    assert.ok(lazy.length >= 10, `only ${lazy.length} lazy chunks: ${lazy.join(' ')}`)
    for (const f of lazy) await rm(join(bundle, f))
    const version = await exec(process.execPath, [bin, '--version'])
    assert.deepEqual(
      [version.code, version.stdout],
      [
        0,
        `${(JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version}\n`,
      ],
    )
    const help = await exec(process.execPath, [bin, 'backup', '--help'])
    assert.equal(help.code, 0, help.stderr)
    assert.match(help.stdout, /--disk <name=path>/)
    // A command does need its chunks: proof that they were the lazy part.
    const list = await exec(process.execPath, [bin, 'list', '--store', dir])
    assert.equal(list.code, 1)
    assert.match(list.stderr, /Cannot find module|ERR_MODULE_NOT_FOUND/)
  })
})
