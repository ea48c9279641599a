/**
 * Demo, VM part: a real QEMU (a paused VM, `-S`, no guest OS; guest writes go through HMP
 * `qemu-io` on the device's BlockBackend, exactly like guest I/O) with a 256 MiB qcow2 disk.
 * It is backed up live over QMP (full), the guest writes more (data, zeroes over data, the tail
 * of the disk), an incremental follows, QEMU shuts down, and the incremental's restore is
 * compared with the disk.
 * Usage: node --import tsx scripts/demo-vm.ts DIR STORE
 */
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createImage } from '../src/qemu/img.ts'
import { QmpClient } from '../src/qmp/index.ts'
import { startVm } from '../test/helpers/qemu-vm.ts'

const [dir, store] = process.argv.slice(2)
if (dir === undefined || store === undefined) throw new Error('usage: demo-vm.ts DIR STORE')
const gb = fileURLToPath(new URL('../bin/guestbackup', import.meta.url))
const sh = (cmd: string, args: string[], quiet = false): string => {
  if (!quiet) console.log(`$ ${[cmd === gb ? 'guestbackup' : cmd, ...args].join(' ')}`)
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  if (!quiet) process.stdout.write(r.stdout)
  if (r.status !== 0) throw new Error(`${cmd} exited ${String(r.status)}`)
  return r.stdout
}

const disk = join(dir, 'vm-disk.qcow2')
const conf = join(dir, 'vm.conf')
writeFileSync(conf, 'name: demo-vm\nmemory: 512\nscsi0: local:100/vm-100-disk-0.qcow2,size=256M\n')
await createImage(disk, { format: 'qcow2', size: 256 * 1024 * 1024 })
const vm = await startVm({ disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }], dir })
try {
  for (const w of ['write -P 0xab 0 1M', 'write -P 0x5a 64M 4M', 'write -P 0x17 100M 512k']) {
    await vm.guestWrite('scsi0', w)
    console.log(`  guest: ${w}`)
  }
  sh(gb, ['backup', '--store', store, '--vmid', '100', '--config', conf, '--qmp', vm.qmpPath])
  for (const w of ['write -P 0xcd 0 64k', 'write -z 64M 1M', 'write -P 0xc3 255M 1M']) {
    await vm.guestWrite('scsi0', w)
    console.log(`  guest: ${w}`)
  }
  sh(gb, ['backup', '--store', store, '--vmid', '100', '--config', conf, '--qmp', vm.qmpPath])
  const qmp = await QmpClient.connect(vm.qmpPath)
  await qmp.executeRaw('quit').catch(() => undefined)
  await qmp.close()
} finally {
  await vm.stop()
}
const rows = JSON.parse(sh(gb, ['list', '--store', store, '--vmid', '100', '--json'], true)) as {
  volid: string
  parent: string | null
}[]
const latest = rows[0]
if (latest?.parent == null) throw new Error('the second backup should be incremental')
console.log(`incremental ${latest.volid} builds on ${latest.parent}`)
sh(gb, ['restore', '--store', store, latest.volid, '--target', join(dir, 'restore-vm')])
sh('qemu-img', [
  'compare',
  '-f',
  'qcow2',
  '-F',
  'raw',
  disk,
  join(dir, 'restore-vm', 'drive-scsi0.raw'),
])
