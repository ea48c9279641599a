import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { backupArgs, runCliInProcessOk } from '../helpers/cli.ts'

const sh = promisify(execFile)

// The fixed cost of an offline incremental: the child processes it starts per disk. Each QEMU
// tool is found through PATH (also by setpriv and prlimit), so wrappers first in PATH log them.
describe('host/guest-vm: child processes of an offline incremental', () => {
  let dir: string
  let calls: string
  let path: string | undefined
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-guest-vm-'))
    const bin = join(dir, 'bin')
    calls = join(dir, 'calls')
    await mkdir(bin)
    for (const tool of ['qemu-img', 'qemu-io', 'qemu-nbd']) {
      await writeFile(
        join(bin, tool),
        `#!/bin/sh\necho "${tool} $*" >>'${calls}'\nexec /usr/bin/${tool} "$@"\n`,
        { mode: 0o755 },
      )
    }
    path = process.env['PATH']
    process.env['PATH'] = `${bin}:${path ?? ''}`
  })
  after(async () => {
    process.env['PATH'] = path
    await rm(dir, { recursive: true, force: true })
  })

  it('reads each disk with one qemu-img info and each base image with one', async () => {
    const disk = join(dir, 'disk.qcow2')
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '8M'])
    const conf = join(dir, 'vm.conf')
    await writeFile(conf, 'name: t\nscsi0: local:100/vm-100-disk-0.qcow2,size=8M\n')
    const store = join(dir, 'store')
    await runCliInProcessOk(['init', store, '--vm-backup-mode', 'incremental'])
    const backup = backupArgs(store, 100, conf, '--disk', `scsi0=${disk}`)
    await runCliInProcessOk(backup)
    await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 64k', disk])
    await writeFile(calls, '')
    await runCliInProcessOk(backup)
    const lines = (await readFile(calls, 'utf8')).trim().split('\n')
    const list = await runCliInProcessOk(['list', '--store', store, '--json'])
    const [incr, full] = JSON.parse(list.stdout) as { volid: string; parent: string | null }[]
    assert.equal(incr?.parent, full?.volid, 'the second backup is an incremental')
    const infos = lines.filter((l) => l.startsWith('qemu-img info '))
    // The disk: format, size and bitmaps from one call (before: one for the size and one for
    // the bitmaps). The base chain (one image): validated once, its answer reused when the
    // backup opens it (before: once when choosing the base, again when opening it).
    assert.deepEqual(
      infos.map((l) =>
        l.endsWith(` ${disk}`) ? 'disk' : /\/proc\/\d+\/fd\/\d+$/.test(l) ? 'base' : l,
      ),
      ['disk', 'base'],
      lines.join('\n'),
    )
  })
})
