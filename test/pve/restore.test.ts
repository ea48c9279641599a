import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { run } from '../../src/io/spawn.ts'
import { encodeRequest, PROTOCOL } from '../../src/pve/protocol.ts'
import { compareImages, createImage } from '../../src/qemu/img.ts'
import { BIN, backupArgs, runCliInProcessOk } from '../helpers/cli.ts'
import { pveOk } from '../helpers/pve.ts'

const MiB = 1024 * 1024

const fuseMounts = async (path: string): Promise<number> =>
  (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(path))
    .length
/** Holders of this test (argv has `pve-hold`, environment names this test's run dir). */
const holders = async (): Promise<number> => {
  const mine = `GUESTBACKUP_RUN_DIR=${process.env['GUESTBACKUP_RUN_DIR'] ?? ''}`
  let n = 0
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (!argv.split('\0').includes('pve-hold')) continue
    const env = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '')
    if (env.split('\0').includes(mine)) n++
  }
  return n
}

// qemu-server's restore (pve-backup-provider-api.md §5.6): restore_vm_volume_init returns a
// regular file that qemu-img reads *after* the call returned; a holder process keeps it.
describe('pve-call: restores through a holder that outlives the call', () => {
  let dir: string
  let store: string
  let disk: string
  let volname: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-pve-restore-'))
    // The holders' pid files go to a private run directory.
    process.env['GUESTBACKUP_RUN_DIR'] = join(dir, 'run')
    store = join(dir, 'store')
    disk = join(dir, 'disk.qcow2')
    await createImage(disk, { format: 'qcow2', size: 16 * MiB })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x3c 1M 2M', disk])
    await writeFile(join(dir, 'guest.conf'), 'name: r\n')
    await runCliInProcessOk(['init', store, '--id', 'gb'])
    const r = await runCliInProcessOk(
      backupArgs(store, 100, join(dir, 'guest.conf'), '--disk', `scsi0=${disk}`, '--json'),
    )
    volname = (JSON.parse(r.stdout) as { volid: string }).volid.slice('gb:'.length)
  })
  after(async () => {
    delete process.env['GUESTBACKUP_RUN_DIR']
    await rm(dir, { recursive: true, force: true })
  })

  it('serves the disk as a regular file until restore_vm_volume_cleanup', async () => {
    const sizes = await pveOk(store, 'restore_vm_init', [volname])
    assert.deepEqual(sizes.result, { 'drive-scsi0': { size: 16 * MiB } })
    const init = await pveOk(store, 'restore_vm_volume_init', [volname, 'drive-scsi0', {}])
    const path = (init.result as { 'qemu-img-path': string })['qemu-img-path']
    // The call's process is gone; the file is still there, a regular file of the disk's size.
    const st = await stat(path)
    assert.ok(st.isFile(), path)
    assert.equal(st.size, 16 * MiB)
    const out = join(dir, 'out.raw')
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', path, out])
    assert.equal(await compareImages(out, 'raw', disk, 'qcow2'), true)
    await pveOk(store, 'restore_vm_volume_cleanup', [volname, 'drive-scsi0', {}])
    await pveOk(store, 'restore_vm_cleanup', [volname])
    assert.equal(await fuseMounts(path), 0)
    await assert.rejects(stat(path), { code: 'ENOENT' })
  })

  it('ends the hold when the process that asked for it is gone', async () => {
    // pve-call's parent stands for the Proxmox process: a shell that exits after the call.
    const line = encodeRequest({
      protocol: PROTOCOL,
      method: 'restore_vm_volume_init',
      storeid: 'gb',
      scfg: { type: 'guestbackup', path: store },
      args: [volname, 'drive-scsi0', {}],
      session: null,
    })
    const sh = spawn('sh', ['-c', '"$0" pve-call; true', BIN], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    sh.stdin.end(line)
    let stdout = ''
    sh.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    await new Promise((resolve) => sh.once('close', resolve))
    const final = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as {
      result?: { 'qemu-img-path': string }
    }
    const path = final.result?.['qemu-img-path'] ?? ''
    assert.notEqual(path, '', stdout)
    for (let i = 0; i < 100 && (await fuseMounts(path)) > 0; i++) await sleep(100)
    assert.equal(await fuseMounts(path), 0, 'the FUSE export ended with its watcher')
    for (let i = 0; i < 100 && (await holders()) > 0; i++) await sleep(100)
    assert.equal(await holders(), 0, 'the holder is gone')
  })
})
