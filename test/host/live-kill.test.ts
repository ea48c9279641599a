import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import type { ChildProcessByStdio } from 'node:child_process'
import type { Readable } from 'node:stream'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initStore, openStore } from '../../src/provider/directory/store.ts'
import type { DirectoryStorage } from '../../src/provider/directory/storage.ts'
import { QmpClient } from '../../src/qmp/index.ts'
import { createImage } from '../../src/qemu/img.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'
import { liveBackup, restoreMatches } from '../helpers/live.ts'
import { backupArgs } from '../helpers/cli.ts'

const MiB = 1024 * 1024

describe('host/live: the backup process killed at random moments', () => {
  let dir: string
  let vm: TestVm
  let storage: DirectoryStorage
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-kill-'))
    await mkdir(join(dir, 'vm'))
    await createImage(join(dir, 'd.qcow2'), { format: 'qcow2', size: 256 * MiB })
    vm = await startVm({
      disks: [{ path: join(dir, 'd.qcow2'), format: 'qcow2', id: 'scsi0' }],
      dir: join(dir, 'vm'),
    })
    await vm.guestIo('scsi0', 'write -P 0x31 0 128M')
    await initStore(join(dir, 'store'), { 'vm-backup-mode': 'incremental' }, 'k')
    storage = await openStore(join(dir, 'store'))
    await writeFile(join(dir, 'vm.conf'), 'name: k\n')
  })
  after(async () => {
    await vm.stop()
    await rm(dir, { recursive: true, force: true })
  })

  /** `guestbackup [-v] backup … --qmp` of VM 500 as a child process, slowed to `rate`. */
  const spawnBackup = (rate: string, verbose = false): ChildProcessByStdio<null, null, Readable> =>
    spawn(
      join(import.meta.dirname, '../../bin/guestbackup'),
      [
        ...(verbose ? ['-v'] : []),
        ...backupArgs(join(dir, 'store'), 500, join(dir, 'vm.conf')),
        ...['--qmp', vm.qmpPath, '--bwlimit', rate],
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )

  /** No block jobs, exports or gb-* nodes are left in the VM's graph. */
  const noLeftovers = async (): Promise<void> => {
    const qmp = await QmpClient.connect(vm.qmpPath)
    try {
      assert.deepEqual(await qmp.executeRaw('query-block-jobs'), [])
      assert.deepEqual(await qmp.executeRaw('query-block-exports'), [])
      const nodes = (await qmp.executeRaw('query-named-block-nodes', { flat: true })) as {
        'node-name': string
      }[]
      assert.ok(!nodes.some((n) => n['node-name'].startsWith('gb-')))
    } finally {
      await qmp.close()
    }
  }

  it('tears everything down itself on SIGTERM (exit 130)', async () => {
    const child = spawnBackup('16M', true)
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    const exited = new Promise<number | null>((r) =>
      child.once('exit', (code) => {
        r(code)
      }),
    )
    // Wait until the provider copies (QMP allows one client, so watch the log), then SIGTERM.
    const deadline = Date.now() + 20_000
    while (!/drive-scsi0: (full|incremental)/.test(stderr) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50))
    }
    await new Promise((r) => setTimeout(r, 300))
    child.kill('SIGTERM')
    const code = await exited
    assert.equal(code, 130, `stderr: ${stderr}`)
    await noLeftovers()
    assert.equal((await storage.listVolumes({ vmid: 500 })).length, 0)
  })

  it('keeps the VM running and the next incremental correct', async () => {
    // Random moments across start-up, setup, copy and commit (the copy is slowed to ~4 s).
    const delays = Array.from({ length: 4 }, () => 300 + Math.floor(Math.random() * 3500))
    let incrementals = 0
    for (const [i, ms] of delays.entries()) {
      await vm.guestIo('scsi0', `write -P ${0x40 + i} ${i * 8}M 1M`)
      const child = spawnBackup('32M')
      const exited = new Promise((r) => child.once('exit', r))
      await new Promise((r) => setTimeout(r, ms))
      // The run may have finished on its own by now; killing it then is a no-op.
      child.kill('SIGKILL')
      await exited
      const qmp = await QmpClient.connect(vm.qmpPath)
      const status = (await qmp.executeRaw('query-status')) as { status: string }
      await qmp.close()
      assert.notEqual(status.status, 'shutdown')
      // The next run repairs the graph and produces a correct backup.
      const { res, refs } = await liveBackup({
        storage,
        vmid: 500,
        qmp: vm.qmpPath,
        devices: ['drive-scsi0'],
        refDir: dir,
        tag: String(i),
        config: 'name: k\n',
      })
      const mine = (await storage.listVolumes({ vmid: 500 })).find((v) => v.volid === res.volid)
      if (mine?.parent !== undefined) incrementals++
      const target = join(dir, `restore-${i}`)
      await restoreMatches(storage, res.volid ?? '', target, refs)
      await rm(target, { recursive: true })
      await rm(refs['drive-scsi0'] ?? '', { force: true })
    }
    await noLeftovers()
    const vols = await storage.listVolumes({ vmid: 500 })
    // Each round adds our backup, plus the killed one if it finished before the kill.
    assert.ok(vols.length >= delays.length && vols.length <= 2 * delays.length)
    assert.ok(incrementals > 0, 'backups after a kill are incremental again')
    // No partial backups left in the store.
    const { readdir } = await import('node:fs/promises')
    const entries = await readdir(join(dir, 'store', '500'))
    assert.deepEqual(
      entries.filter((e) => e.startsWith('.partial')),
      [],
    )
  })
})
