/**
 * Every long operation reports progress: without a terminal each ends with vzdump's 100 % line
 * and its `transferred` total on stderr (the terminal line is test/cli/progress/terminal.test.ts).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../../src/io/spawn.ts'
import { backupArgs, runCliInProcessOk } from '../../helpers/cli.ts'

const MiB = 1024 * 1024

/** stderr ends a job with the 100 % status line over `of` and the transferred total. */
const assertFinished = (stderr: string, of: RegExp): void => {
  const m = /^INFO: 100% \(([\d.]+ \S+) of ([\d.]+ \S+)\) in \d+s, read: .*$/m.exec(stderr)
  assert.ok(m !== null, stderr)
  assert.match(m[2] ?? '', of, stderr)
  assert.match(stderr, /^INFO: transferred [\d.]+ \S+ in /m)
}

const volumeOf = (stdout: string): string => /^\S+:(backup\/\S+)/.exec(stdout)?.[1] ?? ''

describe('cli progress: container archives, restores and merges', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-progress-ops-'))
    await mkdir(join(dir, 'root', 'data'), { recursive: true })
    await writeFile(join(dir, 'root', 'data', 'a'), Buffer.alloc(6 * MiB, 1))
    await writeFile(join(dir, 'root', 'data', 'b'), Buffer.alloc(2 * MiB, 2))
    await writeFile(join(dir, 'ct.conf'), 'hostname: t\n')
    await writeFile(join(dir, 'vm.conf'), 'memory: 512\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  for (const mode of ['tar', 'squashfs'] as const) {
    it(`shows a ${mode} container backup and its restore`, async () => {
      const store = join(dir, `store-${mode}`)
      // Uncompressed: a compressed archive's restore counts the bytes of its file.
      await runCliInProcessOk(['init', store, '--lxc-backup-mode', mode, '--lxc-compress', 'none'])
      const b = await runCliInProcessOk(
        backupArgs(store, 200, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root')),
      )
      // The total is the tree's: 8 MiB of files and their headers.
      assertFinished(b.stderr, /^8\.\d MiB$/)
      const r = await runCliInProcessOk([
        ...['restore', volumeOf(b.stdout), '--store', store],
        ...['--target', join(dir, `restored-${mode}`)],
      ])
      assertFinished(r.stderr, /^8\.\d MiB$/)
    })
  }

  it('shows a tar.zst restore by the bytes of its file', async () => {
    const store = join(dir, 'store-zst')
    await runCliInProcessOk(['init', store])
    const b = await runCliInProcessOk(
      backupArgs(store, 200, join(dir, 'ct.conf'), '--rootfs', join(dir, 'root')),
    )
    const r = await runCliInProcessOk([
      ...['restore', volumeOf(b.stdout), '--store', store],
      ...['--target', join(dir, 'restored-zst')],
    ])
    // 8 MiB of repeated bytes: the archive file is a few hundred bytes.
    assertFinished(r.stderr, /^\d+\.\d B$/)
  })

  it('shows the merge of a removed backup into its dependant', async () => {
    const store = join(dir, 'store-vm')
    const disk = join(dir, 'disk.qcow2')
    await runCliInProcessOk([
      'init',
      store,
      '--vm-compress',
      'none',
      '--vm-backup-mode',
      'incremental',
    ])
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(64 * MiB)])
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 8M', disk])
    const vm = [...backupArgs(store, 100, join(dir, 'vm.conf')), '--disk', `scsi0=${disk}`]
    const first = await runCliInProcessOk(vm)
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 0 4M', disk])
    const second = await runCliInProcessOk(vm)
    assert.match(second.stderr, /^INFO: backup was done incrementally, reused 60\.00 MiB \(93%\)$/m)
    const rm1 = await runCliInProcessOk(['remove', volumeOf(first.stdout), '--store', store])
    // The dependant's 4 MiB of data, with its qcow2 metadata.
    assertFinished(rm1.stderr, /^4\.\d MiB$/)
  })
})
