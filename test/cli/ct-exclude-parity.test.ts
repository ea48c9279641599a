import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { backupArgs, runCliInProcessOk } from '../helpers/cli.ts'
import { NOT_UTF8, buildParityTree } from '../archive/parity-tree.ts'

/** Paths under `dir` (byte strings), sorted. */
const files = (dir: string): string[] =>
  execFileSync('find', ['.', '-mindepth', '1', '-printf', '%P\\n'], {
    cwd: dir,
    encoding: 'latin1',
  })
    .split('\n')
    .filter((l) => l !== '')
    .sort()

describe('cli: --exclude-path restores the same files in tar and squashfs mode', () => {
  let dir: string
  let root: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-ct-excl-'))
    root = join(dir, 'root')
    await mkdir(root)
    await buildParityTree(root)
    await writeFile(join(dir, 'ct.conf'), 'arch: amd64\nhostname: t\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('with wildcards across /, unanchored names and the standard excludes', async () => {
    const restored: Record<string, string[]> = {}
    for (const mode of ['tar', 'squashfs'] as const) {
      const store = join(dir, `store-${mode}`)
      await runCliInProcessOk(['init', store, '--lxc-backup-mode', mode])
      const args = backupArgs(store, 210, join(dir, 'ct.conf'), '--rootfs', root, '--json')
      for (const e of ['var/*.log', 'cache', '/with space', '?.log']) args.push('--exclude-path', e)
      const { volid } = JSON.parse((await runCliInProcessOk(args)).stdout) as { volid: string }
      const target = join(dir, `restore-${mode}`)
      await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
      restored[mode] = files(join(target, 'rootfs'))
    }
    const tar = restored['tar'] ?? []
    assert.deepEqual(restored['squashfs'], tar)
    for (const gone of [
      'var/a/b.log',
      'a/b/c.log',
      'var/run/x.pid',
      'sub/cache',
      'with space',
      'tmp/keep',
      'x.log',
      NOT_UTF8,
    ]) {
      assert.ok(!tar.includes(gone), `${gone} excluded`)
    }
    for (const kept of ['usr/var/log/k', 'var/run/keep', 'tmp', 'keep'])
      assert.ok(tar.includes(kept), `${kept} kept`)
  })
})
