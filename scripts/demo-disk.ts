/**
 * Demo helper: make a 256 MiB qcow2 VM disk whose data is written by a real QEMU (a paused VM,
 * `-S`, no guest OS: guest writes go through HMP `qemu-io` on the device's BlockBackend), with
 * data at a few offsets and holes elsewhere, then shut QEMU down.
 * Usage: node --import tsx scripts/demo-disk.ts DIR
 */
import { join } from 'node:path'
import { createImage } from '../src/qemu/img.ts'
import { startVm } from '../test/helpers/qemu-vm.ts'

const dir = process.argv[2]
if (dir === undefined) throw new Error('usage: demo-disk.ts DIR')
const disk = join(dir, 'vm-disk.qcow2')
await createImage(disk, { format: 'qcow2', size: 256 * 1024 * 1024 })
const vm = await startVm({ disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }], dir })
try {
  const writes = [
    'write -P 0xab 0 1M',
    'write -P 0x5a 64M 4M',
    'write -P 0x17 100M 512k',
    'write -P 0xc3 255M 1M',
  ]
  for (const w of writes) {
    await vm.guestWrite('scsi0', w)
    console.log(`  guest: ${w}`)
  }
} finally {
  await vm.stop()
}
console.log(disk)
